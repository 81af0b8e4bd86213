/* kiwi-lxfs: a container's limits shown in its /proc and /sys (what lxcfs does for Incus).
 *
 * A tiny read-only FUSE server speaking the kernel protocol on /dev/fuse directly
 * (no libfuse). Kiwi starts it on the host side, from a sealed memfd, with the
 * connection the container's PID 1 mounted in the container's own mount namespace
 * (kiwi/lxfs.py binds its files over /proc/meminfo, /proc/cpuinfo, /proc/stat,
 * /proc/uptime, /proc/loadavg, /proc/swaps and /sys/devices/system/cpu/online). It is
 * never in the container's namespaces, only in its cgroup (accounted there, killed
 * with it), and it ends when the container's mount namespace goes (the kernel aborts
 * the connection). A second process, kiwi-sysinfo, answers the container's sysinfo(2)
 * calls (handle_sysinfo, start_handler).
 *
 *   kiwi-lxfs -v 1|2 -m MEMDIR -s CPUSETDIR -q CPUDIR -a CPUACCTDIR -p COUNT -u UID
 *             -r EMPTYDIR -j user|pid
 *   fd 3: a socket on which the container's PID 1 sends the /dev/fuse connection and the
 *   container's PID namespace (receive_connection: kiwi starts the server while the
 *   container's namespaces are still being made, so the mount never waits for it);
 *   fd 4: the listening socket kiwi-exec sends seccomp listeners to; fd 5: a placeholder
 *   (/dev/null) that becomes the PID namespace; fd 6: the container's user namespace
 *   (-j user); fds 7 to 7+COUNT-1: the cgroup's join files (v1 tasks, v2 cgroup.procs;
 *   enter.open_join_file)
 *
 * Every file is opened once at start (before dropping to nobody) and re-read
 * with pread at offset 0, which makes the kernel render it again. Each request
 * is bounds-checked: a container process can send anything through the mount.
 * UID: the ids it then runs as (no host account's: the container's own nobody).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/fuse.h>
#include <linux/mount.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/sysinfo.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <linux/capability.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* glibc < 2.34 (the release builds' bullseye) names no SYS_close_range; the
 * number is the same on every architecture. */
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef NS_GET_NSTYPE /* linux/nsfs.h (4.11) */
#define NS_GET_NSTYPE _IO(0xb7, 0x3)
#endif
#ifndef SYS_fsopen /* likewise (5.2) */
#define SYS_fsopen 430
#define SYS_fsconfig 431
#define SYS_fsmount 432
#endif

#define FUSE_FD 3
#define FIRST_PROCS_FD 7 /* after NOTIFY_FD, PIDNS_FD and USERNS_FD */
#define REQUEST_MAX (64 * 1024 + 4096) /* > max_write + headers, >= FUSE_MIN_READ_BUFFER */
#define READ_MAX (64 * 1024)          /* the most one READ reply carries */
#define RENDER_MAX (4 * 1024 * 1024)  /* a rendered file (cpuinfo of a huge host) */
#define SOURCE_MAX (4 * 1024 * 1024)  /* a host file read whole */
#define NOBODY 65534 /* the default -u */
/* The sysinfo handler's id: the top of the container's id block (the host's 65535 when
 * privileged), not nobody. The handler lives in the container's PID namespace, so a
 * process inside with its uid could SIGSTOP it and hang every sysinfo call in the
 * container, root's too: nobody is what daemons and `attach -u nobody` run as. */
#define HANDLER_ID 65535
#define CPU_MAX 4096

enum {
    INO_ROOT = FUSE_ROOT_ID, INO_MEMINFO, INO_CPUINFO, INO_STAT, INO_UPTIME, INO_ONLINE, INO_LOADAVG,
    INO_SWAPS, INO_END
};

static const char *const names[INO_END] = {
    [INO_MEMINFO] = "meminfo", [INO_CPUINFO] = "cpuinfo", [INO_STAT] = "stat",
    [INO_UPTIME] = "uptime",   [INO_ONLINE] = "online",   [INO_LOADAVG] = "loadavg",
    [INO_SWAPS] = "swaps",
};

/* ------------------------------------------------------------------ sources */

enum {
    SRC_MEMINFO, SRC_CPUINFO, SRC_STAT, SRC_ONLINE, SRC_SWAPS, SRC_TASKS,
    SRC_MEM_LIMIT, SRC_MEM_USAGE, SRC_MEM_STAT, SRC_SWAP_LIMIT, SRC_SWAP_USAGE,
    SRC_CPUSET, SRC_CPU_QUOTA, SRC_CPU_PERIOD, SRC_CPU_USAGE, SRC_END
};
static int src[SRC_END];
static int cgroup_v2;

struct buf { char *data; size_t len, cap; };

