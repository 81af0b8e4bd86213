"""Confinement of the container's processes.

The runtime applies it in the child that becomes PID 1, in this order:

    0. fd = init_memfd()         before pivot_root: the binary is a host file
       ... namespaces, mounts, pivot_root, /proc, /sys, /dev (runtime) ...
    1. mask_proc_paths()         needs mount(): before seccomp, while
                                 CAP_SYS_ADMIN is held
    2. install_seccomp()         while CAP_SYS_ADMIN is still held: without it the
                                 kernel demands no_new_privs, which would break
                                 setuid programs (su, ping) in the container
    3. drop_capabilities()       capset/prctl are not filtered, so this still works
    4. close_fds_except_stdio(keep=(fd,))
    5. exec_init(fd)

Commands run in a running container by `kiwi attach` and sessions enter it
through kiwi-exec (cffi_build/exec.c), a static helper started from a sealed
memfd like kiwi-init: it joins the cgroup and namespaces, then does steps 4, 2
and 3 itself (with the program from seccomp_program() and the mask of
KEPT_CAPABILITIES) before it executes the user's command.

Everything here runs in a forked child and never prints.
"""

import errno
import os
import signal
import struct
import sys
from pathlib import Path

from kiwi import syscalls as sc

# -- capabilities ---------------------------------------------------------

CAPABILITIES = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4,
    "KILL": 5, "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "LINUX_IMMUTABLE": 9,
    "NET_BIND_SERVICE": 10, "NET_BROADCAST": 11, "NET_ADMIN": 12, "NET_RAW": 13,
    "IPC_LOCK": 14, "IPC_OWNER": 15, "SYS_MODULE": 16, "SYS_RAWIO": 17,
    "SYS_CHROOT": 18, "SYS_PTRACE": 19, "SYS_PACCT": 20, "SYS_ADMIN": 21,
    "SYS_BOOT": 22, "SYS_NICE": 23, "SYS_RESOURCE": 24, "SYS_TIME": 25,
    "SYS_TTY_CONFIG": 26, "MKNOD": 27, "LEASE": 28, "AUDIT_WRITE": 29,
    "AUDIT_CONTROL": 30, "SETFCAP": 31, "MAC_OVERRIDE": 32, "MAC_ADMIN": 33,
    "SYSLOG": 34, "WAKE_ALARM": 35, "BLOCK_SUSPEND": 36, "AUDIT_READ": 37,
    "PERFMON": 38, "BPF": 39, "CHECKPOINT_RESTORE": 40,
}

# Docker's default set without MKNOD (/dev is prepared by the runtime).
KEPT_CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
)


def capability_mask(names) -> int:
    mask = 0
    for name in names:
        mask |= 1 << CAPABILITIES[name]
    return mask


def last_capability() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):  # /proc not mounted yet
        return max(CAPABILITIES.values())


def drop_capabilities(keep=KEPT_CAPABILITIES) -> None:
    """Reduce bounding, ambient, effective, permitted and inheritable sets to keep."""
    _, permitted, _ = sc.capget()
    kept = capability_mask(keep) & permitted  # cannot keep what we never had
    _drop_bounding(kept)
    sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
    # Inheritable stays empty (as Docker does since CVE-2022-24769): root gets
    # its capabilities back from the bounding set on exec anyway, and a
    # non-empty inheritable set would let non-root users gain them through
    # file capabilities.
    sc.capset(kept, kept, 0)


def _drop_bounding(kept: int) -> None:
    for cap in range(last_capability() + 1):
        if not kept & (1 << cap):
            sc.prctl(sc.PR_CAPBSET_DROP, cap)  # needs CAP_SETPCAP: do it before capset


# -- seccomp --------------------------------------------------------------

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7, "arm": 0x40000028}

# Which ABIs a process on this machine can use; anything else is killed.
ABIS_OF_MACHINE = {
    "x86_64": ("x86_64",),
    "aarch64": ("aarch64", "arm"),
    "armv7l": ("arm",), "armv8l": ("arm",), "armv6l": ("arm",),
}

DENIED_SYSCALLS = (
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "open_by_handle_at", "name_to_handle_at", "bpf", "perf_event_open",
    "keyctl", "add_key", "request_key",
    "mount", "umount2", "pivot_root", "swapon", "swapoff", "reboot", "acct",
    "settimeofday", "clock_settime", "clock_settime64", "clock_adjtime",
    "clock_adjtime64", "adjtimex", "iopl", "ioperm", "userfaultfd",
    "lookup_dcookie", "quotactl", "quotactl_fd",
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree",
    "mount_setattr", "unshare", "setns",
)

