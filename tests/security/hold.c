/* Host side of the pid-reuse attack on the sysinfo handler (run by the test as host root):
 * traces the handler and holds it right after a successful SECCOMP_IOCTL_NOTIF_ID_VALID,
 * which is where a SIGSTOP from root inside lands when it arrives during that ioctl; a line
 * on stdin lets it go on until its SECCOMP_IOCTL_NOTIF_SEND returns, then it is detached. */
#define _GNU_SOURCE
#include <sys/ioctl.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>

static int wait_stop(pid_t pid)
{
    int status;
    if (waitpid(pid, &status, __WALL) < 0 || !WIFSTOPPED(status)) {
        puts("gone");
        exit(1);
    }
    return status;
}

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    pid_t pid = atoi(argv[1]);
    if (ptrace(PTRACE_SEIZE, pid, 0, PTRACE_O_TRACESYSGOOD) < 0 || ptrace(PTRACE_INTERRUPT, pid, 0, 0) < 0) {
        perror("ptrace");
        return 1;
    }
    wait_stop(pid);
    puts("attached");
    fflush(stdout);
    unsigned long long nr = 0, request = 0;
    int held = 0, signal_to_pass = 0;
    for (;;) {
        if (ptrace(PTRACE_SYSCALL, pid, 0, signal_to_pass) < 0)
            return 1;
        signal_to_pass = 0;
        int status = wait_stop(pid);
        if (WSTOPSIG(status) != (SIGTRAP | 0x80)) {
            if (status >> 16 == 0) /* a signal for it, not our interrupt */
                signal_to_pass = WSTOPSIG(status);
            continue;
        }
        struct __ptrace_syscall_info info;
        if (ptrace(PTRACE_GET_SYSCALL_INFO, pid, sizeof info, &info) < 0)
            return 1;
        if (info.op == PTRACE_SYSCALL_INFO_ENTRY) {
            nr = info.entry.nr;
            request = info.entry.args[1];
        } else if (info.op == PTRACE_SYSCALL_INFO_EXIT && nr == SYS_ioctl) {
            if (!held && request == SECCOMP_IOCTL_NOTIF_ID_VALID && info.exit.rval == 0) {
                held = 1;
                puts("held");
                fflush(stdout);
                char line[64];
                if (!fgets(line, sizeof line, stdin))
                    return 1;
            } else if (held && request == SECCOMP_IOCTL_NOTIF_SEND) {
                ptrace(PTRACE_DETACH, pid, 0, 0);
                puts("answered");
                fflush(stdout);
                return 0;
            }
        }
    }
}