static int buf_reserve(struct buf *b, size_t more)
{
    if (more > RENDER_MAX || b->len + more > RENDER_MAX)
        return -1;
    if (b->len + more + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *data = realloc(b->data, cap);
    if (!data)
        return -1;
    b->data = data;
    b->cap = cap;
    return 0;
}

static void buf_add(struct buf *b, const char *s, size_t n)
{
    if (buf_reserve(b, n) < 0)
        return; /* too big: the file is cut short, never overrun */
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = 0;
}

static void buf_printf(struct buf *b, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n > 0)
        buf_add(b, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

/* The whole file behind fd, read again from offset 0 (0-terminated; empty on error). */
static void load(int fd, struct buf *b)
{
    b->len = 0;
    if (buf_reserve(b, 4096) < 0)
        return;
    b->data[0] = 0;
    if (fd < 0)
        return;
    for (;;) {
        if (b->cap - b->len - 1 < 1024 && buf_reserve(b, b->cap) < 0)
            break;
        size_t room = b->cap - b->len - 1;
        if (b->len + room > SOURCE_MAX)
            room = SOURCE_MAX - b->len;
        if (!room)
            break;
        ssize_t n = pread(fd, b->data + b->len, room, (off_t)b->len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        b->len += (size_t)n;
    }
    b->data[b->len] = 0;
}

/* A number file ("max" or -1-ish huge values mean no limit): UINT64_MAX. */
static uint64_t read_number(int fd)
{
    static struct buf b;
    load(fd, &b);
    if (!b.len || !strncmp(b.data, "max", 3))
        return UINT64_MAX;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(b.data, &end, 10);
    if (errno || end == b.data || b.data[0] == '-')
        return UINT64_MAX;
    return v;
}

/* The number after "key<sep>" at the start of a line; 0 when absent. */
static uint64_t field(const char *text, const char *key, char sep)
{
    size_t klen = strlen(key);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (!strncmp(p, key, klen) && p[klen] == sep)
            return strtoull(p + klen + 1, NULL, 10);
    }
    return 0;
}

/* "key value" in a cgroup stat file. */
static uint64_t stat_value(const char *text, const char *key) { return field(text, key, ' '); }

/* "Key:   1234 kB" in /proc/meminfo, in kB. */
static uint64_t meminfo_value(const char *text, const char *key) { return field(text, key, ':'); }

/* ------------------------------------------------------------------ CPUs */

/* The host CPUs the container sees, in order: its cpuset, cut to its quota. */
static int container_cpus(int *cpus)
{
    static struct buf b;
    load(src[SRC_CPUSET], &b);
    int n = 0;
    for (char *p = b.data; *p && *p != '\n' && n < CPU_MAX;) {
        char *end;
        long low = strtol(p, &end, 10), high = low;
        if (end == p || low < 0)
            break;
        if (*end == '-') {
            p = end + 1;
            high = strtol(p, &end, 10);
            if (end == p || high < low)
                break;
        }
        for (long c = low; c <= high && n < CPU_MAX && c < CPU_MAX; c++)
            cpus[n++] = (int)c;
        p = *end == ',' ? end + 1 : end;
    }
    uint64_t quota, period;
    if (cgroup_v2) {
        static struct buf q;
        load(src[SRC_CPU_QUOTA], &q);
        char *end;
        quota = strncmp(q.data, "max", 3) ? strtoull(q.data, &end, 10) : UINT64_MAX;
        period = strncmp(q.data, "max", 3) ? strtoull(end, NULL, 10) : 0;
    } else {
        quota = read_number(src[SRC_CPU_QUOTA]);
        period = read_number(src[SRC_CPU_PERIOD]);
    }
    if (quota != UINT64_MAX && period && period != UINT64_MAX) {
        uint64_t whole = (quota + period - 1) / period;
        if (whole < 1)
            whole = 1;
        if (whole < (uint64_t)n)
            n = (int)whole;
    }
    return n;
}

static int host_cpu_count(void)
{
    static struct buf b;
    load(src[SRC_STAT], &b);
    int n = 0;
    for (char *p = b.data; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (!strncmp(p, "cpu", 3) && p[3] >= '0' && p[3] <= '9')
            n++;
    return n;
}

/* The CPUs to show, or 0 when they are all the host's (its file is then shown as it is). */
static int limited_cpus(int *cpus)
{
    int n = container_cpus(cpus);
    return n > 0 && n < host_cpu_count() ? n : 0;
}

/* Position of host CPU `cpu` among the shown ones, or -1. */
static int shown_index(const int *cpus, int n, long cpu)
{
    for (int i = 0; i < n; i++)
        if (cpus[i] == cpu)
            return i;
    return -1;
}

/* ------------------------------------------------------------------ rendering */

static void render_passthrough(int fd, struct buf *out)
{
    load(fd, out);
}

/* memory.stat keys, v1 (hierarchical totals) and v2. */
enum { ST_CACHE, ST_SHMEM, ST_ACTIVE_ANON, ST_INACTIVE_ANON, ST_ACTIVE_FILE, ST_INACTIVE_FILE, ST_MAPPED, ST_END };
static const char *const stat_keys[2][ST_END] = {
    {"total_cache", "total_shmem", "total_active_anon", "total_inactive_anon", "total_active_file",
     "total_inactive_file", "total_mapped_file"},
    {"file", "shmem", "active_anon", "inactive_anon", "active_file", "inactive_file", "file_mapped"},
};

/* The container's memory in kB, as /proc/meminfo, /proc/swaps and sysinfo(2) show it. */
struct memory {
    uint64_t total, free, available, cache, shmem, swap_total, swap_free, m[ST_END];
};

/* Fills mem and returns 1 when the container has a memory limit below the host's
 * memory; 0 (the host's figures are shown as they are) otherwise. host: /proc/meminfo. */
static int container_memory(struct memory *mem, struct buf *host)
{
    static struct buf st;
    load(src[SRC_MEMINFO], host);
    uint64_t limit = read_number(src[SRC_MEM_LIMIT]);
    uint64_t host_total = meminfo_value(host->data, "MemTotal");
    if (limit == UINT64_MAX || limit / 1024 >= host_total)
        return 0;
    uint64_t total = limit / 1024, usage = read_number(src[SRC_MEM_USAGE]);
    usage = usage == UINT64_MAX ? 0 : usage / 1024;
    load(src[SRC_MEM_STAT], &st);
    uint64_t *m = mem->m;
    for (int i = 0; i < ST_END; i++)
        m[i] = stat_value(st.data, stat_keys[cgroup_v2][i]) / 1024;
    uint64_t cache = m[ST_CACHE], shmem = m[ST_SHMEM];
    uint64_t free = usage < total ? total - usage : 0;
    uint64_t reclaimable = cache > shmem ? cache - shmem : 0;
    uint64_t available = free + reclaimable < total ? free + reclaimable : total;

    /* Swap: v1 memsw counts memory + swap, v2 swap.max swap alone; never above the host's. */
    uint64_t host_swap = meminfo_value(host->data, "SwapTotal"), swap_total = host_swap, swap_used = 0;
    uint64_t swap_limit = read_number(src[SRC_SWAP_LIMIT]), swap_usage = read_number(src[SRC_SWAP_USAGE]);
    if (cgroup_v2) {
        if (swap_limit != UINT64_MAX && swap_limit / 1024 < host_swap)
            swap_total = swap_limit / 1024;
        swap_used = swap_usage == UINT64_MAX ? 0 : swap_usage / 1024;
    } else if (src[SRC_SWAP_LIMIT] >= 0) {
        if (swap_limit != UINT64_MAX) {
            uint64_t extra = swap_limit > limit ? (swap_limit - limit) / 1024 : 0;
            swap_total = extra < host_swap ? extra : host_swap;
        }
        if (swap_usage != UINT64_MAX)
            swap_used = swap_usage / 1024 > usage ? swap_usage / 1024 - usage : 0;
    }
    if (swap_used > swap_total)
        swap_used = swap_total;
    mem->total = total;
    mem->free = free;
    mem->available = available;
    mem->cache = reclaimable;
    mem->shmem = shmem;
    mem->swap_total = swap_total;
    mem->swap_free = swap_total - swap_used;
    return 1;
}

static void render_meminfo(struct buf *out)
{
    static struct buf host;
    struct memory mem;
    if (!container_memory(&mem, &host)) {
        render_passthrough(src[SRC_MEMINFO], out); /* no limit: the host's own figures */
        return;
    }
    const uint64_t *m = mem.m;
    static const struct { const char *key; int slot; } shown[] = {
        {"MemTotal", 0}, {"MemFree", 1}, {"MemAvailable", 2}, {"Buffers", 3}, {"Cached", 4},
        {"SwapCached", 3}, {"Active", 5}, {"Inactive", 6}, {"Active(anon)", 7},
        {"Inactive(anon)", 8}, {"Active(file)", 9}, {"Inactive(file)", 10}, {"Shmem", 11},
        {"Mapped", 12}, {"SwapTotal", 13}, {"SwapFree", 14}, {"SReclaimable", 3},
    };
    uint64_t value[] = {
        mem.total, mem.free, mem.available, 0, mem.cache, m[ST_ACTIVE_ANON] + m[ST_ACTIVE_FILE],
        m[ST_INACTIVE_ANON] + m[ST_INACTIVE_FILE], m[ST_ACTIVE_ANON], m[ST_INACTIVE_ANON],
        m[ST_ACTIVE_FILE], m[ST_INACTIVE_FILE], mem.shmem, m[ST_MAPPED], mem.swap_total, mem.swap_free,
    };
    out->len = 0;
    buf_add(out, "", 0);
    for (char *line = host.data; line && *line;) {
        char *next = strchr(line, '\n');
        size_t len = next ? (size_t)(next - line) + 1 : strlen(line);
        char *colon = memchr(line, ':', len);
        int replaced = 0;
        for (size_t i = 0; colon && i < sizeof shown / sizeof shown[0]; i++) {
            size_t klen = strlen(shown[i].key);
            if ((size_t)(colon - line) == klen && !strncmp(line, shown[i].key, klen)) {
                char key[32];
                snprintf(key, sizeof key, "%s:", shown[i].key);
                buf_printf(out, "%-15s %8llu kB\n", key, (unsigned long long)value[shown[i].slot]);
                replaced = 1;
                break;
            }
        }
        if (!replaced)
            buf_add(out, line, len);
        line = next ? next + 1 : NULL;
    }
}

static int shown[CPU_MAX]; /* the host CPUs shown, in order (limited_cpus) */

/* The host's file (source) into host when the container has fewer CPUs than the host,
 * their number returned; else the file as it is into out, and 0. */
static int host_file_for_cpus(int source, struct buf *host, struct buf *out)
{
    int n = limited_cpus(shown);
    load(src[source], n ? host : out);
    return n;
}

/* /proc/stat: the shown CPUs' lines renumbered from 0, the "cpu" line their sum. */
static void render_stat(struct buf *out)
{
    static struct buf host;
    int n = host_file_for_cpus(SRC_STAT, &host, out);
    if (!n)
        return;
    unsigned long long sum[10] = {0};
    struct buf lines = {0};
    buf_add(&lines, "", 0);
    struct buf rest = {0};
    buf_add(&rest, "", 0);
    for (char *line = host.data; line && *line;) {
        char *next = strchr(line, '\n');
        size_t len = next ? (size_t)(next - line) + 1 : strlen(line);
        if (!strncmp(line, "cpu", 3) && line[3] >= '0' && line[3] <= '9') {
            char *end;
            long cpu = strtol(line + 3, &end, 10);
            int index = shown_index(shown, n, cpu);
            if (index >= 0) {
                unsigned long long f[10] = {0};
                char *p = end;
                for (int i = 0; i < 10; i++) {
                    f[i] = strtoull(p, &end, 10);
                    if (end == p)
                        break;
                    p = end;
                    sum[i] += f[i];
                }
                buf_printf(&lines, "cpu%d %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu\n", index,
                           f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9]);
            }
        } else if (strncmp(line, "cpu ", 4)) {
            buf_add(&rest, line, len);
        }
        line = next ? next + 1 : NULL;
    }
    out->len = 0;
    buf_printf(out, "cpu  %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu\n", sum[0], sum[1], sum[2],
               sum[3], sum[4], sum[5], sum[6], sum[7], sum[8], sum[9]);
    buf_add(out, lines.data, lines.len);
    buf_add(out, rest.data, rest.len);
    free(lines.data);
    free(rest.data);
}

/* /proc/cpuinfo: the shown CPUs' "processor" blocks, renumbered; other blocks as they are. */
static void render_cpuinfo(struct buf *out)
{
    static struct buf host;
    int n = host_file_for_cpus(SRC_CPUINFO, &host, out);
    if (!n)
        return;
    out->len = 0;
    buf_add(out, "", 0);
    for (char *block = host.data; block && *block;) {
        char *end = strstr(block, "\n\n");
        size_t len = end ? (size_t)(end - block) + 2 : strlen(block);
        if (!strncmp(block, "processor", 9)) {
            char *colon = memchr(block, ':', len);
            char *eol = memchr(block, '\n', len);
            int index = colon && (!eol || colon < eol) ? shown_index(shown, n, strtol(colon + 1, NULL, 10)) : -1;
            if (index >= 0) {
                buf_printf(out, "processor\t: %d\n", index);
                if (eol)
                    buf_add(out, eol + 1, len - (size_t)(eol + 1 - block));
            }
        } else {
            buf_add(out, block, len);
        }
        block = end ? end + 2 : NULL;
    }
}

static struct timespec started; /* CLOCK_BOOTTIME: the container's uptime counts from here */
static time_t started_at;        /* the files' times */

/* Milliseconds of CLOCK_BOOTTIME since `since`. */
static int64_t ms_since(const struct timespec *since)
{
    struct timespec now;
    clock_gettime(CLOCK_BOOTTIME, &now);
    int64_t ms = (int64_t)(now.tv_sec - since->tv_sec) * 1000 + (now.tv_nsec - since->tv_nsec) / 1000000;
    return ms < 0 ? 0 : ms;
}

/* CPU time the container's cgroup used, in nanoseconds. */
static uint64_t cpu_used_ns(void)
{
    if (cgroup_v2) {
        static struct buf b;
        load(src[SRC_CPU_USAGE], &b);
        return stat_value(b.data, "usage_usec") * 1000;
    }
    uint64_t ns = read_number(src[SRC_CPU_USAGE]);
    return ns == UINT64_MAX ? 0 : ns;
}

static void render_uptime(struct buf *out)
{
    static int cpus[CPU_MAX];
    int64_t ms = ms_since(&started);
    int n = container_cpus(cpus);
    uint64_t used_ms = cpu_used_ns() / 1000000;
    uint64_t all_ms = (uint64_t)ms * (uint64_t)(n > 0 ? n : 1);
    uint64_t idle_ms = all_ms > used_ms ? all_ms - used_ms : 0;
    out->len = 0;
    buf_printf(out, "%llu.%02llu %llu.%02llu\n", (unsigned long long)(ms / 1000),
               (unsigned long long)(ms % 1000 / 10), (unsigned long long)(idle_ms / 1000),
               (unsigned long long)(idle_ms % 1000 / 10));
}

static void render_online(struct buf *out)
{
    static int cpus[CPU_MAX];
    int n = limited_cpus(cpus);
    if (!n)
        return render_passthrough(src[SRC_ONLINE], out);
    out->len = 0;
    if (n == 1)
        buf_printf(out, "0\n");
    else
        buf_printf(out, "0-%d\n", n - 1);
}

/* Load averages of the container, the kernel's way (fixed point, 1/5/15-minute decay
 * every 5 s) but from what the server can see without /proc: the CPU time the cgroup
 * used over each 5 s, i.e. how many CPUs it kept busy on average. Tasks waiting for a
 * CPU or for the disk (which the kernel's figure also counts) are not seen. */
#define FSHIFT 11
#define FIXED_1 (1 << FSHIFT)
#define SAMPLE_MS 5000
static const uint64_t decay[3] = {1884, 2014, 2037}; /* EXP_1, EXP_5, EXP_15 */
static uint64_t loads[3], busy;                      /* fixed point; busy: the last sample */
static struct timespec sampled;
static uint64_t sampled_ns;

static void sample_load(void)
{
    uint64_t used = cpu_used_ns();
    int64_t elapsed_ms = ms_since(&sampled);
    if (sampled.tv_sec || sampled.tv_nsec) {
        busy = elapsed_ms > 0 && used > sampled_ns ? (used - sampled_ns) * FIXED_1 / ((uint64_t)elapsed_ms * 1000000) : 0;
        for (int i = 0; i < 3; i++) {
            uint64_t load = loads[i] * decay[i] + busy * (FIXED_1 - decay[i]);
            loads[i] = (load + (busy >= loads[i] ? FIXED_1 - 1 : 0)) / FIXED_1;
        }
    }
    clock_gettime(CLOCK_BOOTTIME, &sampled);
    sampled_ns = used;
}

/* Milliseconds until the next sample is due (sampling first when it is). */
static int next_sample_ms(void)
{
    int64_t left = SAMPLE_MS - ms_since(&sampled);
    if (left <= 0 || !(sampled.tv_sec || sampled.tv_nsec)) {
        sample_load();
        left = SAMPLE_MS;
    }
    return (int)left;
}

/* Tasks (threads) in the container's cgroup, the limits server's own included: v1's
 * `tasks` or v2's `cgroup.threads` list them (tasks_listed), v2's pids.current counts them. */
static int tasks_listed;

static int task_count(void)
{
    static struct buf b;
    if (!tasks_listed) {
        uint64_t n = read_number(src[SRC_TASKS]);
        return n == UINT64_MAX || n > INT32_MAX ? 0 : (int)n;
    }
    load(src[SRC_TASKS], &b);
    int n = 0;
    for (const char *p = b.data; *p; p++)
        n += *p == '\n';
    return n;
}

static void render_loadavg(struct buf *out)
{
    int total = task_count();
    uint64_t running = (busy + FIXED_1 / 2) / FIXED_1;
    running = running < 1 ? 1 : running > (uint64_t)total ? (uint64_t)total : running; /* the reader runs */
    out->len = 0;
    for (int i = 0; i < 3; i++)
        buf_printf(out, "%llu.%02llu ", (unsigned long long)(loads[i] >> FSHIFT),
                   (unsigned long long)(((loads[i] & (FIXED_1 - 1)) * 100) >> FSHIFT));
    buf_printf(out, "%llu/%d 0\n", (unsigned long long)running, total); /* no last pid: it would be a host one */
}

/* /proc/swaps: with a memory limit, one line for the swap the container may use. */
static void render_swaps(struct buf *out)
{
    static struct buf host;
    struct memory mem;
    if (!container_memory(&mem, &host))
        return render_passthrough(src[SRC_SWAPS], out);
    out->len = 0;
    buf_printf(out, "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n");
    if (mem.swap_total)
        buf_printf(out, "none\t\t\t\t\tvirtual\t\t%llu\t\t%llu\t\t0\n", (unsigned long long)mem.swap_total,
                   (unsigned long long)(mem.swap_total - mem.swap_free));
}

/* The last rendering of each file: a read at offset 0 renders again, later
 * offsets continue the same text (one reader's chunks stay consistent). */
static struct buf rendered[INO_END];

static struct buf *render(uint64_t ino)
{
    struct buf *out = &rendered[ino];
    switch (ino) {
    case INO_MEMINFO: render_meminfo(out); break;
    case INO_CPUINFO: render_cpuinfo(out); break;
    case INO_STAT: render_stat(out); break;
    case INO_UPTIME: render_uptime(out); break;
    case INO_ONLINE: render_online(out); break;
    case INO_LOADAVG: render_loadavg(out); break;
    case INO_SWAPS: render_swaps(out); break;
    }
    return out;
}

/* ------------------------------------------------------------------ the protocol */

static void reply(uint64_t unique, int error, const void *data, size_t len)
{
    if (len > READ_MAX)
        len = READ_MAX;
    struct fuse_out_header header = {
        .len = (uint32_t)(sizeof header + (error ? 0 : len)), .error = -error, .unique = unique,
    };
    static char out[sizeof(struct fuse_out_header) + READ_MAX];
    memcpy(out, &header, sizeof header);
    if (!error && len)
        memcpy(out + sizeof header, data, len);
    /* ENOENT: the request was interrupted meanwhile; nothing to do. */
    while (write(FUSE_FD, out, header.len) < 0 && errno == EINTR)
        ;
}

/* The size the kernel is told. Reads through the page cache (sendfile, as busybox cat
 * does, even on a direct_io file) stop at it, and a short read lowers it to the real
 * length: so it must never be below what a read returns. SIZE_SLACK covers a file
 * that grows between this answer and the read. */
#define SIZE_SLACK 512

static uint64_t shown_size(uint64_t ino)
{
    return ino == INO_ROOT ? 0 : render(ino)->len + SIZE_SLACK;
}

static void fill_attr(uint64_t ino, struct fuse_attr *attr)
{
    memset(attr, 0, sizeof *attr);
    attr->ino = ino;
    attr->size = shown_size(ino);
    attr->mode = ino == INO_ROOT ? S_IFDIR | 0555 : S_IFREG | 0444;
    attr->nlink = ino == INO_ROOT ? 2 : 1;
    attr->blksize = 4096;
    attr->atime = attr->mtime = attr->ctime = (uint64_t)started_at;
}

static int valid_file(uint64_t ino) { return ino > INO_ROOT && ino < INO_END; }

static void do_init(uint64_t unique, const char *body, size_t len)
{
    if (len < 8) /* major, minor */
        return reply(unique, EPROTO, NULL, 0);
    struct fuse_init_in in;
    memset(&in, 0, sizeof in);
    memcpy(&in, body, len < sizeof in ? len : sizeof in);
    struct fuse_init_out out;
    memset(&out, 0, sizeof out);
    out.major = FUSE_KERNEL_VERSION;
    out.minor = FUSE_KERNEL_MINOR_VERSION;
    if (in.major != FUSE_KERNEL_VERSION) /* the kernel then offers its own major again */
        return reply(unique, 0, &out, 8);
    out.max_readahead = 0;
    out.max_write = 4096;
    out.max_background = 1;
    out.congestion_threshold = 1;
    out.time_gran = 1;
    reply(unique, 0, &out, sizeof out);
}

static void do_lookup(uint64_t unique, uint64_t parent, const char *body, size_t len)
{
    if (parent != INO_ROOT || !len || memchr(body, 0, len) == NULL)
        return reply(unique, ENOENT, NULL, 0);
    for (uint64_t ino = INO_ROOT + 1; ino < INO_END; ino++) {
        if (!strcmp(body, names[ino])) {
            struct fuse_entry_out out;
            memset(&out, 0, sizeof out);
            out.nodeid = ino;
            out.entry_valid = 3600;
            out.attr_valid = 3600;
            fill_attr(ino, &out.attr);
            return reply(unique, 0, &out, sizeof out);
        }
    }
    reply(unique, ENOENT, NULL, 0);
}

static void do_getattr(uint64_t unique, uint64_t ino)
{
    if (ino != INO_ROOT && !valid_file(ino))
        return reply(unique, ENOENT, NULL, 0);
    struct fuse_attr_out out;
    memset(&out, 0, sizeof out);
    out.attr_valid = 3600;
    fill_attr(ino, &out.attr);
    reply(unique, 0, &out, sizeof out);
}

/* Raise the kernel's size of an open file to its current length (a store of no data
 * at that offset); the open then drops the page cache, as no FOPEN_KEEP_CACHE is given. */
static void raise_size(uint64_t ino)
{
    struct {
        struct fuse_out_header header;
        struct fuse_notify_store_out store;
    } notify;
    memset(&notify, 0, sizeof notify);
    notify.header.len = sizeof notify;
    notify.header.error = FUSE_NOTIFY_STORE;
    notify.store.nodeid = ino;
    notify.store.offset = shown_size(ino);
    while (write(FUSE_FD, &notify, sizeof notify) < 0 && errno == EINTR)
        ;
}

static void do_open(uint64_t unique, uint64_t ino, const char *body, size_t len, int dir)
{
    if (len < sizeof(uint32_t) || (dir ? ino != INO_ROOT : !valid_file(ino)))
        return reply(unique, dir ? ENOTDIR : EISDIR, NULL, 0);
    uint32_t flags;
    memcpy(&flags, body, sizeof flags);
    if ((flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC))
        return reply(unique, EROFS, NULL, 0);
    if (!dir)
        raise_size(ino);
    struct fuse_open_out out;
    memset(&out, 0, sizeof out);
    out.fh = ino;
    out.open_flags = dir ? 0 : FOPEN_DIRECT_IO; /* size 0 on stat, whatever length on read */
    reply(unique, 0, &out, sizeof out);
}

static void do_read(uint64_t unique, uint64_t ino, const char *body, size_t len)
{
    if (len < sizeof(struct fuse_read_in) || !valid_file(ino))
        return reply(unique, EBADF, NULL, 0);
    struct fuse_read_in in;
    memcpy(&in, body, sizeof in);
    struct buf *text = in.offset == 0 || !rendered[ino].data ? render(ino) : &rendered[ino];
    size_t size = in.size < READ_MAX ? in.size : READ_MAX;
    if (in.offset >= text->len)
        return reply(unique, 0, NULL, 0);
    size_t left = text->len - (size_t)in.offset;
    reply(unique, 0, text->data + in.offset, left < size ? left : size);
}

static void do_readdir(uint64_t unique, uint64_t ino, const char *body, size_t len)
{
    if (len < sizeof(struct fuse_read_in) || ino != INO_ROOT)
        return reply(unique, ENOTDIR, NULL, 0);
    struct fuse_read_in in;
    memcpy(&in, body, sizeof in);
    static char out[4096];
    size_t used = 0, size = in.size < sizeof out ? in.size : sizeof out;
    /* Entry i is ".", "..", then the files; each dirent's off is the next entry's index. */
    for (uint64_t i = in.offset; i < 2 + (INO_END - INO_ROOT - 1); i++) {
        const char *name = i == 0 ? "." : i == 1 ? ".." : names[INO_ROOT + 1 + (i - 2)];
        size_t namelen = strlen(name), entry = FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET + namelen);
        if (used + entry > size)
            break;
        struct fuse_dirent *d = (struct fuse_dirent *)(out + used);
        memset(d, 0, entry);
        d->ino = i < 2 ? INO_ROOT : INO_ROOT + 1 + (i - 2);
        d->off = i + 1;
        d->namelen = (uint32_t)namelen;
        d->type = i < 2 ? S_IFDIR >> 12 : S_IFREG >> 12;
        memcpy(d->name, name, namelen);
        used += entry;
    }
    reply(unique, 0, out, used);
}

static void do_statfs(uint64_t unique)
{
    struct fuse_statfs_out out;
    memset(&out, 0, sizeof out);
    out.st.bsize = out.st.frsize = 4096;
    out.st.namelen = 255;
    reply(unique, 0, &out, sizeof out);
}

static void serve(void)
{
    static char request[REQUEST_MAX] __attribute__((aligned(8)));
    struct pollfd fuse = {.fd = FUSE_FD, .events = POLLIN};
    for (;;) {
        if (poll(&fuse, 1, next_sample_ms()) <= 0)
            continue; /* the load sample was due (or EINTR) */
        ssize_t n = read(FUSE_FD, request, sizeof request);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == ENOENT)
                continue;
            _exit(errno == ENODEV ? 0 : 1); /* ENODEV: unmounted, the container is gone */
        }
        struct fuse_in_header header;
        if ((size_t)n < sizeof header)
            continue;
        memcpy(&header, request, sizeof header);
        if (header.len != (size_t)n)
            continue;
        const char *body = request + sizeof header;
        size_t len = (size_t)n - sizeof header;
        switch (header.opcode) {
        case FUSE_INIT: do_init(header.unique, body, len); break;
        case FUSE_LOOKUP: do_lookup(header.unique, header.nodeid, body, len); break;
        case FUSE_GETATTR: do_getattr(header.unique, header.nodeid); break;
        case FUSE_OPEN: do_open(header.unique, header.nodeid, body, len, 0); break;
        case FUSE_OPENDIR: do_open(header.unique, header.nodeid, body, len, 1); break;
        case FUSE_READ: do_read(header.unique, header.nodeid, body, len); break;
        case FUSE_READDIR: do_readdir(header.unique, header.nodeid, body, len); break;
        case FUSE_STATFS: do_statfs(header.unique); break;
        case FUSE_RELEASE:
        case FUSE_RELEASEDIR:
        case FUSE_FLUSH: reply(header.unique, 0, NULL, 0); break;
        case FUSE_FORGET:
        case FUSE_BATCH_FORGET:
        case FUSE_INTERRUPT: break; /* no reply is expected */
        case FUSE_DESTROY: _exit(0);
        default: reply(header.unique, ENOSYS, NULL, 0);
        }
    }
}

