/* The one-file kiwi: this small static program, then the PyInstaller one-folder
 * bundle compressed with zstd, an index of its files and a trailer
 * (cffi_build/pack.py writes them; the layout is described there).
 *
 * Every run finds the bundle through /proc/self/exe and execs the bundle's own
 * executable from a cache folder that holds this exact build, unpacking it there
 * once if it is missing or damaged. exec keeps the pid: the process the user
 * sees is the one doing the work, and a kill -9 leaves nothing behind but at
 * most one temporary folder that the next unpack (or `kiwi cleanup`) removes.
 *
 * Cache folder, <parent>/<hash> (the data folder follows Store.open in
 * kiwi/store.py: $KIWI_ROOT, else kiwi-data/ beside this file):
 *   root       <data folder>/.runtime, else /var/cache/kiwi, else /tmp/kiwi-0
 *   other uid  $XDG_CACHE_HOME/kiwi or ~/.cache/kiwi, else /tmp/kiwi-<uid>
 * A parent is used only when every folder from / down to it belongs to root or
 * to us and nobody else can change it (a sticky folder like /tmp aside), and the
 * parent and the cache folder are ours and private (0700). A cache folder is run
 * only when its marker is there and every file has the size, mode, owner and
 * mtime the index says; anything else is unpacked again.
 *
 * Each process of a build keeps a shared flock on its folder's marker across
 * exec (the fd is inherited): a newer build removes an older build's folder
 * only when no process of that build holds it. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <zstd.h>

#define MAGIC "KIWIPAK1"
#define TRAILER_SIZE 72   /* magic, 5 x u64 (little-endian), hash (24 bytes) */
#define HASH_LEN 16
#define INDEX_MAX (1 << 20)
#define ENTRY_HEADER 16   /* type u8, pad u8, mode u16, path length u32, size u64 */
#define MARKER ".complete"
#define BUNDLE_EXE "kiwi"
#define EXE_ENV "KIWI_EXECUTABLE"

struct entry {
    char type;            /* 'd' folder, 'f' file */
    mode_t mode;
    uint64_t size;
    const char *path;
};

struct bundle {
    int fd;
    uint64_t data_offset, data_size;
    time_t built;
    char hash[HASH_LEN + 1];
    struct entry *entries;
    size_t count;
};

static char failures[1024];   /* why each candidate folder was not used */

static void die(const char *fmt, ...)
{
    va_list ap;
    fputs("kiwi: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static void note_failure(const char *where, const char *what)
{
    size_t used = strlen(failures);
    snprintf(failures + used, sizeof failures - used, "%s%s: %s", used ? "; " : "", where, what);
}

/* a/b into out; 0, or -1 if it does not fit. */
static int path_join(char *out, size_t size, const char *a, const char *b)
{
    int n = snprintf(out, size, "%s/%s", a, b);
    return n < 0 || (size_t)n >= size ? -1 : 0;
}

static uint64_t le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static int pread_full(int fd, void *buf, size_t n, uint64_t offset)
{
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t got = pread(fd, p, n, (off_t)offset);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) {
            if (got == 0)
                errno = EIO;
            return -1;
        }
        p += got;
        n -= (size_t)got;
        offset += (uint64_t)got;
    }
    return 0;
}

static int write_full(int fd, const unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t put = write(fd, p, n);
        if (put < 0 && errno == EINTR)
            continue;
        if (put < 0)
            return -1;
        p += put;
        n -= (size_t)put;
    }
    return 0;
}

/* --- the bundle: trailer and index -------------------------------------------- */

/* A path inside the cache folder: relative, no empty, "." or ".." parts. */
static int safe_relative_path(const char *path)
{
    if (!*path || *path == '/')
        return 0;
    for (const char *part = path; part; ) {
        const char *slash = strchr(part, '/');
        size_t len = slash ? (size_t)(slash - part) : strlen(part);
        if (len == 0 || (len == 1 && part[0] == '.') || (len == 2 && part[0] == '.' && part[1] == '.'))
            return 0;
        part = slash ? slash + 1 : NULL;
    }
    return 1;
}

