"""A container's writable state: an ext4 filesystem in a sparse state.img
(a hard storage limit), or a plain state/ folder when storage is 'host'.

Both hold upper/ and work/ for the overlay.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from .errors import KiwiError, os_error_message
from .fstree import remove_tree, walk_stats
from .sizes import format_size

GIB = 1 << 30
MIN_STORAGE = GIB
MAX_STORAGE = 16 << 40  # ext4's largest file with 4K blocks: state.img is one such file


def image_path(container_dir: Path) -> Path:
    return container_dir / "state.img"


def folder_path(container_dir: Path) -> Path:
    return container_dir / "state"


def run_tool(argv: list[str], what: str) -> str:
    import subprocess
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    except FileNotFoundError:
        raise KiwiError(f"{argv[0]} is missing; install e2fsprogs (apt-get install e2fsprogs)") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise KiwiError(f"{what} failed: {detail[-1] if detail else 'exit ' + str(done.returncode)}")
    return done.stdout


def create_state(container_dir: Path, size: int | None) -> None:
    """Lay out upper/ and work/ either in a fresh ext4 image or in a folder."""
    if size is None:
        for sub in ("upper", "work"):
            (folder_path(container_dir) / sub).mkdir(parents=True, mode=0o755)
        return
    with tempfile.TemporaryDirectory(dir=container_dir) as seed:
        for sub in ("upper", "work"):
            os.mkdir(os.path.join(seed, sub), 0o755)
        img = image_path(container_dir)
        size_image_file(img, size, create=True)
        run_tool(["mkfs.ext4", "-q", "-F", "-m", "0", "-L", "kiwi-state",
                  "-E", "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0",
                  "-d", seed, str(img)], "formatting the container's storage")


def filesystem_usage(device_or_image: Path | str) -> int:
    """Bytes in use inside an ext4 image (superblock counters; works mounted too)."""
    out = run_tool(["dumpe2fs", "-h", str(device_or_image)], "reading the storage usage")
    fields = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    block = int(fields["Block size"])
    used = int(fields["Block count"]) - int(fields["Free blocks"])
    return used * block


def folder_usage(path: Path) -> int | None:
    try:
        return sum(st.st_blocks * 512 for _fd, _name, st in walk_stats(path))
    except OSError:
        return None  # unreadable (not root): unknown


def superblock_usage(img: Path) -> int | None:
    """Bytes in use from the ext4 superblock itself: no tool to run, so `list` stays fast."""
    import struct
    try:
        with open(img, "rb") as f:
            f.seek(1024)
            sb = f.read(1024)
    except OSError:
        return None
    if len(sb) < 0x24C or struct.unpack_from("<H", sb, 0x38)[0] != 0xEF53:  # 0x248: the last field read
        return None
    blocks_lo, free_lo = struct.unpack_from("<I", sb, 4)[0], struct.unpack_from("<I", sb, 12)[0]
    log_block = struct.unpack_from("<I", sb, 24)[0]
    incompat = struct.unpack_from("<I", sb, 0x60)[0]
    blocks_hi = free_hi = 0
    if incompat & 0x80:  # 64bit feature: high halves are valid
        blocks_hi, free_hi = struct.unpack_from("<I", sb, 0x150)[0], struct.unpack_from("<I", sb, 0x158)[0]
    blocks = blocks_lo | blocks_hi << 32
    free = free_lo | free_hi << 32
    # Metadata (journal, inode tables) is not "used" in df's sense, nor in a running container's statfs.
    overhead = struct.unpack_from("<I", sb, 0x248)[0]
    return max(blocks - free - overhead, 0) * (1024 << log_block)


def live_usage(init_pid: int) -> int | None:
    """A running container's overlay reports its upper filesystem in statfs: exact and current."""
    try:
        st = os.statvfs(f"/proc/{init_pid}/root")
    except OSError:
        return None
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def used_bytes(container_dir: Path, init_pid: int | None = None) -> int | None:
    img = image_path(container_dir)
    if img.exists():
        used = live_usage(init_pid) if init_pid else None
        if used is None:
            used = superblock_usage(img)
        if used is None:
            try:
                return filesystem_usage(img)
            except KiwiError:
                return os.stat(img).st_blocks * 512
        return used
    folder = folder_path(container_dir)
    if folder.exists():
        return folder_usage(folder)
    return None


def check_new_size(current_used: int, new_size: int, current_size: int | None) -> None:
    if new_size < MIN_STORAGE:
        raise KiwiError(f"storage must be at least {format_size(MIN_STORAGE)}")
    if current_size is not None and new_size < current_size and new_size < current_used + GIB:
        raise KiwiError(
            f"cannot shrink storage to {format_size(new_size)}: {format_size(current_used)} is in use "
            f"and at least 1G must stay free; choose {format_size(current_used + GIB)} or more")


def resize_offline(container_dir: Path, new_size: int) -> None:
    """Grow or shrink a stopped container's state.img (e2fsck first, as resize2fs demands)."""
    img = image_path(container_dir)
    old_size = img.stat().st_size
    check_fs(img)
    if new_size > old_size:
        size_image_file(img, new_size)
        run_tool(["resize2fs", str(img)], "growing the storage")
    elif new_size < old_size:
        run_tool(["resize2fs", str(img), f"{new_size // 1024}K"], "shrinking the storage")
        size_image_file(img, new_size)


def check_fs(img: Path) -> None:
    import subprocess
    done = subprocess.run(["e2fsck", "-f", "-p", str(img)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True)
    # 0: clean, 1: errors corrected. Anything else needs a human.
    if done.returncode not in (0, 1):
        raise KiwiError(f"the container's storage has errors e2fsck could not fix: run e2fsck -f {img}")


def grow_file(container_dir: Path, new_size: int) -> None:
    size_image_file(image_path(container_dir), new_size)


def size_image_file(img: Path, size: int, create: bool = False) -> None:
    """Make (or resize) the sparse state.img; a size the filesystem cannot hold is one clear line."""
    check_fits(img.parent, size)
    try:
        with open(img, "wb" if create else "r+b") as f:
            if create:
                os.fchmod(f.fileno(), 0o600)  # the container's whole writable data
            f.truncate(size)
    except OSError as e:
        if e.errno == errno.EFBIG:
            raise KiwiError(f"storage {format_size(size)} is larger than the filesystem of Kiwi's data "
                            "folder allows for one file; give a smaller --storage") from None
        raise KiwiError(os_error_message(e, "size", img)) from None


def check_fits(folder: Path, size: int) -> None:
    """A state.img larger than the whole filesystem that holds it could never be filled."""
    st = os.statvfs(folder)
    total = st.f_blocks * st.f_frsize
    if size > total:
        raise KiwiError(f"storage {format_size(size)} is more than the whole filesystem of Kiwi's data "
                        f"folder holds ({format_size(total)}); give a smaller --storage, or --storage host")


def remove_state(container_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(image_path(container_dir))
    remove_tree(folder_path(container_dir), ignore_errors=True)