/* ------------------------------------------------------------------ sysinfo(2) */

/* The container's processes have a seccomp filter (kiwi-exec's) that hands their sysinfo
 * calls to this process: the listener fds arrive over the socket on NOTIFY_FD, one per
 * connection (one per attach or session). The answer is written into the caller's memory
 * (its /proc/<pid>/mem in a procfs of the container's PID namespace: ptrace rights over
 * the container's processes and no one else's, see start_handler) and the call then
 * returns 0. Whatever cannot be answered so (the caller gone, a bad pointer, no access)
 * is let through to the kernel (CONTINUE): host figures, or EFAULT for a bad pointer, as
 * without Kiwi. */
#define NOTIFY_FD 4
#define PIDNS_FD 5  /* the container's PID namespace */
#define USERNS_FD 6 /* its user namespace (-j user: unprivileged) */
#define WATCHED_MAX 900 /* listeners and connections at once, below RLIMIT_NOFILE's usual 1024 */

static void container_sysinfo(struct sysinfo *info)
{
    static struct buf host;
    struct memory mem;
    sysinfo(info); /* the host's, for what the container does not limit */
    info->uptime = (long)(ms_since(&started) / 1000);
    for (int i = 0; i < 3; i++)
        info->loads[i] = (unsigned long)(loads[i] << (SI_LOAD_SHIFT - FSHIFT));
    int tasks = task_count();
    info->procs = (unsigned short)(tasks > 0xffff ? 0xffff : tasks);
    if (!container_memory(&mem, &host))
        return;
    /* kB with a mem_unit of 1024: fits an unsigned long on 32-bit machines too. */
    info->mem_unit = 1024;
    info->totalram = (unsigned long)mem.total;
    info->freeram = (unsigned long)mem.free;
    info->sharedram = (unsigned long)mem.shmem;
    info->bufferram = 0;
    info->totalswap = (unsigned long)mem.swap_total;
    info->freeswap = (unsigned long)mem.swap_free;
    info->totalhigh = info->freehigh = 0;
}