static void parse_index(struct bundle *b, unsigned char *index, size_t size)
{
    size_t pos = 0, capacity = 64;
    b->entries = malloc(capacity * sizeof *b->entries);
    if (!b->entries)
        die("out of memory");
    while (pos < size) {
        if (size - pos < ENTRY_HEADER)
            die("this kiwi file is damaged (index); download it again");
        unsigned char *h = index + pos;
        uint32_t len = (uint32_t)h[4] | (uint32_t)h[5] << 8 | (uint32_t)h[6] << 16 | (uint32_t)h[7] << 24;
        if (len == 0 || len >= PATH_MAX || size - pos - ENTRY_HEADER < len || (h[0] != 'd' && h[0] != 'f'))
            die("this kiwi file is damaged (index); download it again");
        if (b->count == capacity) {
            capacity *= 2;
            b->entries = realloc(b->entries, capacity * sizeof *b->entries);
            if (!b->entries)
                die("out of memory");
        }
        struct entry *e = &b->entries[b->count++];
        e->type = (char)h[0];
        e->mode = (mode_t)(h[2] | h[3] << 8) & 07777;
        e->size = le64(h + 8);
        /* The path moves to the start of its entry and ends there with a NUL,
         * inside the entry's own bytes. */
        memmove(h, h + ENTRY_HEADER, len);
        h[len] = 0;
        e->path = (const char *)h;
        if (!safe_relative_path(e->path))
            die("this kiwi file is damaged (path %s); download it again", e->path);
        pos += ENTRY_HEADER + len;
    }
}

static void open_bundle(struct bundle *b)
{
    unsigned char t[TRAILER_SIZE];
    struct stat st;
    b->fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    if (b->fd < 0 || fstat(b->fd, &st) < 0)
        die("cannot read its own file through /proc/self/exe (%s); is /proc mounted?", strerror(errno));
    uint64_t size = (uint64_t)st.st_size;
    if (size < TRAILER_SIZE || pread_full(b->fd, t, TRAILER_SIZE, size - TRAILER_SIZE) < 0
        || memcmp(t, MAGIC, 8) != 0)
        die("this kiwi file has no bundle at its end (cut short?); download it again or build it with ./build.sh host");
    uint64_t index_offset = le64(t + 8), index_size = le64(t + 16);
    b->data_offset = le64(t + 24);
    b->data_size = le64(t + 32);
    b->built = (time_t)le64(t + 40);
    memcpy(b->hash, t + 48, HASH_LEN);
    b->hash[HASH_LEN] = 0;
    uint64_t end = size - TRAILER_SIZE;
    if (index_size > INDEX_MAX || index_offset > end || index_size > end - index_offset
        || b->data_offset > end || b->data_size > end - b->data_offset
        || strspn(b->hash, "0123456789abcdef") != HASH_LEN)
        die("this kiwi file is damaged (trailer); download it again");
    unsigned char *index = malloc(index_size + 1);
    if (!index)
        die("out of memory");
    if (pread_full(b->fd, index, index_size, index_offset) < 0)
        die("cannot read its bundle index: %s", strerror(errno));
    parse_index(b, index, index_size);
}

/* --- trusted folders -------------------------------------------------------------- */

/* Nobody but root or `me` can change what this folder holds. A sticky folder
 * (like /tmp) is fine: others cannot rename or remove what they do not own,
 * and the next folder down is checked on its own. */
static int trusted_dir(const struct stat *st, uid_t me)
{
    return S_ISDIR(st->st_mode) && (st->st_uid == 0 || st->st_uid == me)
        && (!(st->st_mode & (S_IWGRP | S_IWOTH)) || (st->st_mode & S_ISVTX));
}

/* Ours and private: the cache parent, a cache folder. */
static int private_dir(const struct stat *st, uid_t me)
{
    return S_ISDIR(st->st_mode) && st->st_uid == me && !(st->st_mode & 077);
}

