/*
 * kiwi-exec: the only process that enters a running Kiwi container.
 *
 * Kiwi (Python, the host binary) never joins a container itself: it loads this
 * program into a sealed memfd and spawns it, so /proc/<pid>/exe of anything
 * that ever runs inside a container is that memfd, never a host file (the
 * runc CVE-2019-5736 class: `#!/proc/self/exe` in the container would
 * otherwise re-execute, and let a waiting process rewrite, the host binary).
 *
 *   kiwi-exec [-t] [-c FD]... [-C FD]... [-n FD]... [-k CAPS] [-s FD] [-w DIR] [-u UID -g GID [-G GIDS]] -- command [args]
 *
 *   fd 0-2  the command's stdio (pipes or a PTY slave of the container's devpts)
 *   fd 3    error pipe, close-on-exec: one line of text on failure, EOF on exec
 *   fd 4    seccomp program (packed struct sock_filter), read to EOF
 *   -c FD   a cgroup join file of the container (v1 tasks, v2 cgroup.procs), open for
 *           writing, one per hierarchy
 *   -C FD   cgroup.procs the command alone joins (after the fork): in a delegated
 *           cgroup the container's own tree, while we stay in Kiwi's leaf (-c)
 *   -n FD   namespace to join, in order (user first, mnt last)
 *   -k CAPS capabilities to keep, hexadecimal mask
 *   -s FD   a socket to the container's sysinfo handler (kiwi-lxfs): the filter is
 *           installed with a listener (its user-notify rule for sysinfo then has an
 *           answer), which is sent over FD before the command runs
 *   -t      fd 0 is a PTY slave: make it the controlling terminal
 *   -w DIR  working directory inside the container
 *   -u UID  run as this user id (after the capabilities are dropped: the
 *   -g GID  kernel clears them all on the switch away from uid 0)
 *   -G GIDS supplementary groups, comma-separated ids (default: none)
 *
 * The environment given to kiwi-exec is the command's (PATH is searched inside
 * the container). The parent stays outside the container's PID namespace,
 * holds no fds and exits with the command's status (128+n when killed by
 * signal n), forwarding SIGTERM, SIGHUP, SIGINT and SIGQUIT to the command's
 * process group. The command's
 * status is 127 when it is not found and 126 when it cannot be executed.
 * Built static (gcc -Os -static -s); no heap use of its own.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>
#include <grp.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>

#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef SYS_openat2
#define SYS_openat2 437
#endif

#define ERROR_FD 3
#define SECCOMP_FD 4
#define NOTIFY_FD 4      /* the -s socket in the command's process (SECCOMP_FD is closed by then) */
#define MAX_FDS 32
#define MAX_FILTER 4096  /* BPF_MAXINSNS */
#define MAX_GROUPS 64    /* execopts.MAX_GROUPS */
#define PTS_MAJOR 136    /* devpts terminals */

static struct sock_filter filter[MAX_FILTER];
static unsigned short filter_len;

struct options {
    int cgroups[MAX_FDS], ncgroups;
    int command_cgroups[MAX_FDS], ncommand_cgroups;
    int namespaces[MAX_FDS], nnamespaces;
    uint64_t keep_caps;
    int tty;
    int notify;
    const char *workdir;
    int set_user;
    uid_t uid;
    gid_t gid;
    gid_t groups[MAX_GROUPS];
    int ngroups;
    char **argv;
};

