"""Build Kiwi's native parts.

    python cffi_build/build_sys.py            # sys, init, exec and lxfs
    python cffi_build/build_sys.py sys        # kiwi/_sys*.so        (cffi API mode)
    python cffi_build/build_sys.py init       # kiwi/kiwi-init       (static PID 1)
    python cffi_build/build_sys.py exec       # kiwi/kiwi-exec       (static container entry)
    python cffi_build/build_sys.py lxfs       # kiwi/kiwi-lxfs       (static FUSE server: limits seen inside)
    python cffi_build/build_sys.py launcher   # build/kiwi-launcher  (static, head of the one-file kiwi)
    python cffi_build/build_sys.py embed      # build/kiwi-embed     (the bundle's executable, runs libpython)

Every wrapper returns -1 and leaves errno set on failure; kiwi/syscalls.py turns
that into OSError. Raw syscall(2) is used wherever glibc has no wrapper (or has
one only in newer releases), so the module builds against older glibc too.
CC and CFLAGS from the environment are honoured (cross builds).
"""

import os
import shlex
import subprocess
import sys
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent

# Constants resolved by the C compiler from the headers below ("..." in cdef).
CONSTANTS = """
CLONE_NEWNS CLONE_NEWUTS CLONE_NEWIPC CLONE_NEWUSER CLONE_NEWPID CLONE_NEWNET
CLONE_NEWCGROUP CLONE_NEWTIME CLONE_FILES CLONE_FS CLONE_SYSVSEM
MS_RDONLY MS_NOSUID MS_NODEV MS_NOEXEC MS_SYNCHRONOUS MS_REMOUNT MS_MANDLOCK
MS_DIRSYNC MS_NOATIME MS_NODIRATIME MS_BIND MS_MOVE MS_REC MS_SILENT
MS_UNBINDABLE MS_PRIVATE MS_SLAVE MS_SHARED MS_RELATIME MS_STRICTATIME
MS_LAZYTIME
MNT_FORCE MNT_DETACH MNT_EXPIRE UMOUNT_NOFOLLOW
RESOLVE_NO_XDEV RESOLVE_NO_MAGICLINKS RESOLVE_NO_SYMLINKS RESOLVE_BENEATH
RESOLVE_IN_ROOT RESOLVE_CACHED
OPEN_TREE_CLONE OPEN_TREE_CLOEXEC
MOVE_MOUNT_F_SYMLINKS MOVE_MOUNT_F_AUTOMOUNTS MOVE_MOUNT_F_EMPTY_PATH
MOVE_MOUNT_T_SYMLINKS MOVE_MOUNT_T_AUTOMOUNTS MOVE_MOUNT_T_EMPTY_PATH
MOUNT_ATTR_RDONLY MOUNT_ATTR_NOSUID MOUNT_ATTR_NODEV MOUNT_ATTR_NOEXEC
MOUNT_ATTR_NOATIME MOUNT_ATTR_NODIRATIME MOUNT_ATTR_IDMAP
LOOP_SET_FD LOOP_CLR_FD LOOP_SET_STATUS64 LOOP_GET_STATUS64 LOOP_SET_CAPACITY
LOOP_SET_DIRECT_IO LOOP_SET_BLOCK_SIZE LOOP_CONFIGURE
LOOP_CTL_ADD LOOP_CTL_REMOVE LOOP_CTL_GET_FREE
LO_FLAGS_READ_ONLY LO_FLAGS_AUTOCLEAR LO_FLAGS_PARTSCAN LO_FLAGS_DIRECT_IO
LO_NAME_SIZE
PR_SET_PDEATHSIG PR_GET_DUMPABLE PR_SET_DUMPABLE PR_SET_NAME PR_GET_NAME
PR_CAPBSET_READ PR_CAPBSET_DROP PR_SET_NO_NEW_PRIVS PR_GET_NO_NEW_PRIVS
PR_SET_CHILD_SUBREAPER PR_SET_KEEPCAPS PR_SET_SECUREBITS PR_GET_SECUREBITS
PR_CAP_AMBIENT PR_CAP_AMBIENT_IS_SET PR_CAP_AMBIENT_RAISE PR_CAP_AMBIENT_LOWER
PR_CAP_AMBIENT_CLEAR_ALL PR_GET_SECCOMP PR_SET_SECCOMP
F_ADD_SEALS F_GET_SEALS F_SEAL_SEAL F_SEAL_SHRINK F_SEAL_GROW F_SEAL_WRITE
F_SEAL_FUTURE_WRITE
MFD_CLOEXEC MFD_ALLOW_SEALING
AT_FDCWD AT_EMPTY_PATH AT_SYMLINK_NOFOLLOW AT_REMOVEDIR AT_RECURSIVE
SECCOMP_SET_MODE_FILTER SECCOMP_FILTER_FLAG_TSYNC
SECCOMP_RET_KILL_PROCESS SECCOMP_RET_KILL_THREAD SECCOMP_RET_TRAP
SECCOMP_RET_ERRNO SECCOMP_RET_ALLOW SECCOMP_RET_LOG SECCOMP_RET_DATA
AUDIT_ARCH_X86_64 AUDIT_ARCH_I386 AUDIT_ARCH_AARCH64 AUDIT_ARCH_ARM
BPF_PROG_TYPE_CGROUP_DEVICE BPF_CGROUP_DEVICE BPF_F_ALLOW_MULTI
_LINUX_CAPABILITY_VERSION_3
"""

