"""Seccomp filter construction, checked without installing it: syscall tables
against the kernel headers and the program run through a small classic-BPF
interpreter."""

import errno
import re
import struct
from pathlib import Path

import pytest

from kiwi import security

X86_64_HEADERS = ("/usr/include/x86_64-linux-gnu/asm/unistd_64.h", "/usr/include/asm/unistd_64.h")
GENERIC_HEADER = "/usr/include/asm-generic/unistd.h"  # the aarch64 table

ALLOW = 0x7FFF0000
KILL_PROCESS = 0x80000000
ERRNO = 0x00050000
CLONE_NEWUSER, CLONE_NEWNET, SIGCHLD = 0x10000000, 0x40000000, 17
CLONE_THREAD_FLAGS = 0x003D0F00  # what pthread_create passes


def header_numbers(path: str) -> dict:
    text = Path(path).read_text()
    return {
        name: int(number)
        for name, number in re.findall(r"#define __NR_(\w+)\s+(\d+)\s*$", text, re.MULTILINE)
    }


def first_existing(paths) -> str:
    for path in paths:
        if Path(path).exists():
            return path
    raise AssertionError(f"none of {paths} exists: install linux-libc-dev")


@pytest.mark.parametrize(
    "abi, header",
    [
        ("x86_64", first_existing(X86_64_HEADERS)),
        ("aarch64", GENERIC_HEADER),
    ],
)
def test_table_matches_kernel_header(abi, header):
    expected = header_numbers(header)
    newest = max(expected.values())
    for name, number in security.SYSCALL_NUMBERS[abi].items():
        if name not in expected and number > newest:
            continue  # newer than the installed headers (open_tree_attr on Debian 12)
        assert expected.get(name) == number, f"{abi} {name}"


def test_x86_64_table_has_every_denied_syscall():
    table = security.SYSCALL_NUMBERS["x86_64"]
    missing = {name for name in security.DENIED_SYSCALLS if name not in table}
    assert missing == {"clock_settime64", "clock_adjtime64", "socketcall"}  # 32-bit ABIs only


def test_aarch64_and_arm_miss_only_what_they_lack():
    aarch64 = security.SYSCALL_NUMBERS["aarch64"]
    arm = security.SYSCALL_NUMBERS["arm"]
    denied = set(security.DENIED_SYSCALLS)
    assert denied - set(aarch64) == {
        "iopl",
        "ioperm",
        "clock_settime64",
        "clock_adjtime64",
        "uselib",
        "ustat",
        "sysfs",
        "_sysctl",
        "socketcall",
    }  # never on arm64
    assert denied - set(arm) == {"iopl", "ioperm"}  # EABI has neither


def test_arm_numbers_are_distinct():
    for abi, table in security.SYSCALL_NUMBERS.items():
        assert len(set(table.values())) == len(table), abi