/* One line on the error pipe, then exit: Python turns it into a KiwiError. */
static void fail(int status, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    int len;
    ssize_t ignored;

    va_start(ap, fmt);
    len = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (len < 0)
        len = 0;
    if (len > (int)sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    ignored = write(ERROR_FD, line, len);
    (void)ignored;
    _exit(status);
}

static void close_from(unsigned int first)
{
    long max_fd;

    if (syscall(SYS_close_range, first, ~0U, 0U) == 0)
        return;
    max_fd = sysconf(_SC_OPEN_MAX);  /* kernel < 5.9 */
    for (long fd = first; fd < max_fd; fd++)
        close((int)fd);
}

static int parse_fd(const char *text)
{
    char *end;
    long fd = strtol(text, &end, 10);

    if (*text == '\0' || *end != '\0' || fd <= SECCOMP_FD || fd > 1024)
        fail(1, "kiwi-exec: bad descriptor %s", text);
    return (int)fd;
}

static void add_fd(int *list, int *count, const char *text)
{
    if (*count >= MAX_FDS)
        fail(1, "kiwi-exec: too many descriptors");
    list[(*count)++] = parse_fd(text);
}

/* A uid or gid: decimal, below (id_t)-1 (which means "unchanged"). */
static unsigned int parse_id(const char *text)
{
    char *end;
    unsigned long long id;

    errno = 0;
    id = strtoull(text, &end, 10);
    if (*text < '0' || *text > '9' || *end != '\0' || errno || id >= 0xffffffffULL)
        fail(1, "kiwi-exec: bad user or group id %s", text);
    return (unsigned int)id;
}

static void parse_groups(char *text, struct options *o)
{
    for (char *id = strtok(text, ","); id; id = strtok(NULL, ",")) {
        if (o->ngroups >= MAX_GROUPS)
            fail(1, "kiwi-exec: more than %d groups", MAX_GROUPS);
        o->groups[o->ngroups++] = parse_id(id);
    }
}

static void parse_options(int argc, char **argv, struct options *o)
{
    int opt, have_uid = 0, have_gid = 0;

    memset(o, 0, sizeof *o);
    o->workdir = "/";
    o->notify = -1;
    while ((opt = getopt(argc, argv, "+tc:C:n:k:s:w:u:g:G:")) != -1) {
        switch (opt) {
        case 't': o->tty = 1; break;
        case 'c': add_fd(o->cgroups, &o->ncgroups, optarg); break;
        case 'C': add_fd(o->command_cgroups, &o->ncommand_cgroups, optarg); break;
        case 'n': add_fd(o->namespaces, &o->nnamespaces, optarg); break;
        case 'k': o->keep_caps = strtoull(optarg, NULL, 16); break;
        case 's': o->notify = parse_fd(optarg); break;
        case 'w': o->workdir = optarg; break;
        case 'u': o->uid = parse_id(optarg); have_uid = 1; break;
        case 'g': o->gid = parse_id(optarg); have_gid = 1; break;
        case 'G': parse_groups(optarg, o); break;
        default: fail(1, "kiwi-exec: usage: kiwi-exec [-t] [-c FD] [-C FD] [-n FD] [-k CAPS] [-s FD] [-w DIR] -- command");
        }
    }
    if (have_uid != have_gid || (o->ngroups && !have_uid))
        fail(1, "kiwi-exec: -u, -g and -G go together");
    o->set_user = have_uid;
    if (optind >= argc)
        fail(1, "kiwi-exec: no command given");
    o->argv = argv + optind;
}

/* Read the whole program now, while we still can block on a host pipe. */
static void read_filter(void)
{
    char *buffer = (char *)filter;
    size_t have = 0;

    for (;;) {
        ssize_t got = read(SECCOMP_FD, buffer + have, sizeof filter - have);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            fail(1, "kiwi-exec: reading the seccomp program: %s", strerror(errno));
        if (got == 0)
            break;
        have += (size_t)got;
        if (have == sizeof filter)
            fail(1, "kiwi-exec: seccomp program too long");
    }
    if (have == 0 || have % sizeof filter[0])
        fail(1, "kiwi-exec: bad seccomp program (%zu bytes)", have);
    filter_len = (unsigned short)(have / sizeof filter[0]);
    close(SECCOMP_FD);
}

/* Writing 0 moves the writer: we join before forking, so the command and
 * everything it starts are counted (and limited) by the container's cgroup.
 * To a v1 tasks file it moves this thread alone: we have no other. */
static void join_cgroups(const int *fds, int count)
{
    for (int i = 0; i < count; i++) {
        if (write(fds[i], "0", 1) != 1)
            fail(1, "cannot join the container's cgroup: %s", strerror(errno));
        close(fds[i]);
    }
}

/* In the order given: a user namespace first (it grants the rights for the
 * others), the mount namespace last (its root becomes ours). */
static void join_namespaces(const struct options *o)
{
    for (int i = 0; i < o->nnamespaces; i++) {
        if (setns(o->namespaces[i], 0) != 0)
            fail(1, "cannot join the container's namespaces: %s", strerror(errno));
        close(o->namespaces[i]);
    }
}

/* The working directory as the container resolves it: beneath its root and never
 * through a magic link. We still hold host root's capabilities here (all of them for a
 * --privileged container), and with them chdir() followed /proc/<pid>/cwd and /root of
 * kiwi-sysinfo, which is in the container's PID namespace but chrooted in a host folder:
 * the command then started in a host folder, and `..` led to the host's / (the leaked
 * cwd of CVE-2024-21626). An image's WorkingDir, or a symlink root inside put where
 * `attach -w` goes, can name that path; no working directory is ever a magic link. */
static void enter_workdir(const char *path)
{
    struct open_how how;
    int root, dir;

    memset(&how, 0, sizeof how);
    how.flags = O_PATH | O_DIRECTORY | O_CLOEXEC;
    how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
    root = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);  /* the container's, after setns */
    if (root < 0)
        fail(1, "cannot open the container's root: %s", strerror(errno));
    dir = (int)syscall(SYS_openat2, root, path, &how, sizeof how);
    if (dir < 0 && errno == ELOOP)
        fail(1, "cannot enter %s in the container: a symlink loop, or a link through /proc to a process's files", path);
    if (dir < 0 || fchdir(dir) != 0)
        fail(1, "cannot enter %s in the container: %s", path, strerror(errno));
    close(dir);
    close(root);
}