CDEF = (
    "".join(f"#define {name} ...\n" for name in CONSTANTS.split())
    + """
struct loop_info64 {
    unsigned long long lo_offset;
    unsigned long long lo_sizelimit;
    uint32_t lo_flags;
    uint8_t lo_file_name[64];
    ...;
};
struct loop_config {
    uint32_t fd;
    uint32_t block_size;
    struct loop_info64 info;
    ...;
};

int kiwi_mount(const char *source, const char *target, const char *fstype,
               unsigned long flags, const char *data);
int kiwi_umount2(const char *target, int flags);
int kiwi_pivot_root(const char *new_root, const char *put_old);
int kiwi_unshare(int flags);
int kiwi_setns(int fd, int nstype);
int kiwi_sethostname(const char *name, size_t len);
int kiwi_prctl(int option, unsigned long a2, unsigned long a3,
               unsigned long a4, unsigned long a5);
int kiwi_ioctl_int(int fd, unsigned long request, unsigned long arg);
int kiwi_ioctl_ptr(int fd, unsigned long request, void *arg);
int kiwi_memfd_create(const char *name, unsigned int flags);
int kiwi_add_seals(int fd, int seals);
int kiwi_get_seals(int fd);
int kiwi_openat2(int dirfd, const char *path, uint64_t flags, uint64_t mode,
                 uint64_t resolve);
int kiwi_open_tree(int dirfd, const char *path, unsigned int flags);
int kiwi_move_mount(int from_dfd, const char *from_path, int to_dfd,
                    const char *to_path, unsigned int flags);
int kiwi_mount_setattr(int dirfd, const char *path, unsigned int flags,
                       uint64_t attr_set, uint64_t attr_clr,
                       uint64_t propagation);
int kiwi_mount_idmap(int tree_fd, int userns_fd);
int kiwi_execveat(int fd, const char *path, char *const argv[],
                  char *const envp[], int flags);
int kiwi_capget(int pid, uint64_t *effective, uint64_t *permitted,
                uint64_t *inheritable);
int kiwi_capset(uint64_t effective, uint64_t permitted, uint64_t inheritable);
int kiwi_seccomp_filter(unsigned int flags, const void *filter,
                        unsigned short count);
int kiwi_mknodat(int dirfd, const char *path, unsigned int mode,
                 unsigned int major, unsigned int minor);
int kiwi_pidfd_open(int pid, unsigned int flags);
int kiwi_pidfd_send_signal(int pidfd, int sig, unsigned int flags);
int kiwi_close_range(unsigned int first, unsigned int last, unsigned int flags);
int kiwi_bpf_prog_load(unsigned int prog_type, const void *insns, unsigned int count,
                       const char *license);
int kiwi_bpf_prog_attach(int target_fd, int prog_fd, unsigned int attach_type,
                         unsigned int flags);
"""
)