static int proc_fd = -1; /* a procfs of the container's PID namespace, mounted nowhere */

static int open_caller(pid_t pid, const char *file, int flags)
{
    char path[32];
    snprintf(path, sizeof path, "%d/%s", (int)pid, file);
    return openat(proc_fd, path, flags | O_CLOEXEC | O_NOFOLLOW);
}

/* Whether [at, at + len) lies in writable mappings of the caller (its maps, read line by
 * line): /proc/<pid>/mem writes read-only memory too, where the kernel's own sysinfo (and
 * process_vm_writev) answer EFAULT. */
static int writable(int maps, uint64_t at, uint64_t len)
{
    static char text[8192];
    uint64_t end = at + len;
    size_t have = 0;
    if (end < at)
        return 0;
    for (;;) {
        ssize_t n = read(maps, text + have, sizeof text - 1 - have);
        if (n <= 0)
            return 0; /* the end (or a gap, or a caller gone): not all of it is mapped */
        have += (size_t)n;
        text[have] = 0;
        char *line = text, *newline;
        while ((newline = memchr(line, '\n', have - (size_t)(line - text)))) {
            *newline = 0;
            unsigned long long start, stop;
            char perms[5];
            if (sscanf(line, "%llx-%llx %4s", &start, &stop, perms) == 3 && start <= at && at < stop) {
                if (perms[1] != 'w')
                    return 0;
                if (end <= stop)
                    return 1;
                at = stop; /* the rest must be in the very next mapping */
            }
            line = newline + 1;
        }
        have -= (size_t)(line - text);
        memmove(text, line, have);
        if (have == sizeof text - 1)
            return 0; /* a line longer than any maps line */
    }
}