def run_filter(program, nr, arch, arg0=0):
    """Minimal classic-BPF interpreter for the opcodes the filter uses."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    pc, accumulator = 0, 0
    for _ in range(len(program) + 1):  # cBPF only jumps forward
        code, jt, jf, k = program[pc]
        if code == 0x20:  # ld [k]
            accumulator = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code == 0x05:  # ja
            pc += 1 + k
        elif code in (0x15, 0x35, 0x45):  # jeq / jge / jset
            taken = {0x15: accumulator == k, 0x35: accumulator >= k, 0x45: bool(accumulator & k)}[code]
            pc += 1 + (jt if taken else jf)
        elif code == 0x06:  # ret
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
    raise AssertionError("program did not return")


def filter_for(abis):
    return security.build_filter(abis)


def test_program_is_well_formed():
    for abis in security.ABIS_OF_MACHINE.values():
        program = filter_for(abis)
        assert len(program) <= 4096
        assert program[-1][0] == 0x06
        for index, (code, jt, jf, k) in enumerate(program):
            if code & 0x07 != 0x05:  # only jumps have targets
                continue
            target = index + 1 + (k if code == 0x05 else max(jt, jf))
            assert target < len(program)
        assert len(security.pack_filter(program)) == 8 * len(program)


X86 = security.AUDIT_ARCH["x86_64"]
AARCH64 = security.AUDIT_ARCH["aarch64"]
ARM = security.AUDIT_ARCH["arm"]
I386 = 0x40000003


@pytest.mark.parametrize("name", security.DENIED_SYSCALLS)
def test_denied_syscalls_get_eperm_on_x86_64(name):
    table = security.SYSCALL_NUMBERS["x86_64"]
    if name in table:
        assert run_filter(filter_for(("x86_64",)), table[name], X86) == ERRNO | errno.EPERM


@pytest.mark.parametrize("abi, arch", [("aarch64", AARCH64), ("arm", ARM)])
def test_both_arm_abis_are_filtered_on_aarch64(abi, arch):
    program = filter_for(("aarch64", "arm"))
    table = security.SYSCALL_NUMBERS[abi]
    for name in security.DENIED_SYSCALLS:
        if name in table:
            assert run_filter(program, table[name], arch) == ERRNO | errno.EPERM, name
    assert run_filter(program, 63, arch) == ALLOW  # read on aarch64, dup2 on arm


def test_ordinary_syscalls_are_allowed():
    program = filter_for(("x86_64",))
    for nr in (0, 1, 2, 39, 57, 59, 60, 231, 257):  # read write open getpid fork execve ...
        assert run_filter(program, nr, X86) == ALLOW


def test_foreign_architecture_is_killed():
    assert run_filter(filter_for(("x86_64",)), 0, I386) == KILL_PROCESS
    assert run_filter(filter_for(("x86_64",)), 0, AARCH64) == KILL_PROCESS
    assert run_filter(filter_for(("aarch64", "arm")), 0, X86) == KILL_PROCESS


def test_x32_abi_is_denied():
    assert run_filter(filter_for(("x86_64",)), 0x40000000 | 0, X86) == ERRNO | errno.EPERM
    assert run_filter(filter_for(("x86_64",)), 0x40000000 | 59, X86) == ERRNO | errno.EPERM


def test_clone3_reports_enosys_for_libc_fallback():
    assert run_filter(filter_for(("x86_64",)), 435, X86) == ERRNO | errno.ENOSYS


@pytest.mark.parametrize(
    "flags, verdict",
    [
        (SIGCHLD, ALLOW),
        (CLONE_THREAD_FLAGS, ALLOW),
        (CLONE_NEWUSER | SIGCHLD, ERRNO | errno.EPERM),
        (CLONE_NEWNET, ERRNO | errno.EPERM),
        ((1 << 32) | SIGCHLD, ALLOW),  # high bits are ignored by the kernel too
    ],
)
def test_clone_namespace_flags(flags, verdict):
    assert run_filter(filter_for(("x86_64",)), 56, X86, arg0=flags) == verdict


def test_capability_mask_of_kept_set():
    mask = security.capability_mask(security.KEPT_CAPABILITIES)
    docker_default = 0xA80425FB
    assert mask == docker_default & ~(1 << security.CAPABILITIES["MKNOD"])


ABI_ARCHES = [("x86_64", X86), ("aarch64", AARCH64), ("arm", ARM)]
FULL_FILTER = {"x86_64": ("x86_64",), "aarch64": ("aarch64", "arm"), "arm": ("aarch64", "arm")}


@pytest.mark.parametrize("abi, arch", ABI_ARCHES)
def test_io_uring_is_denied_on_every_abi(abi, arch):
    program = filter_for(FULL_FILTER[abi])
    for nr in (425, 426, 427):  # io_uring_setup, io_uring_enter, io_uring_register
        assert run_filter(program, nr, arch) == ERRNO | errno.EPERM


READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE, PER_BSD = 0x0400000, 0x0040000, 0x6


@pytest.mark.parametrize("abi, arch", ABI_ARCHES)
@pytest.mark.parametrize(
    "persona, verdict",
    [
        (0x0, ALLOW),
        (0x8, ALLOW),
        (0x20000, ALLOW),
        (0x20008, ALLOW),
        (0xFFFFFFFF, ALLOW),
        (READ_IMPLIES_EXEC, ERRNO | errno.EPERM),
        (ADDR_NO_RANDOMIZE, ERRNO | errno.EPERM),
        (ADDR_NO_RANDOMIZE | 0x8, ERRNO | errno.EPERM),
        (PER_BSD, ERRNO | errno.EPERM),
        ((1 << 32) | READ_IMPLIES_EXEC, ERRNO | errno.EPERM),  # the kernel takes an unsigned int
        ((1 << 32) | 0x8, ALLOW),
    ],
)
def test_personality_only_takes_what_docker_allows(abi, arch, persona, verdict):
    nr = security.SYSCALL_NUMBERS[abi]["personality"]
    assert run_filter(filter_for(FULL_FILTER[abi]), nr, arch, arg0=persona) == verdict


@pytest.mark.parametrize("abi, arch", ABI_ARCHES)
@pytest.mark.parametrize(
    "family, verdict",
    [
        (1, ALLOW),
        (2, ALLOW),
        (10, ALLOW),
        (16, ALLOW),
        (17, ALLOW),
        (39, ALLOW),
        (41, ALLOW),
        (38, ERRNO | errno.EPERM),  # AF_ALG
        (40, ERRNO | errno.EPERM),  # AF_VSOCK
        ((1 << 32) | 38, ERRNO | errno.EPERM),
    ],
)
def test_socket_families(abi, arch, family, verdict):
    nr = security.SYSCALL_NUMBERS[abi]["socket"]
    assert run_filter(filter_for(FULL_FILTER[abi]), nr, arch, arg0=family) == verdict


@pytest.mark.parametrize("abi, arch", ABI_ARCHES)
def test_syscalls_newer_than_the_table_get_enosys(abi, arch):
    program = filter_for(FULL_FILTER[abi])
    assert run_filter(program, security.FIRST_UNKNOWN_SYSCALL - 1, arch) == ALLOW  # file_setattr
    for nr in (security.FIRST_UNKNOWN_SYSCALL, 471, 511, 0x7FFF):
        assert run_filter(program, nr, arch) == ERRNO | errno.ENOSYS, nr


def test_arm_private_syscalls_stay_allowed():
    program = filter_for(("aarch64", "arm"))
    for nr in (0x0F0001, 0x0F0002, 0x0F0005):  # breakpoint, cacheflush, set_tls
        assert run_filter(program, nr, ARM) == ALLOW
    assert run_filter(program, 0x0F0002, AARCH64) == ERRNO | errno.ENOSYS


@pytest.mark.parametrize("abi, arch", ABI_ARCHES)
def test_docker_capability_gated_syscalls_are_denied(abi, arch):
    """What Docker's profile refuses without CAP_SYSLOG, CAP_SYS_NICE, CAP_SYS_PTRACE, ..."""
    table = security.SYSCALL_NUMBERS[abi]
    program = filter_for(FULL_FILTER[abi])
    for name in (
        "syslog",
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
        "open_tree_attr",
    ):
        assert run_filter(program, table[name], arch) == ERRNO | errno.EPERM, name


USER_NOTIF = 0x7FC00000


def test_sysinfo_goes_to_the_handler_in_the_native_abi_only():
    """kiwi-exec with a sysinfo handler (lxfs.c): the native ABI's sysinfo is a user
    notification; the compat ABI's (another struct layout) and everything else as before."""
    for abis, native in ((("x86_64",), X86), (("aarch64", "arm"), AARCH64)):
        plain, notify = security.build_filter(abis), security.build_filter(abis, notify_sysinfo=True)
        sysinfo = security.SYSINFO_NUMBERS[abis[0]]
        assert run_filter(notify, sysinfo, native) == USER_NOTIF
        assert run_filter(plain, sysinfo, native) == ALLOW
        for nr in (0, 1, security.SYSCALL_NUMBERS[abis[0]]["mount"]):
            assert run_filter(notify, nr, native) == run_filter(plain, nr, native)
    compat = security.build_filter(("aarch64", "arm"), notify_sysinfo=True)
    assert run_filter(compat, security.SYSINFO_NUMBERS["arm"], ARM) == ALLOW
