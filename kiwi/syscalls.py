"""Thin Python wrappers over the cffi module kiwi._sys.

Each function raises OSError(errno, "<strerror>: <call and arguments>") on
failure, so the right subclass (FileNotFoundError, PermissionError, ...) comes
out. Every constant of the C module (CLONE_NEW*, MS_*, MNT_*, RESOLVE_*,
OPEN_TREE_*, MOVE_MOUNT_*, MOUNT_ATTR_*, LOOP_*, LO_FLAGS_*, PR_*, F_SEAL_*,
MFD_*, AT_*, SECCOMP_*, AUDIT_ARCH_*) is re-exported as a module attribute.

Kept import-cheap on purpose: the frozen binary loads it at the start of every
container command, so only os and the compiled module are imported.
"""

import os

from kiwi._sys import ffi, lib

AT_FDCWD = lib.AT_FDCWD
AT_EMPTY_PATH = lib.AT_EMPTY_PATH


def __getattr__(name: str):
    """Constants resolve lazily: listing all of them costs more than the import itself."""
    if name[:1].isupper():
        try:
            value = getattr(lib, name)
        except AttributeError:
            pass
        else:
            globals()[name] = value
            return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | {name for name in dir(lib) if name[:1].isupper()})


def _raise(what: str) -> None:
    err = ffi.errno
    raise OSError(err, f"{os.strerror(err)}: {what}")


def _check(ret: int, what: str) -> int:
    if ret < 0:
        _raise(what)
    return ret


def _path(value) -> bytes:
    return os.fsencode(value)


def _optional(value):
    return ffi.NULL if value is None else _path(value)


# -- mounts ---------------------------------------------------------------


def mount(source, target, fstype=None, flags=0, data=None) -> None:
    ret = lib.kiwi_mount(_optional(source), _path(target), _optional(fstype), flags, _optional(data))
    _check(ret, f"mount {source!s} on {target!s} (type {fstype}, flags {flags:#x}, data {data})")


def umount(target, flags=0) -> None:
    _check(lib.kiwi_umount2(_path(target), flags), f"umount {target!s}")


def pivot_root(new_root, put_old) -> None:
    _check(lib.kiwi_pivot_root(_path(new_root), _path(put_old)), f"pivot_root {new_root!s} {put_old!s}")


def open_tree(dirfd: int, path, flags: int) -> int:
    return _check(lib.kiwi_open_tree(dirfd, _path(path), flags), f"open_tree {path!s} (flags {flags:#x})")


def move_mount(from_dfd: int, from_path, to_dfd: int, to_path, flags: int) -> None:
    ret = lib.kiwi_move_mount(from_dfd, _path(from_path), to_dfd, _path(to_path), flags)
    _check(ret, f"move_mount {from_path!s} -> {to_path!s} (flags {flags:#x})")


def mount_setattr(
    dirfd: int, path, flags: int, attr_set: int, attr_clr: int = 0, propagation: int = 0
) -> None:
    ret = lib.kiwi_mount_setattr(dirfd, _path(path), flags, attr_set, attr_clr, propagation)
    _check(ret, f"mount_setattr {path!s}")


def mount_idmap(tree_fd: int, userns_fd: int) -> None:
    """Idmap the detached mount tree_fd through the user namespace userns_fd."""
    _check(lib.kiwi_mount_idmap(tree_fd, userns_fd), f"mount_setattr MOUNT_ATTR_IDMAP fd {tree_fd}")


# -- namespaces and process ----------------------------------------------


def unshare(flags: int) -> None:
    _check(lib.kiwi_unshare(flags), f"unshare {flags:#x}")


def setns(fd: int, nstype: int = 0) -> None:
    _check(lib.kiwi_setns(fd, nstype), f"setns fd {fd} (type {nstype:#x})")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(lib.kiwi_sethostname(raw, len(raw)), f"sethostname {name}")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(lib.kiwi_prctl(option, arg2, arg3, arg4, arg5), f"prctl {option}")


def pidfd_open(pid: int, flags: int = 0) -> int:
    return _check(lib.kiwi_pidfd_open(pid, flags), f"pidfd_open {pid}")


def pidfd_send_signal(pidfd: int, sig: int, flags: int = 0) -> None:
    _check(lib.kiwi_pidfd_send_signal(pidfd, sig, flags), f"pidfd_send_signal fd {pidfd} signal {sig}")


def close_range(first: int, last: int = 0xFFFFFFFF, flags: int = 0) -> None:
    _check(lib.kiwi_close_range(first, last, flags), f"close_range {first}..{last}")