static void answer(int listener)
{
    struct seccomp_notif req;
    struct seccomp_notif_resp resp;
    memset(&req, 0, sizeof req); /* the kernel insists */
    if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, &req) < 0)
        return; /* ENOENT: the caller was gone before we got to it */
    memset(&resp, 0, sizeof resp);
    resp.id = req.id;
    resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
    if (req.data.nr == SYS_sysinfo && req.pid > 0) {
        struct sysinfo info;
        memset(&info, 0, sizeof info);
        container_sysinfo(&info);
        /* The caller's memory is opened by pid BEFORE the check that the caller still waits
         * in its call (ID_VALID): then the files are its own, whatever happens to the pid
         * after. Writing by pid after the check (process_vm_writev) reached another
         * process: root inside stops this one (SIGSTOP lands right after the ioctl), kills
         * the caller and cycles pids until a process of its choice has the caller's. */
        int mem = open_caller(req.pid, "mem", O_RDWR), maps = open_caller(req.pid, "maps", O_RDONLY);
        uint64_t at = req.data.args[0];
        if (mem >= 0 && maps >= 0 && ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &req.id) == 0 &&
            writable(maps, at, sizeof info) && pwrite(mem, &info, sizeof info, (off_t)at) == (ssize_t)sizeof info)
            resp.flags = 0; /* answered: the call returns 0 */
        if (mem >= 0)
            close(mem);
        if (maps >= 0)
            close(maps);
    }
    ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp); /* ENOENT: the caller was killed meanwhile */
}