# Numbers of only the syscalls the filter names. 424+ are shared by all ABIs.
_COMMON_NEW = {
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
    "fsmount": 432, "fspick": 433, "clone3": 435, "mount_setattr": 442,
    "quotactl_fd": 443,
}
SYSCALL_NUMBERS = {
    "x86_64": {
        "clone": 56, "pivot_root": 155, "adjtimex": 159, "acct": 163,
        "settimeofday": 164, "mount": 165, "umount2": 166, "swapon": 167,
        "swapoff": 168, "reboot": 169, "iopl": 172, "ioperm": 173,
        "init_module": 175, "delete_module": 176, "quotactl": 179,
        "lookup_dcookie": 212, "clock_settime": 227, "kexec_load": 246,
        "add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272,
        "perf_event_open": 298, "name_to_handle_at": 303, "open_by_handle_at": 304,
        "clock_adjtime": 305, "setns": 308, "finit_module": 313,
        "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323, **_COMMON_NEW,
    },
    "aarch64": {
        "lookup_dcookie": 18, "umount2": 39, "mount": 40, "pivot_root": 41,
        "quotactl": 60, "acct": 89, "unshare": 97, "kexec_load": 104,
        "init_module": 105, "delete_module": 106, "clock_settime": 112,
        "reboot": 142, "settimeofday": 170, "adjtimex": 171, "add_key": 217,
        "request_key": 218, "keyctl": 219, "clone": 220, "swapon": 224,
        "swapoff": 225, "perf_event_open": 241, "name_to_handle_at": 264,
        "open_by_handle_at": 265, "clock_adjtime": 266, "setns": 268,
        "finit_module": 273, "bpf": 280, "userfaultfd": 282,
        "kexec_file_load": 294, **_COMMON_NEW,
    },
    "arm": {  # EABI
        "mount": 21, "acct": 51, "umount2": 52, "settimeofday": 79, "swapon": 87,
        "reboot": 88, "swapoff": 115, "clone": 120, "adjtimex": 124,
        "init_module": 128, "delete_module": 129, "quotactl": 131,
        "pivot_root": 218, "lookup_dcookie": 249, "clock_settime": 262,
        "add_key": 309, "request_key": 310, "keyctl": 311, "unshare": 337,
        "kexec_load": 347, "perf_event_open": 364, "name_to_handle_at": 370,
        "open_by_handle_at": 371, "clock_adjtime": 372, "setns": 375,
        "finit_module": 379, "bpf": 386, "userfaultfd": 388,
        "kexec_file_load": 401, "clock_settime64": 404, "clock_adjtime64": 405,
        **_COMMON_NEW,
    },
}

# clone() may not create namespaces either (unshare/setns are denied already).
CLONE_NAMESPACE_FLAGS = (0x00020000 | 0x04000000 | 0x08000000 | 0x10000000
                         | 0x20000000 | 0x40000000 | 0x02000000)
X32_SYSCALL_BIT = 0x40000000

# classic BPF opcodes and struct seccomp_data offsets (little endian)
_LD_W_ABS, _JMP_JA, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x05, 0x15, 0x35, 0x45, 0x06
_OFFSET_NR, _OFFSET_ARCH, _OFFSET_ARG0_LOW = 0, 4, 16

_RET_ALLOW = 0x7FFF0000
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000


def _ins(code: int, k: int = 0, jt: int = 0, jf: int = 0) -> tuple:
    return (code, jt, jf, k)


def _deny(errno_value: int) -> tuple:
    return _ins(_RET_K, _RET_ERRNO | errno_value)


def _abi_section(abi: str) -> list:
    """Filter body for one ABI, entered with nothing loaded."""
    numbers = SYSCALL_NUMBERS[abi]
    body = [_ins(_LD_W_ABS, _OFFSET_NR)]
    if abi == "x86_64":  # x32 ABI: same arch value, numbers with bit 30 set
        body += [_ins(_JGE_K, X32_SYSCALL_BIT, jt=0, jf=1), _deny(errno.EPERM)]
    for name in DENIED_SYSCALLS:
        if name in numbers:
            body += [_ins(_JEQ_K, numbers[name], jt=0, jf=1), _deny(errno.EPERM)]
    # clone3 passes flags in memory the filter cannot read: ENOSYS makes
    # libc fall back to clone(), whose flags are checked below.
    body += [_ins(_JEQ_K, numbers["clone3"], jt=0, jf=1), _deny(errno.ENOSYS)]
    body += [
        _ins(_JEQ_K, numbers["clone"], jt=0, jf=3),
        _ins(_LD_W_ABS, _OFFSET_ARG0_LOW),  # the kernel uses the low 32 bits
        _ins(_JSET_K, CLONE_NAMESPACE_FLAGS, jt=0, jf=1),
        _deny(errno.EPERM),
        _ins(_RET_K, _RET_ALLOW),
    ]
    return body


def build_filter(abis) -> list:
    """Instructions: dispatch on arch, one section per ABI, unknown arch -> kill."""
    sections = [_abi_section(abi) for abi in abis]
    program = [_ins(_LD_W_ABS, _OFFSET_ARCH)]
    start = 1 + 2 * len(abis) + 1  # index of the first section
    for abi, section in zip(abis, sections):
        jump_from = len(program) + 2  # the ja instruction's successor
        program += [_ins(_JEQ_K, AUDIT_ARCH[abi], jt=0, jf=1),
                    _ins(_JMP_JA, start - jump_from)]
        start += len(section)
    program.append(_ins(_RET_K, _RET_KILL_PROCESS))
    for section in sections:
        program += section
    return program