SOURCE = r"""
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <linux/audit.h>
#include <linux/bpf.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/loop.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>

/* Older userspace headers lack the newer ABI bits; the values are kernel ABI. */
#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif
#ifndef CLONE_NEWCGROUP
#define CLONE_NEWCGROUP 0x02000000
#endif
#ifndef MS_LAZYTIME
#define MS_LAZYTIME (1 << 25)
#endif
#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1
#endif
#ifndef OPEN_TREE_CLOEXEC
#define OPEN_TREE_CLOEXEC O_CLOEXEC
#endif
#ifndef MOVE_MOUNT_F_SYMLINKS
#define MOVE_MOUNT_F_SYMLINKS 0x00000001
#define MOVE_MOUNT_F_AUTOMOUNTS 0x00000002
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#define MOVE_MOUNT_T_SYMLINKS 0x00000010
#define MOVE_MOUNT_T_AUTOMOUNTS 0x00000020
#define MOVE_MOUNT_T_EMPTY_PATH 0x00000040
#endif
#ifndef MOUNT_ATTR_RDONLY
#define MOUNT_ATTR_RDONLY 0x00000001
#define MOUNT_ATTR_NOSUID 0x00000002
#define MOUNT_ATTR_NODEV 0x00000004
#define MOUNT_ATTR_NOEXEC 0x00000008
#define MOUNT_ATTR_NOATIME 0x00000010
#define MOUNT_ATTR_NODIRATIME 0x00000080
#endif
#ifndef MOUNT_ATTR_IDMAP
#define MOUNT_ATTR_IDMAP 0x00100000
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
#ifndef RESOLVE_CACHED
#define RESOLVE_CACHED 0x20
#endif
#ifndef LOOP_CONFIGURE
#define LOOP_CONFIGURE 0x4C0A
#endif
#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif
#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_IS_SET 1
#define PR_CAP_AMBIENT_RAISE 2
#define PR_CAP_AMBIENT_LOWER 3
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif
#ifndef SECCOMP_RET_KILL_PROCESS
#define SECCOMP_RET_KILL_PROCESS 0x80000000U
#endif
#ifndef SECCOMP_RET_LOG
#define SECCOMP_RET_LOG 0x7ffc0000U
#endif
#ifndef SECCOMP_RET_KILL_THREAD
#define SECCOMP_RET_KILL_THREAD 0x00000000U
#endif
#ifndef SYS_open_tree
#define SYS_open_tree 428
#define SYS_move_mount 429
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#ifndef SYS_bpf
#define SYS_bpf __NR_bpf
#endif

struct kiwi_mount_attr {        /* struct mount_attr, MOUNT_ATTR_SIZE_VER0 */
    uint64_t attr_set, attr_clr, propagation, userns_fd;
};

int kiwi_mount(const char *source, const char *target, const char *fstype,
               unsigned long flags, const char *data)
{ return mount(source, target, fstype, flags, data); }

int kiwi_umount2(const char *target, int flags)
{ return umount2(target, flags); }

int kiwi_pivot_root(const char *new_root, const char *put_old)
{ return (int)syscall(SYS_pivot_root, new_root, put_old); }

int kiwi_unshare(int flags) { return unshare(flags); }

int kiwi_setns(int fd, int nstype) { return (int)syscall(SYS_setns, fd, nstype); }

int kiwi_sethostname(const char *name, size_t len) { return sethostname(name, len); }

int kiwi_prctl(int option, unsigned long a2, unsigned long a3,
               unsigned long a4, unsigned long a5)
{ return prctl(option, a2, a3, a4, a5); }

int kiwi_ioctl_int(int fd, unsigned long request, unsigned long arg)
{ return ioctl(fd, request, arg); }

int kiwi_ioctl_ptr(int fd, unsigned long request, void *arg)
{ return ioctl(fd, request, arg); }

int kiwi_memfd_create(const char *name, unsigned int flags)
{ return (int)syscall(SYS_memfd_create, name, flags); }

int kiwi_add_seals(int fd, int seals) { return fcntl(fd, F_ADD_SEALS, seals); }

int kiwi_get_seals(int fd) { return fcntl(fd, F_GET_SEALS); }

int kiwi_openat2(int dirfd, const char *path, uint64_t flags, uint64_t mode,
                 uint64_t resolve)
{
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = flags;
    how.mode = mode;
    how.resolve = resolve;
    return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
}

int kiwi_open_tree(int dirfd, const char *path, unsigned int flags)
{ return (int)syscall(SYS_open_tree, dirfd, path, flags); }

int kiwi_move_mount(int from_dfd, const char *from_path, int to_dfd,
                    const char *to_path, unsigned int flags)
{ return (int)syscall(SYS_move_mount, from_dfd, from_path, to_dfd, to_path, flags); }

int kiwi_mount_setattr(int dirfd, const char *path, unsigned int flags,
                       uint64_t attr_set, uint64_t attr_clr, uint64_t propagation)
{
    struct kiwi_mount_attr attr = { attr_set, attr_clr, propagation, 0 };
    return (int)syscall(SYS_mount_setattr, dirfd, path, flags, &attr, sizeof attr);
}

/* Make a detached tree (open_tree OPEN_TREE_CLONE) show its files through the
 * id mapping of the user namespace userns_fd. */
int kiwi_mount_idmap(int tree_fd, int userns_fd)
{
    struct kiwi_mount_attr attr = { MOUNT_ATTR_IDMAP, 0, 0, (uint64_t)userns_fd };
    return (int)syscall(SYS_mount_setattr, tree_fd, "", AT_EMPTY_PATH, &attr, sizeof attr);
}

int kiwi_execveat(int fd, const char *path, char *const argv[],
                  char *const envp[], int flags)
{ return (int)syscall(SYS_execveat, fd, path, argv, envp, flags); }

/* Version 3 capabilities are 64 bits split over two 32-bit words. */
int kiwi_capget(int pid, uint64_t *effective, uint64_t *permitted,
                uint64_t *inheritable)
{
    struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, pid };
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    if (syscall(SYS_capget, &header, data) < 0)
        return -1;
    *effective = data[0].effective | ((uint64_t)data[1].effective << 32);
    *permitted = data[0].permitted | ((uint64_t)data[1].permitted << 32);
    *inheritable = data[0].inheritable | ((uint64_t)data[1].inheritable << 32);
    return 0;
}

int kiwi_capset(uint64_t effective, uint64_t permitted, uint64_t inheritable)
{
    struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2] = {
        { (uint32_t)effective, (uint32_t)permitted, (uint32_t)inheritable },
        { (uint32_t)(effective >> 32), (uint32_t)(permitted >> 32),
          (uint32_t)(inheritable >> 32) },
    };
    return (int)syscall(SYS_capset, &header, data);
}

/* filter: `count` packed struct sock_filter entries (8 bytes each). */
int kiwi_seccomp_filter(unsigned int flags, const void *filter, unsigned short count)
{
    struct sock_fprog prog = { count, (struct sock_filter *)filter };
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
}

int kiwi_mknodat(int dirfd, const char *path, unsigned int mode,
                 unsigned int major, unsigned int minor)
{ return mknodat(dirfd, path, mode, makedev(major, minor)); }

int kiwi_pidfd_open(int pid, unsigned int flags)
{ return (int)syscall(SYS_pidfd_open, pid, flags); }

int kiwi_pidfd_send_signal(int pidfd, int sig, unsigned int flags)
{ return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, flags); }

int kiwi_close_range(unsigned int first, unsigned int last, unsigned int flags)
{ return (int)syscall(SYS_close_range, first, last, flags); }

/* insns: `count` packed struct bpf_insn entries (8 bytes each). */
int kiwi_bpf_prog_load(unsigned int prog_type, const void *insns, unsigned int count,
                       const char *license)
{
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.prog_type = prog_type;
    attr.insns = (uint64_t)(uintptr_t)insns;
    attr.insn_cnt = count;
    attr.license = (uint64_t)(uintptr_t)license;
    return (int)syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof attr);
}

int kiwi_bpf_prog_attach(int target_fd, int prog_fd, unsigned int attach_type,
                         unsigned int flags)
{
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.target_fd = target_fd;
    attr.attach_bpf_fd = prog_fd;
    attr.attach_type = attach_type;
    attr.attach_flags = flags;
    return (int)syscall(SYS_bpf, BPF_PROG_ATTACH, &attr, sizeof attr);
}
"""