enum { CONNECTION, LISTENER };
/* The socket, then up to WATCHED_MAX more, and one spare: a connection's listener is
 * added before the connection goes. */
static struct pollfd watched[2 + WATCHED_MAX];
static int kind[2 + WATCHED_MAX], nwatched;

static void watch(int fd, int what)
{
    if (nwatched >= 2 + WATCHED_MAX) {
        close(fd); /* a listener closed: its processes' sysinfo fails with ENOSYS */
        return;
    }
    watched[nwatched] = (struct pollfd){.fd = fd, .events = POLLIN};
    kind[nwatched++] = what;
}

static void unwatch(int i)
{
    close(watched[i].fd);
    watched[i] = watched[--nwatched];
    kind[i] = kind[nwatched];
}

/* A listener fd sent over a connection (SCM_RIGHTS); anything else is dropped. */
static void take_listener(int connection)
{
    char byte;
    union { struct cmsghdr header; char space[CMSG_SPACE(sizeof(int))]; } control;
    struct iovec iov = {&byte, 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = &control, .msg_controllen = sizeof control};
    if (recvmsg(connection, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC) <= 0)
        return;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len == CMSG_LEN(sizeof(int))) {
        int fd;
        memcpy(&fd, CMSG_DATA(c), sizeof fd);
        watch(fd, LISTENER);
    }
}

/* Taking connections off the socket (slot 0). A failed accept4 must never make the loop
 * spin: poll keeps saying the socket is ready (a connection left in the backlog, or an
 * fd that is no listening socket at all). */
#define PAUSE_FIRST_MS 10
#define PAUSE_MAX_MS 1000
static int socket_usable = 1; /* 0: it can never bring a connection (not a listening socket) */
static int pause_ms;          /* > 0: accepting waits that long from paused_at */
static struct timespec paused_at;

/* Milliseconds until accepting resumes (0: it may now). */
static int pause_left_ms(void)
{
    if (!pause_ms)
        return 0;
    int64_t left = pause_ms - ms_since(&paused_at);
    return left > 0 ? (int)left : 0;
}

static void take_connection(void)
{
    int connection = accept4(NOTIFY_FD, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (connection >= 0) {
        pause_ms = 0;
        watch(connection, CONNECTION);
        return;
    }
    switch (errno) {
    case EINTR:
    case EAGAIN:       /* taken by no one else (only we hold the socket): a spurious wake-up */
    case ECONNABORTED: /* that connection went, the next one may be fine */
        return;
    case EBADF:
    case ENOTSOCK:
    case EINVAL: /* not listening */
    case EOPNOTSUPP:
    case EFAULT:
        /* For good: no connection, so no new listener, can ever come. The listeners
         * already here are still answered; the handler ends after the last (the loop). */
        socket_usable = 0;
        close(NOTIFY_FD);
        return;
    default:
        /* EMFILE, ENFILE, ENOBUFS, ENOMEM, anything else: the connection still waits in the
         * backlog. Try again later, waiting longer each time (up to PAUSE_MAX_MS) while the
         * listeners already here are answered all along. */
        pause_ms = pause_ms ? (pause_ms * 2 < PAUSE_MAX_MS ? pause_ms * 2 : PAUSE_MAX_MS) : PAUSE_FIRST_MS;
        clock_gettime(CLOCK_BOOTTIME, &paused_at);
    }
}

static void handle_sysinfo(void)
{
    watch(NOTIFY_FD, CONNECTION); /* slot 0: the listening socket */
    for (;;) {
        if (!socket_usable && nwatched == 1)
            _exit(0); /* nothing to answer, and nothing can come: see take_connection */
        /* Slot 0 takes part only while accepting (poll ignores a negative fd, so neither its
         * POLLIN nor an error wakes us while paused). Full: new connections wait in the
         * backlog (or kiwi finds it full: host figures). */
        int pause = pause_left_ms(), timeout = next_sample_ms();
        watched[0].fd = socket_usable && !pause && nwatched < 1 + WATCHED_MAX ? NOTIFY_FD : -1;
        if (pause && pause < timeout)
            timeout = pause;
        int ready = poll(watched, (nfds_t)nwatched, timeout);
        if (ready < 0 && errno != EINTR) {
            /* ENOMEM (or EINVAL: more fds than RLIMIT_NOFILE): never a busy loop either. */
            struct timespec wait = {0, 100 * 1000 * 1000};
            nanosleep(&wait, NULL);
        }
        if (ready <= 0)
            continue;
        if (watched[0].revents) /* POLLIN, or an error accept4 then names */
            take_connection();
        for (int i = nwatched - 1; i > 0; i--) {
            short revents = watched[i].revents;
            if (kind[i] == LISTENER && (revents & POLLIN))
                answer(watched[i].fd);
            else if (kind[i] == CONNECTION && (revents & (POLLIN | POLLHUP))) {
                take_listener(watched[i].fd);
                unwatch(i); /* one listener per connection */
            } else if (revents & (POLLHUP | POLLERR | POLLNVAL))
                unwatch(i); /* no process uses that filter any more */
        }
    }
}

/* ------------------------------------------------------------------ start */

static int open_in(const char *dir, const char *name)
{
    if (!dir)
        return -1;
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path)
        return -1;
    return open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
}