/* Open an absolute path without symlinks, checking every folder on the way. */
static int open_trusted(const char *path, uid_t me)
{
    char copy[PATH_MAX];
    struct stat st;
    if (snprintf(copy, sizeof copy, "%s", path) >= (int)sizeof copy) {
        errno = ENAMETOOLONG;
        return -1;
    }
    int fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) < 0 || !trusted_dir(&st, me))
        goto untrusted;
    for (char *save = NULL, *part = strtok_r(copy, "/", &save); part; part = strtok_r(NULL, "/", &save)) {
        int next = openat(fd, part, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        close(fd);
        fd = next;
        if (fd < 0)
            return -1;
        if (fstat(fd, &st) < 0 || !trusted_dir(&st, me))
            goto untrusted;
    }
    return fd;
untrusted:
    if (fd >= 0)
        close(fd);
    errno = EPERM;
    return -1;
}

/* mkdir -p with the mode Python's Path.mkdir(parents=True) would use. */
static void make_dirs(const char *path, mode_t mode)
{
    char copy[PATH_MAX];
    if (snprintf(copy, sizeof copy, "%s", path) >= (int)sizeof copy)
        return;
    for (char *p = copy + 1; *p; p++) {
        if (*p == '/') {
            *p = 0;
            mkdir(copy, mode);
            *p = '/';
        }
    }
    mkdir(copy, mode);
}

/* Open (creating if need be) base/sub as a private cache parent; its path goes to out. */
static int open_cache_parent(const char *base, const char *sub, mode_t base_mode, char *out, size_t outsize)
{
    uid_t me = geteuid();
    char real[PATH_MAX];
    struct stat st;
    make_dirs(base, base_mode);
    if (!realpath(base, real)) {
        note_failure(base, strerror(errno));
        return -1;
    }
    int basefd = open_trusted(real, me);
    if (basefd < 0) {
        note_failure(real, errno == EPERM ? "another user can write it or a folder above it" : strerror(errno));
        return -1;
    }
    if (path_join(out, outsize, strcmp(real, "/") ? real : "", sub) < 0) {
        note_failure(real, strerror(ENAMETOOLONG));
        close(basefd);
        return -1;
    }
    if (mkdirat(basefd, sub, 0700) < 0 && errno != EEXIST) {
        note_failure(out, strerror(errno));
        close(basefd);
        return -1;
    }
    int fd = openat(basefd, sub, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    close(basefd);
    if (fd < 0 || fstat(fd, &st) < 0 || !private_dir(&st, me)) {
        note_failure(out, fd < 0 ? strerror(errno) : "not a private folder of this user (want owner us, mode 0700)");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

/* --- removing folders ------------------------------------------------------------ */

/* rm -rf dirfd/name without following symlinks or leaving its filesystem. */
static void remove_tree(int dirfd, const char *name)
{
    struct stat parent, st;
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        unlinkat(dirfd, name, 0);
        return;
    }
    if (fstat(dirfd, &parent) == 0 && fstat(fd, &st) == 0 && st.st_dev == parent.st_dev) {
        DIR *d = fdopendir(fd);
        if (d) {
            struct dirent *e;
            while ((e = readdir(d))) {
                if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")
                    && unlinkat(fd, e->d_name, 0) < 0 && errno == EISDIR)
                    remove_tree(fd, e->d_name);
            }
            closedir(d);
            fd = -1;
        }
    }
    if (fd >= 0)
        close(fd);
    unlinkat(dirfd, name, AT_REMOVEDIR);
}

/* Move name out of the way first, so no run ever sees a half-removed folder. */
static void discard(int parentfd, const char *name)
{
    char gone[64];
    snprintf(gone, sizeof gone, ".tmp-gone-%d-%.20s", (int)getpid(), name);
    if (renameat(parentfd, name, parentfd, gone) == 0)
        remove_tree(parentfd, gone);
}

static int is_hash_name(const char *name)
{
    return strlen(name) == HASH_LEN && strspn(name, "0123456789abcdef") == HASH_LEN;
}

static DIR *list_dir(int dirfd)
{
    int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd < 0 ? NULL : fdopendir(fd);
    if (!d && fd >= 0)
        close(fd);
    return d;
}

/* Temporary folders of unpacks and removals that were killed. Called under the lock. */
static void remove_leftovers(int parentfd)
{
    DIR *d = list_dir(parentfd);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, ".tmp-", 5) == 0)
            remove_tree(parentfd, e->d_name);
    }
    closedir(d);
}

