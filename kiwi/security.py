"""Confinement of the container's processes.

Order of a start (runtime.Starter), each step needing what the next removes:

    0. fd = init_memfd()         in kiwi, before forking: the binary is a host file
    stage 1: join the container's cgroup, unshare the namespaces, fork
    stage 2 (PID 1, still kiwi):
       ... mount state + overlay, /proc, /sys, /run, /tmp, /dev, pivot_root ...
    1. mask_proc_paths()         needs mount() and CAP_SYS_ADMIN
       ... hostname, /etc files, stdio to /dev/null, "ready" to kiwi ...
    2. close_fds_except_stdio(keep=(fd, status pipe))
    3. install_seccomp()         while CAP_SYS_ADMIN is still held: without it the
                                 kernel demands no_new_privs, which would break
                                 setuid programs (su, ping) in the container
    4. drop_capabilities()       capset/prctl are not filtered, so this still works
    5. exec_init(fd)             kiwi-init from the sealed memfd
    6. (kiwi, host side) cgroup.restrict_devices(rootfs.ALLOWED_DEVICES): not
       earlier, since stage 2 opens the storage's loop device to mount it; not
       later, since runtime.json, which `attach` needs, is written after it.

Commands run in a running container by `kiwi attach` and sessions enter it
through kiwi-exec (cffi_build/exec.c), a static helper started from a sealed
memfd like kiwi-init: it joins the cgroup (so the device allowlist holds for it
too) and the namespaces, forks into the PID namespace, and the child does steps
2, 3 and 4 itself, in that order (with the program from seccomp_program() and
the mask of KEPT_CAPABILITIES) before it executes the user's command.

Steps 1 to 5 run in the forked PID 1; kiwi itself only prepares what they use
(init_memfd, helper_memfd, seccomp_program) and attaches the v2 device program
(attach_device_program). Nothing here prints.
"""

import errno
import os
import signal
import stat
import struct
from pathlib import Path

from kiwi import syscalls as sc
from kiwi.enter import (  # DEFAULT_PATH: the PATH of an init and of every command in it
    DEFAULT_PATH,
    EXEC_NAME,  # noqa: F401 - runtime names the helper through security
    find_helper,
    helper_candidates,
)

# -- capabilities ---------------------------------------------------------

CAPABILITIES = {
    "CHOWN": 0,
    "DAC_OVERRIDE": 1,
    "DAC_READ_SEARCH": 2,
    "FOWNER": 3,
    "FSETID": 4,
    "KILL": 5,
    "SETGID": 6,
    "SETUID": 7,
    "SETPCAP": 8,
    "LINUX_IMMUTABLE": 9,
    "NET_BIND_SERVICE": 10,
    "NET_BROADCAST": 11,
    "NET_ADMIN": 12,
    "NET_RAW": 13,
    "IPC_LOCK": 14,
    "IPC_OWNER": 15,
    "SYS_MODULE": 16,
    "SYS_RAWIO": 17,
    "SYS_CHROOT": 18,
    "SYS_PTRACE": 19,
    "SYS_PACCT": 20,
    "SYS_ADMIN": 21,
    "SYS_BOOT": 22,
    "SYS_NICE": 23,
    "SYS_RESOURCE": 24,
    "SYS_TIME": 25,
    "SYS_TTY_CONFIG": 26,
    "MKNOD": 27,
    "LEASE": 28,
    "AUDIT_WRITE": 29,
    "AUDIT_CONTROL": 30,
    "SETFCAP": 31,
    "MAC_OVERRIDE": 32,
    "MAC_ADMIN": 33,
    "SYSLOG": 34,
    "WAKE_ALARM": 35,
    "BLOCK_SUSPEND": 36,
    "AUDIT_READ": 37,
    "PERFMON": 38,
    "BPF": 39,
    "CHECKPOINT_RESTORE": 40,
}

# Docker's default set without MKNOD (/dev is prepared by the runtime).
KEPT_CAPABILITIES = (
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
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
    "armv7l": ("arm",),
    "armv8l": ("arm",),
    "armv6l": ("arm",),
}