/* In a user namespace our host uid 0 has no id: become the namespace's root
 * (the container's uid 0). Outside one this only drops our supplementary groups. */
static void become_root(void)
{
    if (setgroups(0, NULL) != 0 || setresgid(0, 0, 0) != 0 || setresuid(0, 0, 0) != 0)
        fail(1, "cannot become root in the container: %s", strerror(errno));
}

static void reset_signals(void)
{
    sigset_t none;

    for (int sig = 1; sig < NSIG; sig++)
        signal(sig, SIG_DFL);  /* fails harmlessly for SIGKILL, SIGSTOP, RT signals glibc owns */
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

/* The listener to the handler, over the socket on NOTIFY_FD. If that fails (the handler
 * went away meanwhile), the command's sysinfo calls fail with ENOSYS. */
static void send_listener(int listener)
{
    char byte = 'L';
    union { struct cmsghdr header; char space[CMSG_SPACE(sizeof(int))]; } control;
    struct iovec iov = { &byte, 1 };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &control, .msg_controllen = sizeof control };
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);

    memset(&control, 0, sizeof control);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &listener, sizeof listener);
    while (sendmsg(NOTIFY_FD, &msg, MSG_NOSIGNAL) < 0 && errno == EINTR)
        ;
    close(listener);
    close(NOTIFY_FD);
}

static void install_seccomp(int notify)
{
    struct sock_fprog prog = { filter_len, filter };
    long flags = notify ? SECCOMP_FILTER_FLAG_NEW_LISTENER : 0;
    long listener;

    /* Still holding CAP_SYS_ADMIN, so no_new_privs is not needed and setuid
     * programs in the container keep working. */
    listener = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
    if (listener < 0)
        fail(1, "cannot install the seccomp filter: %s", strerror(errno));
    if (notify)
        send_listener((int)listener);
}

/* Bounding set first (needs CAP_SETPCAP), ambient cleared, then capset with an
 * empty inheritable set, as security.drop_capabilities does and explains. */
static void drop_capabilities(uint64_t keep)
{
    struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2];

    memset(data, 0, sizeof data);
    if (syscall(SYS_capget, &header, data) != 0)
        fail(1, "capget: %s", strerror(errno));
    keep &= data[0].permitted | ((uint64_t)data[1].permitted << 32);
    for (int cap = 0; cap < 64; cap++)
        if (!(keep & (1ULL << cap)) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL)
            fail(1, "cannot drop capability %d: %s", cap, strerror(errno));
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
        fail(1, "cannot clear the ambient capabilities: %s", strerror(errno));
    data[0].effective = data[0].permitted = (uint32_t)keep;
    data[1].effective = data[1].permitted = (uint32_t)(keep >> 32);
    data[0].inheritable = data[1].inheritable = 0;
    if (syscall(SYS_capset, &header, data) != 0)
        fail(1, "capset: %s", strerror(errno));
}

/* Groups first, uid last: each step needs CAP_SETGID/CAP_SETUID, which the
 * switch away from uid 0 then clears with every other capability. */
static void switch_user(const struct options *o)
{
    if (setgroups((size_t)o->ngroups, o->groups) != 0)
        fail(1, "cannot set the groups in the container: %s", strerror(errno));
    if (setresgid(o->gid, o->gid, o->gid) != 0)
        fail(1, "cannot switch to group %u in the container: %s", (unsigned)o->gid, strerror(errno));
    if (setresuid(o->uid, o->uid, o->uid) != 0)
        fail(1, "cannot switch to user %u in the container: %s", (unsigned)o->uid, strerror(errno));
}

/* The pipes and the PTY slave Kiwi made for the command belong to the container's
 * root; a command run as another user gets them, as runc does, so that it can
 * reopen /dev/stdout. Anything else (a device, a pipe that is not the container
 * root's) keeps its owner. The uid only: a terminal keeps its tty group. */
static void give_stdio_to_user(const struct options *o)
{
    for (int fd = 0; fd <= 2; fd++) {
        struct stat st;

        if (fstat(fd, &st) != 0 || st.st_uid != 0)
            continue;
        if (!S_ISFIFO(st.st_mode) && !(S_ISCHR(st.st_mode) && major(st.st_rdev) == PTS_MAJOR))
            continue;
        if (fchown(fd, o->uid, (gid_t)-1) != 0)
            fail(1, "cannot give the command's stdio to user %u: %s", (unsigned)o->uid, strerror(errno));
    }
}

