/*
 * kiwi-init: PID 1 of a Kiwi container.
 *
 * - reaps every zombie that gets reparented to it;
 * - on SIGTERM / SIGINT / SIGHUP sends that signal (then SIGCONT, so stopped
 *   processes see it) to every process in the container and exits as soon as
 *   none is left;
 * - otherwise just waits: a container with no processes stays up.
 *
 * All signals stay blocked and are taken synchronously with sigtimedwait(),
 * so there are no handlers and no races between reaping and signalling.
 * Built static (gcc -Os -static -s) and executed from a sealed memfd.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <time.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#ifndef SYS_close_range
#define SYS_close_range 436
#endif

/* While shutting down, re-check this often for processes that are not our
 * children (they never send us SIGCHLD). */
#define SHUTDOWN_POLL_NS (20 * 1000 * 1000)

static void close_inherited_fds(void)
{
    long max_fd;

    if (syscall(SYS_close_range, 3U, ~0U, 0U) == 0)
        return;
    max_fd = sysconf(_SC_OPEN_MAX);  /* kernel < 5.9 */
    for (long fd = 3; fd < max_fd; fd++)
        close((int)fd);
}

static void block_all_signals(sigset_t *all)
{
    sigfillset(all);
    sigprocmask(SIG_SETMASK, all, NULL);
}

static void reap_zombies(void)
{
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
}

static bool has_children(void)
{
    siginfo_t info;

    /* WNOWAIT: only ask; a zombie found here is reaped on the next round. */
    return waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) == 0 || errno != ECHILD;
}

/* Any process left in our PID namespace, child or not (e.g. from kiwi exec)? */
static bool others_alive(void)
{
    return kill(-1, 0) == 0 || errno != ESRCH;
}

static bool is_shutdown_signal(int sig)
{
    return sig == SIGTERM || sig == SIGINT || sig == SIGHUP;
}

static void forward_to_all(int sig)
{
    kill(-1, sig);      /* every process we may signal, except ourselves */
    kill(-1, SIGCONT);  /* a stopped process only acts on it once continued */
}

static int wait_signal(const sigset_t *set, bool shutting_down)
{
    struct timespec poll = { 0, SHUTDOWN_POLL_NS };

    if (shutting_down)
        return sigtimedwait(set, NULL, &poll);
    return sigwaitinfo(set, NULL);
}

int main(void)
{
    sigset_t all;
    bool shutting_down = false;

    /* kill(-1, ...) outside a PID namespace would hit the whole host. */
    if (getpid() != 1) {
        static const char msg[] = "kiwi-init: must run as PID 1 of a PID namespace\n";
        ssize_t ignored = write(2, msg, sizeof msg - 1);
        (void)ignored;
        return 2;
    }
    block_all_signals(&all);
    close_inherited_fds();
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);  /* no ptrace / core of PID 1 */
    prctl(PR_SET_NAME, "kiwi-init", 0, 0, 0);  /* ps shows kiwi-init, not memfd:kiwi-init */
    if (chdir("/") != 0)
        return 1;

    for (;;) {
        int sig;

        reap_zombies();
        if (shutting_down && !has_children() && !others_alive())
            return 0;
        sig = wait_signal(&all, shutting_down);
        if (sig > 0 && is_shutdown_signal(sig)) {
            shutting_down = true;
            forward_to_all(sig);
        }
    }
}
