/*
 * The TIOCSTI attacker, run inside a container by test_tty_inject.py.
 *
 *   inject TEXT
 *
 * Pushes TEXT into the input queue of whatever terminal fds 0, 1, 2 and
 * /dev/tty lead to, as if typed there: on the admin's terminal the admin's
 * shell would run it once kiwi has ended. Prints one line per target.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

static void inject(int fd, const char *name, const char *text)
{
    for (const char *c = text; *c; c++) {
        if (ioctl(fd, TIOCSTI, c) != 0) {
            printf("%s: %s\n", name, strerror(errno));
            return;
        }
    }
    printf("%s: injected\n", name);
}

int main(int argc, char **argv)
{
    char text[512];
    int tty;

    if (argc != 2)
        return 2;
    snprintf(text, sizeof text, "%s\n", argv[1]);
    inject(0, "fd 0", text);
    inject(1, "fd 1", text);
    inject(2, "fd 2", text);
    tty = open("/dev/tty", O_RDWR | O_CLOEXEC);
    if (tty < 0)
        printf("/dev/tty: %s\n", strerror(errno));
    else
        inject(tty, "/dev/tty", text);
    fflush(stdout);
    return 0;
}