def make_ffibuilder() -> FFI:
    ffibuilder = FFI()
    ffibuilder.cdef(CDEF)
    ffibuilder.set_source("kiwi._sys", SOURCE)
    return ffibuilder


def build_sys() -> Path:
    """Compile kiwi/_sys*.so in place (tmpdir = checkout, module path kiwi/_sys)."""
    return Path(make_ffibuilder().compile(tmpdir=str(ROOT), verbose=False))


def compile_c(output: Path, args: list[str]) -> Path:
    """cc args -o output, atomically: a running test never sees half a binary."""
    cc = shlex.split(os.environ.get("CC", "gcc"))
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    subprocess.run([*cc, "-s", "-Wall", "-Wextra", "-Werror", "-o", str(tmp), *args], check=True)
    tmp.replace(output)
    return output


def build_static(source: Path, output: Path, libs: tuple[str, ...] = ()) -> Path:
    """Compile one C file into a small, stripped static binary."""
    cflags = shlex.split(os.environ.get("INIT_CFLAGS", ""))
    return compile_c(output, ["-Os", "-static", *cflags, str(source), *libs])


def build_init(output: Path = ROOT / "kiwi" / "kiwi-init") -> Path:
    return build_static(HERE / "init.c", output)


def build_exec(output: Path = ROOT / "kiwi" / "kiwi-exec") -> Path:
    return build_static(HERE / "exec.c", output)