DENIED_SYSCALLS = (
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "open_by_handle_at",
    "name_to_handle_at",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "mount",
    "umount2",
    "pivot_root",
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    "settimeofday",
    "clock_settime",
    "clock_settime64",
    "clock_adjtime",
    "clock_adjtime64",
    "adjtimex",
    "iopl",
    "ioperm",
    "userfaultfd",
    "lookup_dcookie",
    "quotactl",
    "quotactl_fd",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "open_tree_attr",
    "mount_setattr",
    "unshare",
    "setns",
    # What Docker's default profile also refuses a container without the
    # matching capability: kernel log (readable when dmesg_restrict=0), io_uring
    # (bypasses this filter: its operations are no syscalls), NUMA placement
    # (CAP_SYS_NICE), fd theft and kernel pointer order (CAP_SYS_PTRACE), fs-wide
    # notification, tty hangup, and obsolete interfaces.
    "syslog",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "mbind",
    "get_mempolicy",
    "set_mempolicy",
    "set_mempolicy_home_node",
    "migrate_pages",
    "move_pages",
    "kcmp",
    "pidfd_getfd",
    "process_madvise",
    "fanotify_init",
    "vhangup",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    # arm OABI's multiplexer: it would carry socket() past the family check below.
    "socketcall",
)

# Numbers of only the syscalls the filter names. 424+ are shared by all ABIs.
_COMMON_NEW = {
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "clone3": 435,
    "pidfd_getfd": 438,
    "process_madvise": 440,
    "mount_setattr": 442,
    "quotactl_fd": 443,
    "set_mempolicy_home_node": 450,
    "open_tree_attr": 467,
}
SYSCALL_NUMBERS = {
    "x86_64": {
        "socket": 41,
        "clone": 56,
        "syslog": 103,
        "uselib": 134,
        "personality": 135,
        "ustat": 136,
        "sysfs": 139,
        "vhangup": 153,
        "pivot_root": 155,
        "_sysctl": 156,
        "adjtimex": 159,
        "acct": 163,
        "settimeofday": 164,
        "mount": 165,
        "umount2": 166,
        "swapon": 167,
        "swapoff": 168,
        "reboot": 169,
        "iopl": 172,
        "ioperm": 173,
        "init_module": 175,
        "delete_module": 176,
        "quotactl": 179,
        "lookup_dcookie": 212,
        "clock_settime": 227,
        "mbind": 237,
        "set_mempolicy": 238,
        "get_mempolicy": 239,
        "kexec_load": 246,
        "add_key": 248,
        "request_key": 249,
        "keyctl": 250,
        "migrate_pages": 256,
        "unshare": 272,
        "move_pages": 279,
        "perf_event_open": 298,
        "fanotify_init": 300,
        "name_to_handle_at": 303,
        "open_by_handle_at": 304,
        "clock_adjtime": 305,
        "setns": 308,
        "kcmp": 312,
        "finit_module": 313,
        "kexec_file_load": 320,
        "bpf": 321,
        "userfaultfd": 323,
        **_COMMON_NEW,
    },
    "aarch64": {
        "lookup_dcookie": 18,
        "umount2": 39,
        "mount": 40,
        "pivot_root": 41,
        "vhangup": 58,
        "quotactl": 60,
        "acct": 89,
        "personality": 92,
        "unshare": 97,
        "kexec_load": 104,
        "init_module": 105,
        "delete_module": 106,
        "clock_settime": 112,
        "syslog": 116,
        "reboot": 142,
        "settimeofday": 170,
        "adjtimex": 171,
        "socket": 198,
        "add_key": 217,
        "request_key": 218,
        "keyctl": 219,
        "clone": 220,
        "swapon": 224,
        "swapoff": 225,
        "mbind": 235,
        "get_mempolicy": 236,
        "set_mempolicy": 237,
        "migrate_pages": 238,
        "move_pages": 239,
        "perf_event_open": 241,
        "fanotify_init": 262,
        "name_to_handle_at": 264,
        "open_by_handle_at": 265,
        "clock_adjtime": 266,
        "setns": 268,
        "kcmp": 272,
        "finit_module": 273,
        "bpf": 280,
        "userfaultfd": 282,
        "kexec_file_load": 294,
        **_COMMON_NEW,
    },
    "arm": {  # EABI
        "mount": 21,
        "acct": 51,
        "umount2": 52,
        "ustat": 62,
        "settimeofday": 79,
        "uselib": 86,
        "swapon": 87,
        "reboot": 88,
        "socketcall": 102,
        "syslog": 103,
        "vhangup": 111,
        "swapoff": 115,
        "clone": 120,
        "adjtimex": 124,
        "init_module": 128,
        "delete_module": 129,
        "quotactl": 131,
        "sysfs": 135,
        "personality": 136,
        "_sysctl": 149,
        "pivot_root": 218,
        "lookup_dcookie": 249,
        "clock_settime": 262,
        "socket": 281,
        "add_key": 309,
        "request_key": 310,
        "keyctl": 311,
        "mbind": 319,
        "get_mempolicy": 320,
        "set_mempolicy": 321,
        "unshare": 337,
        "move_pages": 344,
        "kexec_load": 347,
        "perf_event_open": 364,
        "fanotify_init": 367,
        "name_to_handle_at": 370,
        "open_by_handle_at": 371,
        "clock_adjtime": 372,
        "setns": 375,
        "kcmp": 378,
        "finit_module": 379,
        "bpf": 386,
        "userfaultfd": 388,
        "migrate_pages": 400,
        "kexec_file_load": 401,
        "clock_settime64": 404,
        "clock_adjtime64": 405,
        **_COMMON_NEW,
    },
}

