"""The cgroup v2 device allowlist program, checked without loading it: its
instructions run through a small eBPF interpreter on device contexts."""

import struct

import pytest

from kiwi import rootfs, security

BLOCK, CHAR = 1, 2
MKNOD, READ, WRITE = 1, 2, 4


def run_device_program(program, kind, major, minor, access=READ | WRITE):
    """Minimal eBPF interpreter for the opcodes the program uses."""
    context = struct.pack("<III", access << 16 | kind, major, minor)
    registers = [0] * 11
    registers[1] = "ctx"
    pc = 0
    for _ in range(len(program) + 1):  # the program only jumps forward
        code, dst, src, off, imm = program[pc]
        pc += 1
        if code == 0x61:  # r_dst = *(u32 *)(r_src + off)
            assert registers[src] == "ctx" and off in (0, 4, 8)
            registers[dst] = struct.unpack_from("<I", context, off)[0]
        elif code == 0x57:  # r_dst &= imm
            registers[dst] &= imm
        elif code == 0xB7:  # r_dst = imm
            registers[dst] = imm
        elif code == 0x55:  # if r_dst != imm goto pc + off
            assert off >= 0
            if registers[dst] != imm:
                pc += off
        elif code == 0x95:  # exit
            return registers[0]
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
    raise AssertionError("program did not exit")


PROGRAM = security.device_program(rootfs.ALLOWED_DEVICES)


@pytest.mark.parametrize(
    "major, minor", [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2), (136, 0), (136, 7), (136, 4095)]
)
def test_container_dev_nodes_are_allowed(major, minor):
    for access in (READ, WRITE, READ | WRITE, MKNOD):
        assert run_device_program(PROGRAM, CHAR, major, minor, access) == 1


@pytest.mark.parametrize(
    "kind, major, minor",
    [
        (CHAR, 1, 1),  # /dev/mem
        (CHAR, 1, 2),  # /dev/kmem
        (CHAR, 1, 4),  # /dev/port
        (CHAR, 1, 11),  # /dev/kmsg
        (CHAR, 5, 1),  # the host's /dev/console
        (CHAR, 4, 0),  # tty0
        (CHAR, 10, 237),  # loop-control
        (CHAR, 10, 200),  # net/tun
        (CHAR, 137, 0),  # a pty beyond major 136
        (BLOCK, 8, 0),  # sda
        (BLOCK, 7, 0),  # loop0
        (BLOCK, 1, 3),  # block device with /dev/null's numbers
        (BLOCK, 136, 0),
    ],
)
def test_everything_else_is_denied(kind, major, minor):
    for access in (READ, WRITE, MKNOD):
        assert run_device_program(PROGRAM, kind, major, minor, access) == 0


def test_allowed_devices_match_the_dev_nodes_made():
    made = {("c", major, minor) for _, major, minor, _ in rootfs.DEV_NODES}
    assert set(rootfs.ALLOWED_DEVICES) == made | {("c", 5, 2), ("c", 136, None)}


def test_empty_rules_deny_all():
    assert run_device_program(security.device_program([]), CHAR, 1, 3) == 0


def test_packed_layout():
    packed = security.pack_device_program(PROGRAM)
    assert len(packed) == 8 * len(PROGRAM)
    code, regs, off, imm = struct.unpack_from("<BBhi", packed, 0)
    assert (code, regs, off, imm) == (0x61, 0x12, 0, 0)  # r2 = *(u32 *)(r1 + 0): src r1, dst r2
    assert packed[-8] == 0x95  # exit