def _cstring_array(items):
    """NULL-terminated char*[]; returns (array, keepalive) - keep both referenced."""
    strings = [ffi.new("char[]", os.fsencode(item)) for item in items]
    return ffi.new("char *[]", strings + [ffi.NULL]), strings


def execveat(fd: int, argv, envp, path="", flags=None) -> None:
    """Execute the file open at fd (default: the fd itself, AT_EMPTY_PATH).

    envp: mapping or iterable of "KEY=value". Returns only by raising.
    """
    if flags is None:
        flags = lib.AT_EMPTY_PATH
    if hasattr(envp, "items"):
        envp = [f"{key}={value}" for key, value in envp.items()]
    c_argv, keep_argv = _cstring_array(argv)
    c_envp, keep_envp = _cstring_array(envp)
    lib.kiwi_execveat(fd, _path(path), c_argv, c_envp, flags)
    _raise(f"execveat fd {fd} {list(argv)}")


# -- files ----------------------------------------------------------------


def openat2(dirfd: int, path, flags: int, mode: int = 0, resolve: int = 0) -> int:
    ret = lib.kiwi_openat2(dirfd, _path(path), flags, mode, resolve)
    return _check(ret, f"openat2 {path!s} (flags {flags:#x}, resolve {resolve:#x})")


def mknod_at(dirfd: int, path, mode: int, major: int = 0, minor: int = 0) -> None:
    _check(lib.kiwi_mknodat(dirfd, _path(path), mode, major, minor), f"mknodat {path!s} ({major}:{minor})")


def memfd_create(name: str, flags: int) -> int:
    return _check(lib.kiwi_memfd_create(name.encode(), flags), f"memfd_create {name}")


def add_seals(fd: int, seals: int) -> None:
    _check(lib.kiwi_add_seals(fd, seals), f"F_ADD_SEALS fd {fd} ({seals:#x})")


def get_seals(fd: int) -> int:
    return _check(lib.kiwi_get_seals(fd), f"F_GET_SEALS fd {fd}")


def ioctl_int(fd: int, request: int, arg: int = 0) -> int:
    return _check(lib.kiwi_ioctl_int(fd, request, arg), f"ioctl {request:#x} on fd {fd}")


def ioctl_ptr(fd: int, request: int, arg) -> int:
    """arg: cffi pointer (e.g. ffi.new("struct ...*")) passed through as void *."""
    return _check(lib.kiwi_ioctl_ptr(fd, request, arg), f"ioctl {request:#x} on fd {fd}")


# -- capabilities and seccomp --------------------------------------------


def capget(pid: int = 0) -> tuple[int, int, int]:
    """(effective, permitted, inheritable) as 64-bit masks."""
    sets = ffi.new("uint64_t[3]")
    _check(lib.kiwi_capget(pid, sets + 0, sets + 1, sets + 2), f"capget {pid}")
    return sets[0], sets[1], sets[2]


def capset(effective: int, permitted: int, inheritable: int) -> None:
    _check(
        lib.kiwi_capset(effective, permitted, inheritable),
        f"capset eff {effective:#x} perm {permitted:#x} inh {inheritable:#x}",
    )


def seccomp_set_filter(program: bytes, flags: int = 0) -> None:
    """program: packed struct sock_filter entries (8 bytes each)."""
    if len(program) % 8 or not 0 < len(program) // 8 <= 4096:
        raise ValueError("seccomp program must be 1..4096 sock_filter entries")
    buffer = ffi.from_buffer(program)
    _check(lib.kiwi_seccomp_filter(flags, buffer, len(program) // 8), "seccomp set filter")


# -- cgroup BPF ------------------------------------------------------------


def bpf_prog_load(prog_type: int, program: bytes, license: str = "GPL") -> int:
    """program: packed struct bpf_insn entries (8 bytes each); returns the program's fd."""
    if len(program) % 8 or not program:
        raise ValueError("a BPF program is a non-empty list of 8-byte instructions")
    buffer = ffi.from_buffer(program)
    return _check(
        lib.kiwi_bpf_prog_load(prog_type, buffer, len(program) // 8, license.encode()),
        f"bpf PROG_LOAD (type {prog_type}, {len(program) // 8} instructions)",
    )


def bpf_prog_attach(target_fd: int, prog_fd: int, attach_type: int, flags: int = 0) -> None:
    _check(
        lib.kiwi_bpf_prog_attach(target_fd, prog_fd, attach_type, flags),
        f"bpf PROG_ATTACH (type {attach_type}, flags {flags:#x})",
    )