# Numbers from here on are newer than this table (file_setattr, 469, came in
# Linux 6.17): ENOSYS, so a new kernel interface is never open by default and
# libc falls back as on an older kernel. ARM's private calls (set_tls,
# cacheflush) live at 0x0f0000 and above and stay allowed.
FIRST_UNKNOWN_SYSCALL = 470
ARM_PRIVATE_SYSCALLS = 0x0F0000

# clone() may not create namespaces either (unshare/setns are denied already).
CLONE_NAMESPACE_FLAGS = (
    0x00020000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x02000000
)
X32_SYSCALL_BIT = 0x40000000

# personality(): what Docker allows - PER_LINUX, PER_LINUX32, UNAME26 with
# either, and 0xffffffff (query). Everything else, READ_IMPLIES_EXEC and
# ADDR_NO_RANDOMIZE above all, would weaken the process's memory protections.
ALLOWED_PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
# socket(): AF_ALG (kernel crypto, a steady source of kernel bugs) and
# AF_VSOCK (talks to the hypervisor, not namespaced), as Docker.
DENIED_SOCKET_FAMILIES = (38, 40)

# classic BPF opcodes and struct seccomp_data offsets (little endian)
_LD_W_ABS, _JMP_JA, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x05, 0x15, 0x35, 0x45, 0x06
_OFFSET_NR, _OFFSET_ARCH, _OFFSET_ARG0_LOW = 0, 4, 16

_RET_ALLOW = 0x7FFF0000
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_RET_USER_NOTIF = 0x7FC00000

# sysinfo(2) in the native ABI of each machine: with a handler (kiwi-lxfs), the filter
# hands it over (user notification) and the container's figures come back. Compat ABIs
# (arm on aarch64) have another struct layout and keep the host's figures.
SYSINFO_NUMBERS = {"x86_64": 99, "aarch64": 179, "arm": 116}


def _ins(code: int, k: int = 0, jt: int = 0, jf: int = 0) -> tuple:
    return (code, jt, jf, k)


def _deny(errno_value: int) -> tuple:
    return _ins(_RET_K, _RET_ERRNO | errno_value)


_ALLOW = _ins(_RET_K, _RET_ALLOW)


def _when_nr(number: int, block: list) -> list:
    """block (which ends in a return) runs for syscall `number` only; nr is loaded."""
    return [_ins(_JEQ_K, number, jt=0, jf=len(block))] + block


