"""A kernel without pidfd_open (before 5.3), on this one: a seccomp filter makes the syscall
fail with ENOSYS, as an old kernel does, for this process and everything it starts.

    python no_pidfd.py <program> [args...]   runs the program under the filter

The filter is installed as root (CAP_SYS_ADMIN) without no_new_privs, so kiwi runs as it
would on such a kernel; a caller without that capability gets no_new_privs set first."""

from __future__ import annotations

import ctypes
import os
import sys

PIDFD_OPEN = 434  # the same number on every architecture (the common syscall table)
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
RET_ERRNO, RET_ALLOW = 0x00050000, 0x7FFF0000
LD_NR, JEQ, RET = (
    0x20,
    0x15,
    0x06,
)  # BPF_LD|BPF_W|BPF_ABS (seccomp_data.nr at 0), BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K


class SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint),
    ]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def refuse_pidfd_open(error: int = 38) -> None:
    """From now on pidfd_open(2) fails with error (ENOSYS, as an old kernel's; EPERM, as
    some seccomp profiles') here and in every child."""
    program = (SockFilter * 4)(
        SockFilter(LD_NR, 0, 0, 0),
        SockFilter(JEQ, 0, 1, PIDFD_OPEN),
        SockFilter(RET, 0, 0, RET_ERRNO | error),
        SockFilter(RET, 0, 0, RET_ALLOW),
    )
    fprog = SockFprog(len(program), program)
    libc = ctypes.CDLL(None, use_errno=True)
    if os.geteuid() != 0 and libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


if __name__ == "__main__":
    refuse_pidfd_open()
    os.execvp(sys.argv[1], sys.argv[1:])