/* The command's process: inside the PID namespace, never in a host session. */
static void run_command(const struct options *o)
{
    /* Always a session of its own: /dev/tty must never reach the caller's
     * terminal, and a terminal's job control belongs to the container. */
    if (setsid() < 0)
        fail(1, "setsid: %s", strerror(errno));
    if (o->tty && ioctl(0, TIOCSCTTY, 0) != 0)
        fail(1, "cannot take the terminal: %s", strerror(errno));
    reset_signals();
    /* The files were opened by host root in the host's cgroup namespace: the move is
     * checked against those (open-time) credentials, not the container's. */
    join_cgroups(o->command_cgroups, o->ncommand_cgroups);
    if (o->notify >= 0 && dup2(o->notify, NOTIFY_FD) != NOTIFY_FD)
        fail(1, "kiwi-exec: dup2: %s", strerror(errno));
    close_from(o->notify >= 0 ? NOTIFY_FD + 1 : ERROR_FD + 1);
    if (o->set_user)
        give_stdio_to_user(o);
    install_seccomp(o->notify >= 0);
    drop_capabilities(o->keep_caps);
    if (o->set_user)
        switch_user(o);
    execvp(o->argv[0], o->argv);  /* PATH from our environment: the container's */
    if (errno == ENOENT)
        fail(127, "%s: command not found in the container", o->argv[0]);
    if (errno == EACCES || errno == ENOEXEC || errno == EISDIR || errno == EPERM)
        fail(126, "%s: permission denied in the container", o->argv[0]);
    fail(126, "%s: cannot execute in the container: %s", o->argv[0], strerror(errno));
}

static int status_of(int wstatus)
{
    if (WIFSIGNALED(wstatus))
        return 128 + WTERMSIG(wstatus);
    return WEXITSTATUS(wstatus);
}

/* The parent: outside the PID namespace, holding nothing; relays signals and
 * the exit status. Signals are taken synchronously: no handlers, no races. */
static int wait_command(pid_t child, const sigset_t *relayed)
{
    for (;;) {
        int wstatus;
        int sig = sigwaitinfo(relayed, NULL);

        if (sig == SIGCHLD) {
            pid_t done = waitpid(child, &wstatus, WNOHANG);
            if (done == child)
                return status_of(wstatus);
            if (done < 0 && errno != EINTR)
                return 255;
        } else if (sig > 0 && kill(-child, sig) != 0) {
            /* To its process group, as a terminal's Ctrl-C would: a shell's
             * foreground command too. Alone when it left that group. */
            kill(child, sig);
        }
    }
}

int main(int argc, char **argv)
{
    struct options o;
    sigset_t relayed;
    pid_t child;

    /* Before anything else: nothing in the container may ptrace us or open
     * /proc/<pid>/exe (the memfd) or our fds once we have joined it. */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    prctl(PR_SET_NAME, "kiwi-exec", 0, 0, 0);
    if (fcntl(ERROR_FD, F_SETFD, FD_CLOEXEC) != 0) {
        /* Not started by Kiwi: e.g. run again through `#!/proc/self/exe`. */
        static const char msg[] = "kiwi-exec: only kiwi starts this helper\n";
        ssize_t ignored = write(2, msg, sizeof msg - 1);
        (void)ignored;
        return 1;
    }
    parse_options(argc, argv, &o);
    read_filter();
    join_cgroups(o.cgroups, o.ncgroups);
    join_namespaces(&o);
    become_root();
    enter_workdir(o.workdir);

    /* Blocked before fork so none is lost; the child unblocks them. */
    sigemptyset(&relayed);
    sigaddset(&relayed, SIGCHLD);
    sigaddset(&relayed, SIGTERM);
    sigaddset(&relayed, SIGHUP);
    sigaddset(&relayed, SIGINT);
    sigaddset(&relayed, SIGQUIT);
    sigprocmask(SIG_BLOCK, &relayed, NULL);

    /* setns(CLONE_NEWPID) only applies to children. */
    child = fork();
    if (child < 0)
        fail(1, "fork: %s", strerror(errno));
    if (child == 0)
        run_command(&o);
    close_from(0);  /* the command's stdio (a PTY's hangup), the error pipe */
    /* Ctrl-Z on the caller's terminal must not stop the relay of the status. */
    signal(SIGTSTP, SIG_IGN);
    signal(SIGTTIN, SIG_IGN);
    signal(SIGTTOU, SIG_IGN);
    return wait_command(child, &relayed);
}