def _arg0_in(values, then: tuple, otherwise: tuple) -> list:
    """Return `then` when the low 32 bits of arg0 (all the kernel reads of an
    int argument) equal one of values, else `otherwise`."""
    block = [_ins(_LD_W_ABS, _OFFSET_ARG0_LOW)]
    for index, value in enumerate(values):
        block.append(_ins(_JEQ_K, value, jt=len(values) - index, jf=0))
    return block + [otherwise, then]


def _below(limit: int, block: list) -> list:
    """block runs only when nr < limit; nr is loaded."""
    return [_ins(_JGE_K, limit, jt=len(block), jf=0)] + block


def _when_nr_at_least(limit: int, verdict: tuple) -> list:
    return [_ins(_JGE_K, limit, jt=0, jf=1), verdict]


def _abi_section(abi: str, notify_sysinfo: bool = False) -> list:
    """Filter body for one ABI, entered with nothing loaded."""
    numbers = SYSCALL_NUMBERS[abi]
    body = [_ins(_LD_W_ABS, _OFFSET_NR)]
    if notify_sysinfo:
        body += _when_nr(SYSINFO_NUMBERS[abi], [_ins(_RET_K, _RET_USER_NOTIF)])
    if abi == "x86_64":  # x32 ABI: same arch value, numbers with bit 30 set
        body += _when_nr_at_least(X32_SYSCALL_BIT, _deny(errno.EPERM))
    if abi == "arm":
        body += _below(ARM_PRIVATE_SYSCALLS, _when_nr_at_least(FIRST_UNKNOWN_SYSCALL, _deny(errno.ENOSYS)))
    else:
        body += _when_nr_at_least(FIRST_UNKNOWN_SYSCALL, _deny(errno.ENOSYS))
    for name in DENIED_SYSCALLS:
        if name in numbers:
            body += _when_nr(numbers[name], [_deny(errno.EPERM)])
    # clone3 passes flags in memory the filter cannot read: ENOSYS makes
    # libc fall back to clone(), whose flags are checked below.
    body += _when_nr(numbers["clone3"], [_deny(errno.ENOSYS)])
    # Each argument check loads arg0 over nr, so each ends in a return.
    body += _when_nr(
        numbers["personality"], _arg0_in(ALLOWED_PERSONALITIES, then=_ALLOW, otherwise=_deny(errno.EPERM))
    )
    body += _when_nr(
        numbers["socket"], _arg0_in(DENIED_SOCKET_FAMILIES, then=_deny(errno.EPERM), otherwise=_ALLOW)
    )
    body += _when_nr(
        numbers["clone"],
        [
            _ins(_LD_W_ABS, _OFFSET_ARG0_LOW),  # the kernel uses the low 32 bits
            _ins(_JSET_K, CLONE_NAMESPACE_FLAGS, jt=0, jf=1),
            _deny(errno.EPERM),
            _ALLOW,
        ],
    )
    return body + [_ALLOW]


def build_filter(abis, notify_sysinfo: bool = False) -> list:
    """Instructions: dispatch on arch, one section per ABI, unknown arch -> kill.
    notify_sysinfo: the native ABI's (the first) sysinfo goes to the filter's listener."""
    sections = [_abi_section(abi, notify_sysinfo and index == 0) for index, abi in enumerate(abis)]
    program = [_ins(_LD_W_ABS, _OFFSET_ARCH)]
    start = 1 + 2 * len(abis) + 1  # index of the first section
    for abi, section in zip(abis, sections, strict=True):
        jump_from = len(program) + 2  # the ja instruction's successor
        program += [_ins(_JEQ_K, AUDIT_ARCH[abi], jt=0, jf=1), _ins(_JMP_JA, start - jump_from)]
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


def seccomp_program(notify_sysinfo: bool = False) -> bytes:
    """The packed filter for this machine's ABIs (kiwi-exec installs it from these bytes)."""
    return pack_filter(build_filter(machine_abis(), notify_sysinfo))