/* Folders of older builds that no running process of theirs holds. */
static void remove_older_builds(const struct bundle *b, int parentfd)
{
    DIR *d = list_dir(parentfd);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!is_hash_name(e->d_name) || strcmp(e->d_name, b->hash) == 0)
            continue;
        char marker[HASH_LEN + sizeof MARKER + 1];
        struct stat st;
        if (path_join(marker, sizeof marker, e->d_name, MARKER) < 0)
            continue;
        int mfd = openat(parentfd, marker, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (mfd < 0) {
            discard(parentfd, e->d_name);   /* never completed */
            continue;
        }
        if (fstat(mfd, &st) == 0 && st.st_mtime < b->built && flock(mfd, LOCK_EX | LOCK_NB) == 0)
            discard(parentfd, e->d_name);
        close(mfd);
    }
    closedir(d);
}

/* --- a complete cache folder ------------------------------------------------------ */

static int matches(const struct entry *e, const struct stat *st, const struct bundle *b, uid_t me)
{
    if (st->st_uid != me || (st->st_mode & 07777) != e->mode)
        return 0;
    if (e->type == 'd')
        return S_ISDIR(st->st_mode);
    return S_ISREG(st->st_mode) && (uint64_t)st->st_size == e->size
        && st->st_mtim.tv_sec == b->built && st->st_mtim.tv_nsec == 0;
}

/* The marker's fd, share-locked and inheritable, when parent/<hash> is complete
 * and untouched; -1 otherwise. */