def pack_filter(program) -> bytes:
    return b"".join(struct.pack("=HBBI", code, jt, jf, k) for code, jt, jf, k in program)


def machine_abis() -> tuple:
    machine = os.uname().machine
    try:
        return ABIS_OF_MACHINE[machine]
    except KeyError:
        raise OSError(errno.ENOTSUP, f"no seccomp syscall table for {machine}") from None


def seccomp_program() -> bytes:
    """The packed filter for this machine's ABIs (kiwi-exec installs it from these bytes)."""
    return pack_filter(build_filter(machine_abis()))


def install_seccomp() -> None:
    """Install the filter for this machine's ABIs. Needs CAP_SYS_ADMIN (or no_new_privs)."""
    sc.seccomp_set_filter(seccomp_program())


# -- masked /proc and /sys paths -------------------------------------------

MASKED_FILES = (
    "proc/kcore", "proc/keys", "proc/sysrq-trigger", "proc/timer_list",
    "proc/sched_debug", "proc/latency_stats", "proc/kallsyms",
)
MASKED_DIRECTORIES = ("proc/acpi", "proc/scsi", "sys/firmware")
READ_ONLY_PATHS = ("proc/sys", "proc/bus", "proc/fs", "proc/irq")

_MASK_MOUNT_FLAGS = sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC


def mask_proc_paths(root="/") -> None:
    """Hide kernel interfaces under root (after /proc and /sys are mounted there)."""
    base = Path(root)
    for relative in MASKED_FILES:
        _mask_file(base / relative)
    for relative in MASKED_DIRECTORIES:
        _mask_directory(base / relative)
    for relative in READ_ONLY_PATHS:
        _bind_read_only(base / relative)


def _mask_file(path: Path) -> None:
    if path.exists():  # entries depend on the kernel config
        sc.mount("/dev/null", path, None, sc.MS_BIND)


def _mask_directory(path: Path) -> None:
    if path.is_dir():
        sc.mount("tmpfs", path, "tmpfs", _MASK_MOUNT_FLAGS, "size=0,mode=0555")


def _bind_read_only(path: Path) -> None:
    if not path.exists():
        return
    sc.mount(path, path, None, sc.MS_BIND | sc.MS_REC)
    # a bind mount only takes MS_RDONLY on a remount of itself
    sc.mount(None, path, None, sc.MS_BIND | sc.MS_REMOUNT | _MASK_MOUNT_FLAGS)


# -- file descriptors and init ---------------------------------------------

def close_fds_except_stdio(keep=()) -> None:
    """Close every fd above 2 except those in keep (e.g. the init memfd)."""
    low = 3
    for fd in sorted(fd for fd in set(keep) if fd >= low):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, _max_fd())


def _max_fd() -> int:
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (OSError, ValueError):
        return 1 << 20


INIT_NAME = "kiwi-init"
EXEC_NAME = "kiwi-exec"


def helper_binary_path(name: str) -> Path:
    """A static helper (kiwi-init, kiwi-exec) beside this module; in a PyInstaller build also under _MEIPASS."""
    candidates = [Path(__file__).resolve().parent / name]
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        candidates += [Path(bundle) / "kiwi" / name, Path(bundle) / name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(errno.ENOENT, f"{name} not found (looked in "
                            f"{', '.join(map(str, candidates))}); run ./build.sh")


def helper_memfd(name: str) -> int:
    """A sealed, close-on-exec memfd holding a static helper.

    Executing from the memfd means nothing in the container ever sees or can
    rewrite a host file of Kiwi (the runc CVE-2019-5736 class of attack): the
    /proc/<pid>/exe of the helper is the memfd, and its seals refuse writes.
    """
    data = helper_binary_path(name).read_bytes()
    fd = sc.memfd_create(name, sc.MFD_CLOEXEC | sc.MFD_ALLOW_SEALING)
    try:
        _write_all(fd, data)
        sc.add_seals(fd, sc.F_SEAL_SEAL | sc.F_SEAL_SHRINK | sc.F_SEAL_GROW | sc.F_SEAL_WRITE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def init_binary_path() -> Path:
    return helper_binary_path(INIT_NAME)


def init_memfd() -> int:
    return helper_memfd(INIT_NAME)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def exec_init(memfd: int, env=None) -> None:
    """Replace this process with kiwi-init (returns only by raising OSError)."""
    if env is None:
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    # The mask survives exec: a SIGTERM arriving before kiwi-init's own
    # sigprocmask stays pending instead of being dropped (PID 1 of a namespace
    # ignores default-action signals).
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        sc.execveat(memfd, [INIT_NAME], env)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