def build_lxfs(output: Path = ROOT / "kiwi" / "kiwi-lxfs") -> Path:
    return build_static(HERE / "lxfs.c", output)


def build_launcher(output: Path = ROOT / "build" / "kiwi-launcher") -> Path:
    """Needs the static libzstd (libzstd-dev); cffi_build/pack.py appends the bundle."""
    return build_static(HERE / "launcher.c", output, ("-lzstd",))


def build_embed(output: Path = ROOT / "build" / "kiwi-embed") -> Path:
    """The bundle's executable: starts libpython from <its folder>/_internal (kiwi.spec)."""
    import sysconfig

    cflags = shlex.split(os.environ.get("CFLAGS", ""))
    libdir, version = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDVERSION")
    # DT_RPATH, not RUNPATH: the loader then also searches _internal for what
    # libpython and the extension modules need, with no LD_LIBRARY_PATH.
    rpath = "-Wl,--disable-new-dtags,-rpath,$ORIGIN/_internal"
    include = f"-I{sysconfig.get_paths()['include']}"
    return compile_c(
        output, ["-O2", *cflags, include, str(HERE / "embed.c"), f"-L{libdir}", f"-lpython{version}", rpath]
    )


def main(argv: list[str]) -> int:
    targets = argv or ["sys", "init", "exec", "lxfs"]
    for target in targets:
        built = {
            "sys": build_sys,
            "init": build_init,
            "exec": build_exec,
            "lxfs": build_lxfs,
            "launcher": build_launcher,
            "embed": build_embed,
        }[target]()
        print(f"built {built}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