static void die(const char *what)
{
    dprintf(2, "kiwi-lxfs: %s: %s\n", what, strerror(errno));
    _exit(1);
}

/* Where each source is: a host path, or a file in one of the cgroup folders (v1, v2). */
enum { HOST, MEM, CPUSET, CPU, CPUACCT };
static const struct { int slot, dir; const char *v1, *v2; } sources[] = {
    {SRC_MEMINFO, HOST, "/proc/meminfo", "/proc/meminfo"},
    {SRC_CPUINFO, HOST, "/proc/cpuinfo", "/proc/cpuinfo"},
    {SRC_STAT, HOST, "/proc/stat", "/proc/stat"},
    {SRC_ONLINE, HOST, "/sys/devices/system/cpu/online", "/sys/devices/system/cpu/online"},
    {SRC_SWAPS, HOST, "/proc/swaps", "/proc/swaps"},
    {SRC_TASKS, MEM, "tasks", "pids.current"}, /* v2: the whole subtree (delegated sub-cgroups) */
    {SRC_MEM_LIMIT, MEM, "memory.limit_in_bytes", "memory.max"},
    {SRC_MEM_USAGE, MEM, "memory.usage_in_bytes", "memory.current"},
    {SRC_MEM_STAT, MEM, "memory.stat", "memory.stat"},
    {SRC_SWAP_LIMIT, MEM, "memory.memsw.limit_in_bytes", "memory.swap.max"},
    {SRC_SWAP_USAGE, MEM, "memory.memsw.usage_in_bytes", "memory.swap.current"},
    {SRC_CPUSET, CPUSET, "cpuset.effective_cpus", "cpuset.cpus.effective"},
    {SRC_CPU_QUOTA, CPU, "cpu.cfs_quota_us", "cpu.max"},
    {SRC_CPU_PERIOD, CPU, "cpu.cfs_period_us", NULL},
    {SRC_CPU_USAGE, CPUACCT, "cpuacct.usage", "cpu.stat"},
};

static void open_sources(const char *dirs[])
{
    for (size_t i = 0; i < sizeof sources / sizeof sources[0]; i++) {
        const char *name = cgroup_v2 ? sources[i].v2 : sources[i].v1;
        int fd = -1;
        if (name && sources[i].dir == HOST)
            fd = open(name, O_RDONLY | O_CLOEXEC);
        else if (name)
            fd = open_in(dirs[sources[i].dir], name);
        src[sources[i].slot] = fd;
    }
    if (src[SRC_CPUSET] < 0 && !cgroup_v2) /* v1 without effective_cpus */
        src[SRC_CPUSET] = open_in(dirs[CPUSET], "cpuset.cpus");
    tasks_listed = !cgroup_v2 || src[SRC_TASKS] < 0;
    if (src[SRC_TASKS] < 0 && cgroup_v2) /* no pids controller: the top cgroup's own threads */
        src[SRC_TASKS] = open_in(dirs[MEM], "cgroup.threads");
    const int required[] = {SRC_MEMINFO, SRC_CPUINFO, SRC_STAT, SRC_MEM_LIMIT, SRC_MEM_USAGE,
                            SRC_MEM_STAT, SRC_CPUSET};
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++)
        if (src[required[i]] < 0)
            die("cannot open the host's /proc or the container's cgroup files");
}

/* Join the container's cgroup (accounted and killed with it); close every other fd
 * that came along (nothing of kiwi's, e.g. a launcher's lock, outlives it here). */
static void join_cgroup(int count)
{
    for (int fd = FIRST_PROCS_FD; fd < FIRST_PROCS_FD + count; fd++) {
        if (write(fd, "0", 1) != 1)
            die("cannot join the container's cgroup");
        close(fd);
    }
    if (syscall(SYS_close_range, FIRST_PROCS_FD, ~0U, 0) < 0)
        for (int fd = FIRST_PROCS_FD; fd < 1024; fd++)
            close(fd);
}

/* Become uid (and gid) `id`, unable to fork: from here on only the files already open are
 * read. keep: the capabilities to keep (a mask; in the user namespace the process is in). */
static void confine(uid_t id, uint64_t keep)
{
    struct rlimit none = {0, 0};
    if (chroot(".") < 0) /* the empty folder kiwi gave (the cwd): no host path is in reach */
        die("cannot enter its empty root");
    for (int cap = 0; cap < 64; cap++)
        if (!(keep >> cap & 1) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL)
            die("cannot drop its capabilities");
    if (prctl(PR_SET_KEEPCAPS, keep != 0, 0, 0, 0) < 0 || setgroups(0, NULL) < 0 ||
        setresgid(id, id, id) < 0 || setresuid(id, id, id) < 0)
        die("cannot drop privileges");
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    data[0].effective = data[0].permitted = (uint32_t)keep;
    data[1].effective = data[1].permitted = (uint32_t)(keep >> 32);
    if (syscall(SYS_capset, &header, data) < 0 || prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) < 0)
        die("cannot drop its capabilities");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 || prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0 ||
        setrlimit(RLIMIT_NPROC, &none) < 0 || setrlimit(RLIMIT_CORE, &none) < 0)
        die("cannot confine itself");
}

static void close_namespaces(void)
{
    close(PIDNS_FD);
    close(USERNS_FD);
}

/* The handler's own view of the container's processes (their mem and maps files): a procfs
 * made in the container's PID namespace (its pid folders only) and mounted nowhere. */
static int container_proc(void)
{
    int fs = (int)syscall(SYS_fsopen, "proc", FSOPEN_CLOEXEC);
    if (fs < 0)
        return -1;
    int mnt = -1;
    if (syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, "subset", "pid", 0) == 0 &&
        syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) == 0)
        mnt = (int)syscall(SYS_fsmount, fs, FSMOUNT_CLOEXEC, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC);
    close(fs);
    return mnt;
}

/* Tell kiwi the handler's pid as the host sees it (getpid is the container's): the host's
 * /proc is still this mount namespace's. Kiwi records it with its start time, so `inspect`
 * can tell a handler stopped or frozen from inside from one that answers. */
static void report_handler_pid(void)
{
    char self[32];
    ssize_t n = readlink("/proc/self", self, sizeof self - 1);
    if (n > 0) {
        self[n] = '\0';
        dprintf(2, "kiwi-lxfs: sysinfo handler pid %s\n", self);
    }
}