static int open_complete(const struct bundle *b, int parentfd)
{
    uid_t me = geteuid();
    struct stat st, now;
    int ok = 0, markfd = -1;
    int fd = openat(parentfd, b->hash, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -1;
    if (fstat(fd, &st) < 0 || !private_dir(&st, me))
        goto out;
    markfd = openat(fd, MARKER, O_RDONLY | O_NOFOLLOW);   /* no O_CLOEXEC: held across exec */
    if (markfd < 0 || flock(markfd, LOCK_SH) < 0)
        goto out;
    /* A newer build may have removed the folder while we waited for the lock. */
    if (fstatat(parentfd, b->hash, &now, AT_SYMLINK_NOFOLLOW) < 0 || now.st_ino != st.st_ino
        || now.st_dev != st.st_dev)
        goto out;
    for (size_t i = 0; i < b->count; i++) {
        if (fstatat(fd, b->entries[i].path, &now, AT_SYMLINK_NOFOLLOW) < 0
            || !matches(&b->entries[i], &now, b, me))
            goto out;
    }
    ok = 1;
out:
    close(fd);
    if (!ok && markfd >= 0) {
        close(markfd);
        markfd = -1;
    }
    return markfd;
}

/* --- unpacking -------------------------------------------------------------------- */

struct stream {
    int fd;
    uint64_t pos, end;
    ZSTD_DCtx *z;
    ZSTD_inBuffer in;
    size_t out_pos, out_len;
    size_t hint;          /* ZSTD_decompressStream's last result: 0 once the frame is done */
};

static unsigned char in_buf[1 << 17], out_buf[1 << 17];

/* One decompression step; -1 with EBADMSG when the bundle is damaged. */
static int stream_step(struct stream *s)
{
    if (s->in.pos == s->in.size) {
        if (s->pos >= s->end) {
            errno = EBADMSG;   /* the bundle ends before the index says */
            return -1;
        }
        size_t n = s->end - s->pos < sizeof in_buf ? (size_t)(s->end - s->pos) : sizeof in_buf;
        if (pread_full(s->fd, in_buf, n, s->pos) < 0)
            return -1;
        s->in = (ZSTD_inBuffer){ in_buf, n, 0 };
        s->pos += n;
    }
    ZSTD_outBuffer out = { out_buf, sizeof out_buf, 0 };
    s->hint = ZSTD_decompressStream(s->z, &out, &s->in);
    if (ZSTD_isError(s->hint)) {
        errno = EBADMSG;
        return -1;
    }
    s->out_pos = 0;
    s->out_len = out.pos;
    return 0;
}

static int stream_copy(struct stream *s, int fd, uint64_t n)
{
    while (n > 0) {
        while (s->out_pos == s->out_len) {
            if (stream_step(s) < 0)
                return -1;
        }
        size_t k = s->out_len - s->out_pos;
        if (k > n)
            k = (size_t)n;
        if (write_full(fd, out_buf + s->out_pos, k) < 0)
            return -1;
        s->out_pos += k;
        n -= k;
    }
    return 0;
}

/* The frame must end where the index does: zstd checks its checksum there. */
static int stream_end(struct stream *s)
{
    while (s->hint != 0 && s->out_pos == s->out_len) {
        if (stream_step(s) < 0)
            return -1;
    }
    if (s->out_pos != s->out_len || s->pos != s->end || s->in.pos != s->in.size) {
        errno = EBADMSG;
        return -1;
    }
    return 0;
}

/* A file with its final mode and mtime; durable: fsync'd before it counts (the
 * marker). The bundle's other files reach the disk with one syncfs (unpack_entries). */
static int unpack_file(struct stream *s, int dirfd, const struct entry *e, time_t built, int durable)
{
    const struct timespec times[2] = { { built, 0 }, { built, 0 } };
    int fd = openat(dirfd, e->path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    int rc = (s ? stream_copy(s, fd, e->size) : 0) < 0 || fchmod(fd, e->mode) < 0
        || futimens(fd, times) < 0 || (durable && fsync(fd) < 0) ? -1 : 0;
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

static int unpack_entries(const struct bundle *b, int tmpfd)
{
    struct stream s = { b->fd, b->data_offset, b->data_offset + b->data_size, ZSTD_createDCtx(),
                        { NULL, 0, 0 }, 0, 0, 1 };
    const struct entry marker = { 'f', 0600, 0, MARKER };
    int rc = s.z ? 0 : -1;
    for (size_t i = 0; rc == 0 && i < b->count; i++) {
        const struct entry *e = &b->entries[i];
        if (e->type == 'f')
            rc = unpack_file(&s, tmpfd, e, b->built, 0);
        else
            rc = mkdirat(tmpfd, e->path, 0700) < 0 || fchmodat(tmpfd, e->path, e->mode, 0) < 0 ? -1 : 0;
    }
    if (rc == 0)
        rc = stream_end(&s);
    /* One syncfs instead of an fsync per file and folder (hundreds of them): every
     * file and folder is on disk before the marker says the cache is complete. */
    if (rc == 0)
        rc = syncfs(tmpfd);
    if (rc == 0)
        rc = unpack_file(NULL, tmpfd, &marker, b->built, 1);
    if (rc == 0)
        rc = fsync(tmpfd);
    int saved = errno;
    ZSTD_freeDCtx(s.z);
    errno = saved;
    return rc;
}

/* Unpack into .tmp-<hash>-<pid>, then rename it to <hash>: all or nothing. */
static int unpack(const struct bundle *b, int parentfd)
{
    char tmp[64];
    snprintf(tmp, sizeof tmp, ".tmp-%s-%d", b->hash, (int)getpid());
    if (mkdirat(parentfd, tmp, 0700) < 0)
        return -1;
    int tmpfd = openat(parentfd, tmp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int rc = tmpfd < 0 || fchmod(tmpfd, 0700) < 0 || unpack_entries(b, tmpfd) < 0
        || renameat(parentfd, tmp, parentfd, b->hash) < 0 || fsync(parentfd) < 0 ? -1 : 0;
    int saved = errno;
    if (tmpfd >= 0)
        close(tmpfd);
    if (rc < 0)
        remove_tree(parentfd, tmp);
    errno = saved;
    return rc;
}

/* The share-locked marker of a complete cache folder under parentfd, unpacking
 * it first (under the parent's lock) if need be; -1 with a note on failure. */
static int ensure_complete(const struct bundle *b, int parentfd, const char *where)
{
    int markfd = open_complete(b, parentfd);
    if (markfd >= 0)
        return markfd;
    int lockfd = openat(parentfd, ".lock", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (lockfd < 0 || flock(lockfd, LOCK_EX) < 0) {
        note_failure(where, strerror(errno));
        if (lockfd >= 0)
            close(lockfd);
        return -1;
    }
    markfd = open_complete(b, parentfd);   /* another run may just have unpacked it */
    if (markfd < 0) {
        remove_leftovers(parentfd);
        discard(parentfd, b->hash);        /* damaged or incomplete */
        int rc = unpack(b, parentfd);
        if (rc < 0 && errno == EBADMSG)
            die("this kiwi file is damaged (its bundle does not unpack); download it again");
        if (rc < 0)
            note_failure(where, strerror(errno));
        else if ((markfd = open_complete(b, parentfd)) < 0)
            note_failure(where, "the unpacked files do not match the index");
        if (markfd >= 0)
            remove_older_builds(b, parentfd);
    }
    close(lockfd);
    return markfd;
}

/* --- where to unpack ----------------------------------------------------------- */

/* kiwi/store.py is_old_kiwi_folder's rule, which this must match (OLD_FOLDER_DIRS,
 * OLD_FOLDER_RECORDS): a real folder of ours, writable by no one else, holding nothing but a data folder's folders
 * and snapshot files <name>.kiwi, with images/ or containers/ among them, each of their
 * entries a folder holding its record. */
static const char *const old_folder_dirs[] = {"images", "containers", "run", "mounts", "exports", ".tmp", ".locks"};

static int is_regular(int dirfd, const char *name)
{
    struct stat st;
    return fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode);
}

/* Each entry of the folder dirfd/name is a folder holding record or other (if not NULL). */
static int all_hold_a_record(int dirfd, const char *name, const char *record, const char *other)
{
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    DIR *d = fd < 0 ? NULL : fdopendir(fd);
    if (!d) {
        if (fd >= 0)
            close(fd);
        return 0;
    }
    int ok = 1;
    struct dirent *e;
    while (ok && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        int entry = openat(fd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        ok = entry >= 0 && (is_regular(entry, record) || (other && is_regular(entry, other)));
        if (entry >= 0)
            close(entry);
    }
    closedir(d);
    return ok;
}

static int is_old_kiwi_folder(const char *old)
{
    struct stat st;
    if (lstat(old, &st) < 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 022))
        return 0;
    int fd = open(old, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    DIR *d = fd < 0 ? NULL : fdopendir(fd);
    if (!d) {
        if (fd >= 0)
            close(fd);
        return 0;
    }
    int ok = 1, records = 0;
    struct dirent *e;
    while (ok && (e = readdir(d))) {
        const char *name = e->d_name;
        size_t len = strlen(name);
        if (!strcmp(name, ".") || !strcmp(name, ".."))
            continue;
        if (fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            ok = 0;
            break;
        }
        if (S_ISREG(st.st_mode) && len > 5 && !strcmp(name + len - 5, ".kiwi"))
            continue;
        ok = 0;
        for (size_t i = 0; i < sizeof old_folder_dirs / sizeof *old_folder_dirs; i++)
            ok |= S_ISDIR(st.st_mode) && !strcmp(name, old_folder_dirs[i]);
        if (ok && !strcmp(name, "containers")) {
            records = 1;
            ok = all_hold_a_record(fd, name, "config.json", NULL);
        } else if (ok && !strcmp(name, "images")) {
            records = 1;
            ok = all_hold_a_record(fd, name, "manifest.json", "image.json");
        }
    }
    closedir(d);
    return ok && records;
}

/* Store.open's rule: $KIWI_ROOT, else kiwi-data beside the executable. Store.open
 * refuses a relative KIWI_ROOT: then there is no data folder to unpack into (""),
 * and nothing may be created where that relative path points. */
static void data_folder(const char *self, char *out, size_t size)
{
    const char *root = getenv("KIWI_ROOT");
    if (root && *root) {
        if (root[0] != '/')
            out[0] = '\0';
        else if (snprintf(out, size, "%s", root) >= (int)size)
            die("KIWI_ROOT is too long");
        return;
    }
    const char *slash = strrchr(self, '/');
    int dir_len = slash ? (int)(slash - self) : 0;
    snprintf(out, size, "%.*s/kiwi-data", dir_len, self);
    /* Store.open's migrate_old_folder: older kiwi kept its data in ./.kiwi; only one that
     * is provably an older Kiwi's moves, anyone else's stays (silently). */
    char old[PATH_MAX];
    struct stat st;
    snprintf(old, sizeof old, "%.*s/.kiwi", dir_len, self);
    if (lstat(out, &st) < 0 && errno == ENOENT && is_old_kiwi_folder(old))
        rename(old, out);
}

static int candidate_parents(const char *self, char bases[3][PATH_MAX], const char *subs[3], mode_t modes[3])
{
    int n = 0;
    uid_t me = geteuid();
    if (me == 0) {
        data_folder(self, bases[n], PATH_MAX);
        subs[n] = ".runtime";
        modes[n] = 0700;   /* the data folder as Python makes it: root's alone */
        if (bases[n][0])
            n++;
        /* Only root can make folders here; in /tmp anyone could take the name first. */
        snprintf(bases[n], PATH_MAX, "/var/cache");
        subs[n] = "kiwi";
        modes[n++] = 0755;
    } else {
        const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
        if (xdg && xdg[0] == '/')
            snprintf(bases[n], PATH_MAX, "%s", xdg);
        else if (home && home[0] == '/')
            snprintf(bases[n], PATH_MAX, "%s/.cache", home);
        else
            bases[n][0] = 0;
        if (bases[n][0]) {
            subs[n] = "kiwi";
            modes[n++] = 0700;
        }
    }
    static char tmp_sub[32];
    snprintf(tmp_sub, sizeof tmp_sub, "kiwi-%u", (unsigned)me);
    snprintf(bases[n], PATH_MAX, "/tmp");
    subs[n] = tmp_sub;
    modes[n++] = 01777;
    return n;
}

int main(int argc, char **argv)
{
    struct bundle b = { 0 };
    char self[PATH_MAX], bases[3][PATH_MAX], parent[PATH_MAX], exe[PATH_MAX + 64];
    const char *subs[3];
    mode_t modes[3];
    (void)argc;
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0)
        die("cannot find its own file through /proc/self/exe (%s); is /proc mounted?", strerror(errno));
    self[len] = 0;
    open_bundle(&b);
    int n = candidate_parents(self, bases, subs, modes);
    for (int i = 0; i < n; i++) {
        int parentfd = open_cache_parent(bases[i], subs[i], modes[i], parent, sizeof parent);
        if (parentfd < 0)
            continue;
        int markfd = ensure_complete(&b, parentfd, parent);
        close(parentfd);
        if (markfd < 0)
            continue;
        snprintf(exe, sizeof exe, "%s/%s/%s", parent, b.hash, BUNDLE_EXE);
        if (setenv(EXE_ENV, self, 1) < 0)
            die("out of memory");
        execv(exe, argv);
        note_failure(exe, strerror(errno));   /* e.g. /tmp mounted noexec */
        close(markfd);
    }
    die("found no folder to unpack and run kiwi from (%s); %s", failures, geteuid() == 0
        ? "set KIWI_ROOT to a folder only root can write, or free some space"
        : "set XDG_CACHE_HOME to a folder of your own, or free some space");
}
