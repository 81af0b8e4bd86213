/*
 * Attack probe for tests/security/test_confinement.py, built static and run
 * inside a container. One call per run; prints "ok <result>" or "errno <n>".
 *
 *   probe io_uring_setup           io_uring_setup(1, params)
 *   probe personality VALUE        personality(VALUE), then "now <current>"
 *   probe socket FAMILY TYPE       socket(FAMILY, TYPE, 0)
 *   probe read PATH                open O_RDONLY, read up to 64 KiB: bytes read
 *   probe write PATH TEXT          open O_WRONLY, write TEXT
 *   probe open PATH                open O_RDONLY
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static int report(long result)
{
    if (result < 0)
        printf("errno %d\n", errno);
    else
        printf("ok %ld\n", result);
    return 0;
}

static long read_all(const char *path)
{
    static char buffer[65536];
    long total = 0;
    ssize_t n;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return -1;
    while ((n = read(fd, buffer, sizeof buffer)) > 0 && total < (long)sizeof buffer)
        total += n;
    if (n < 0)
        return -1;
    return total;
}

static long write_text(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);

    if (fd < 0)
        return -1;
    return write(fd, text, strlen(text));
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";

    if (!strcmp(mode, "io_uring_setup")) {
        unsigned char params[120] = {0};  /* struct io_uring_params */
        return report(syscall(425, 1, params));
    }
    if (!strcmp(mode, "personality") && argc == 3) {
        long result = syscall(SYS_personality, strtoul(argv[2], NULL, 0));
        int saved = errno;
        long now = syscall(SYS_personality, 0xffffffffUL);
        errno = saved;
        report(result);
        printf("now %#lx\n", now);
        return 0;
    }
    if (!strcmp(mode, "socket") && argc == 4)
        return report(socket(atoi(argv[2]), atoi(argv[3]), 0));
    if (!strcmp(mode, "read") && argc == 3)
        return report(read_all(argv[2]));
    if (!strcmp(mode, "write") && argc == 4)
        return report(write_text(argv[2], argv[3]));
    if (!strcmp(mode, "open") && argc == 3)
        return report(open(argv[2], O_RDONLY | O_CLOEXEC));
    fprintf(stderr, "usage: see confine_probe.c\n");
    return 2;
}