/* The sysinfo handler (handle_sysinfo) in a process of its own, in the container's PID
 * namespace (the pids it can name are the container's; it ends with the container, its
 * init reaps it) and, unprivileged, its user namespace (CAP_SYS_PTRACE there reaches
 * the container's processes and nothing else). It runs as HANDLER_ID (the namespace's,
 * the host's for a privileged container, whose processes are the host's root), not dumpable and in
 * an empty root: nothing can ptrace it or open its fds, and it has no host path in
 * reach (its one folder is container_proc's). Root inside sees it and may kill it (its own sysinfo then stops working, see
 * docs/SECURITY.md). Returns an error (the container then gets the host's figures) or NULL. */
static const char *start_handler(const char *join, int argc, char **argv)
{
    if (!join || fcntl(NOTIFY_FD, F_GETFD) < 0 || fcntl(PIDNS_FD, F_GETFD) < 0)
        return "no socket or PID namespace given";
    if (setns(PIDNS_FD, CLONE_NEWPID) < 0)
        return "cannot join the container's PID namespace";
    pid_t first = fork(); /* the PID namespace's first process of ours */
    if (first < 0)
        return "cannot fork";
    if (first == 0) {
        /* Still host root, in the host's user namespace: mounting needs that. */
        proc_fd = container_proc();
        if (proc_fd < 0)
            _exit(2);
        /* And the container's network namespace (its PID 1's: the stage that sent us the
         * PID namespace). In the container's PID namespace, root inside and any user there
         * read /proc/<this pid>/net: in the host's network namespace that showed the
         * host's interfaces and counters (every container's veth, other data folders'
         * bridges), routes, ARP table, TCP listeners and unix sockets with their paths. */
        int net = openat(proc_fd, "1/ns/net", O_RDONLY | O_CLOEXEC);
        if (net < 0 || setns(net, CLONE_NEWNET) < 0)
            _exit(3);
        close(net);
        /* Its child, orphaned at once, becomes the container init's: reaped there. */
        if (fork() == 0) {
            if (!strcmp(join, "user") && setns(USERNS_FD, CLONE_NEWUSER) < 0)
                _exit(1);
            close(FUSE_FD);
            close_namespaces();
            report_handler_pid();
            dup2(0, 2);
            prctl(PR_SET_NAME, "kiwi-sysinfo", 0, 0, 0);
            /* Root inside sees this process: its command line, not the host's paths. */
            for (int i = 1; i < argc; i++)
                memset(argv[i], 0, strlen(argv[i]));
            /* not nobody: see HANDLER_ID; CAP_DAC_OVERRIDE opens a caller's 0600 mem file */
            confine(HANDLER_ID, 1ULL << CAP_SYS_PTRACE | 1ULL << CAP_DAC_OVERRIDE);
            handle_sysinfo();
        }
        _exit(0);
    }
    /* Reaped here: the container's end waits for every process of its PID namespace. */
    int status = 0;
    waitpid(first, &status, 0);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 3)
        return "cannot join the container's network namespace";
    return status ? "cannot mount a /proc of the container's PID namespace" : NULL;
}

/* The connection the container's PID 1 sends on fd 3 (lxfs.mount_connection): exactly
 * the FUSE device and a PID namespace, put on FUSE_FD and PIDNS_FD (the socket goes with
 * the first dup2). Whatever else arrives is refused: the server then ends, and the
 * container keeps the host's files. */
static void receive_connection(void)
{
    union {
        struct cmsghdr header;
        char space[CMSG_SPACE(3 * sizeof(int))];
    } control;
    char byte;
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space,
                         .msg_controllen = sizeof control.space};
    ssize_t n;
    while ((n = recvmsg(FUSE_FD, &msg, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR)
        ;
    int fds[3], count = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        int got = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int i = 0; i < got; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
            if (count < 3)
                fds[count++] = fd;
            else
                close(fd);
        }
    }
    struct stat device;
    /* Open for reading and writing: an O_PATH or read-only fd of the device is no connection. */
    int ok = n > 0 && !(msg.msg_flags & MSG_CTRUNC) && count == 2 && fstat(fds[0], &device) == 0 &&
             S_ISCHR(device.st_mode) && major(device.st_rdev) == 10 && minor(device.st_rdev) == 229 &&
             (fcntl(fds[0], F_GETFL) & (O_ACCMODE | O_PATH)) == O_RDWR &&
             ioctl(fds[1], NS_GET_NSTYPE) == CLONE_NEWPID;
    if (ok)
        ok = dup2(fds[0], FUSE_FD) == FUSE_FD && dup2(fds[1], PIDNS_FD) == PIDNS_FD;
    for (int i = 0; i < count; i++)
        close(fds[i]);
    if (!ok) {
        if (n == 0)
            errno = EPIPE;
        else if (n > 0)
            errno = EPROTO;
        die("no FUSE connection from the container");
    }
}

#define DIR_OPTIONS "msqa" /* -m MEM, -s CPUSET, -q CPU, -a CPUACCT folders, in enum order */

int main(int argc, char **argv)
{
    const char *dirs[CPUACCT + 1] = {NULL}, *root = NULL, *join = NULL;
    int procs = 0;
    uid_t id = NOBODY;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *option = argv[i], *value = argv[i + 1];
        if (!strcmp(option, "-v"))
            cgroup_v2 = !strcmp(value, "2");
        else if (!strcmp(option, "-p"))
            procs = atoi(value);
        else if (!strcmp(option, "-u") && atol(value) > 0)
            id = (uid_t)atol(value);
        else if (!strcmp(option, "-r"))
            root = value;
        else if (!strcmp(option, "-j"))
            join = value;
        else if (option[0] == '-' && option[1] && !option[2] && strchr(DIR_OPTIONS, option[1]))
            dirs[MEM + (strchr(DIR_OPTIONS, option[1]) - DIR_OPTIONS)] = value;
    }
    if (fcntl(FUSE_FD, F_GETFD) < 0)
        die("no socket on fd 3");
    prctl(PR_SET_NAME, "kiwi-lxfs", 0, 0, 0); /* started from a memfd: else named by its fd */
    clock_gettime(CLOCK_BOOTTIME, &started);
    started_at = time(NULL);
    signal(SIGPIPE, SIG_IGN);
    if (!root || chdir(root) < 0)
        die("cannot change to its empty root (-r)");
    join_cgroup(procs); /* first: the sources get the fds after the cgroup.procs ones */
    open_sources(dirs);
    setsid();
    receive_connection(); /* all of the above done while the container's PID 1 gets there */
    /* Kiwi waits for this process; the servers go on in children it never waits for. */
    pid_t pid = fork();
    if (pid < 0)
        die("cannot fork");
    if (pid == 0) {
        close(NOTIFY_FD);
        close_namespaces();
        dup2(0, 2); /* /dev/null: kiwi reads our stderr to its end, i.e. until the parent exits */
        confine(id, 0);
        serve();
    }
    const char *error = start_handler(join, argc, argv);
    if (error) /* not fatal: the files are served; kiwi shows this as a warning */
        dprintf(2, "kiwi-lxfs: no sysinfo handler: %s: %s\n", error, strerror(errno));
    _exit(0);
}