def install_seccomp() -> None:
    """Install the filter for this machine's ABIs. Needs CAP_SYS_ADMIN (or no_new_privs)."""
    sc.seccomp_set_filter(seccomp_program())


# -- device allowlist for cgroup v2 ------------------------------------------
# An eBPF program of type BPF_PROG_TYPE_CGROUP_DEVICE, run by the kernel on
# every open and mknod of a device node in the cgroup. Its context, struct
# bpf_cgroup_dev_ctx, is {u32 access << 16 | type, u32 major, u32 minor};
# returning 1 allows. Rules are (type "c"/"b", major, minor or None for any),
# each with every access; the program allows exactly those.

_DEVICE_TYPES = {"b": 1, "c": 2}  # BPF_DEVCG_DEV_BLOCK, BPF_DEVCG_DEV_CHAR
_BPF_LDX_W, _BPF_AND_K, _BPF_MOV_K, _BPF_JNE_K, _BPF_EXIT = 0x61, 0x57, 0xB7, 0x55, 0x95
_R0, _R1, _R2, _R3, _R4 = range(5)


def _bpf(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> tuple:
    return (code, dst, src, off, imm)


def device_program(rules) -> list:
    """eBPF instructions (code, dst, src, off, imm) allowing only the devices in rules."""
    program = [
        _bpf(_BPF_LDX_W, _R2, _R1, 0),
        _bpf(_BPF_AND_K, _R2, imm=0xFFFF),  # the device type; access is not restricted
        _bpf(_BPF_LDX_W, _R3, _R1, 4),  # major
        _bpf(_BPF_LDX_W, _R4, _R1, 8),  # minor
    ]
    for kind, major, minor in rules:
        checks = [(_R2, _DEVICE_TYPES[kind]), (_R3, major)]
        if minor is not None:
            checks.append((_R4, minor))
        size = len(checks) + 2  # the checks, r0 = 1, exit
        for index, (register, value) in enumerate(checks):
            program.append(_bpf(_BPF_JNE_K, register, off=size - index - 1, imm=value))
        program += [_bpf(_BPF_MOV_K, _R0, imm=1), _bpf(_BPF_EXIT)]
    return program + [_bpf(_BPF_MOV_K, _R0, imm=0), _bpf(_BPF_EXIT)]


def pack_device_program(program) -> bytes:
    """struct bpf_insn, little-endian layout (dst in the low nibble)."""
    return b"".join(
        struct.pack("<BBhi", code, dst | src << 4, off, imm) for code, dst, src, off, imm in program
    )


def attach_device_program(cgroup_dir, rules) -> None:
    """Load the allowlist and attach it to a v2 cgroup; it stays until the cgroup goes."""
    prog_fd = sc.bpf_prog_load(sc.BPF_PROG_TYPE_CGROUP_DEVICE, pack_device_program(device_program(rules)))
    try:
        dir_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            # ALLOW_MULTI: a device program of a parent cgroup (systemd's) keeps running too.
            sc.bpf_prog_attach(dir_fd, prog_fd, sc.BPF_CGROUP_DEVICE, sc.BPF_F_ALLOW_MULTI)
        finally:
            os.close(dir_fd)
    finally:
        os.close(prog_fd)


# -- masked /proc and /sys paths -------------------------------------------

# Docker's masked and read-only paths (moby daemon/pkg/oci/defaults.go), plus
# kallsyms, slabinfo (a kernel heap exploit's window) and the kpage* files
# (physical page state, a Rowhammer aid).
MASKED_FILES = (
    "proc/kcore",
    "proc/keys",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/latency_stats",
    "proc/interrupts",
    "proc/kallsyms",
    "proc/slabinfo",
    "proc/kpageflags",
    "proc/kpagecount",
    "proc/kpagecgroup",
)
MASKED_DIRECTORIES = (
    "proc/acpi",
    "proc/asound",
    "proc/scsi",
    "sys/firmware",
    "sys/devices/virtual/powercap",
)
MASKED_DIRECTORY_PATTERNS = ("sys/devices/system/cpu/cpu[0-9]*/thermal_throttle",)
READ_ONLY_PATHS = ("proc/sys", "proc/bus", "proc/fs", "proc/irq", "proc/sysrq-trigger")

_MASK_MOUNT_FLAGS = sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC


def mask_proc_paths(root="/") -> None:
    """Hide kernel interfaces under root (after /proc, /sys and /dev are mounted there):
    files behind root's own /dev/null (rootfs.mount_dev; never the host's, whose mount
    would show inside), folders behind empty read-only tmpfs.

    Each mount is tried on its path and a path this kernel does not have (ENOENT; for
    a directory mask, a file there: ENOTDIR) is skipped: no stat before each, no pathlib
    glob (stage 2 of every start runs this, issue 20)."""
    base = os.fspath(root).rstrip("/")
    null = f"{base}/dev/null"
    info = os.stat(null)  # checked: a missing source must not pass for a missing target
    if not stat.S_ISCHR(info.st_mode) or info.st_rdev != os.makedev(1, 3):
        raise OSError(errno.ENODEV, f"{null} is not the null device")
    for relative in MASKED_FILES:
        _mask_file(null, f"{base}/{relative}")
    for relative in MASKED_DIRECTORIES:
        _mask_directory(f"{base}/{relative}")
    for path in _cpu_thermal_directories(base):
        _mask_directory(path)
    for relative in READ_ONLY_PATHS:
        _bind_read_only(f"{base}/{relative}")


_ABSENT = (errno.ENOENT,)  # entries depend on the kernel config


def _cpu_thermal_directories(base: str) -> list[str]:
    """MASKED_DIRECTORY_PATTERNS' one pattern, sys/devices/system/cpu/cpu[0-9]*/thermal_throttle,
    as its glob matched it: every cpu<digit>... entry, in sorted order."""
    cpus = f"{base}/sys/devices/system/cpu"
    try:
        names = os.listdir(cpus)
    except (FileNotFoundError, NotADirectoryError):
        return []
    wanted = [name for name in names if len(name) > 3 and name.startswith("cpu") and name[3] in "0123456789"]
    return [f"{cpus}/{name}/thermal_throttle" for name in sorted(wanted)]


def _mask_file(null: str, path) -> None:
    try:
        sc.mount(null, path, None, sc.MS_BIND)
    except OSError as e:
        if e.errno not in _ABSENT:
            raise


def _mask_directory(path) -> None:
    try:
        sc.mount("tmpfs", path, "tmpfs", _MASK_MOUNT_FLAGS, "size=0,mode=0555")
    except OSError as e:
        if e.errno not in (*_ABSENT, errno.ENOTDIR):  # a file there is no directory to mask
            raise


def _bind_read_only(path) -> None:
    try:
        sc.mount(path, path, None, sc.MS_BIND | sc.MS_REC)
    except OSError as e:
        if e.errno in _ABSENT:
            return
        raise
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


def helper_binary_path(name: str) -> Path:
    """enter.find_helper, or FileNotFoundError saying where it looked."""
    found = find_helper(name)
    if found is None:
        raise FileNotFoundError(
            errno.ENOENT, f"{name} not found (looked in {', '.join(helper_candidates(name))}); run ./build.sh"
        )
    return Path(found)


def helper_memfd(name: str) -> int:
    """A sealed, close-on-exec memfd holding a static helper (enter.sealed_copy)."""
    from kiwi.enter import sealed_copy

    return sealed_copy(str(helper_binary_path(name)), name)


def init_binary_path() -> Path:
    return helper_binary_path(INIT_NAME)


def init_memfd() -> int:
    return helper_memfd(INIT_NAME)


def exec_init(memfd: int, env=None) -> None:
    """Replace this process with kiwi-init (returns only by raising OSError)."""
    if env is None:
        env = {"PATH": DEFAULT_PATH}
    # The mask survives exec: a SIGTERM arriving before kiwi-init's own
    # sigprocmask stays pending instead of being dropped (PID 1 of a namespace
    # ignores default-action signals).
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        sc.execveat(memfd, [INIT_NAME], env)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
