"""A container's writable state: an ext4 filesystem in state.img (a hard
storage limit), or a plain state/ folder when storage is 'host'.

Both hold upper/ and work/ for the overlay. state.img is reserved on the host
(fallocate) unless the container opted into sparse storage: a write that the
container's fsync acknowledged must never meet a full host disk later.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from .errors import KiwiError
from .fstree import remove_tree, walk_stats
from .peek import live_usage, read_superblock, superblock_usage
from .sizes import format_size
from .store import host_full, is_disk_full

GIB = 1 << 30
MIN_STORAGE = GIB
MAX_STORAGE = 16 << 40  # ext4's largest file with 4K blocks: state.img is one such file


def image_path(container_dir: Path) -> Path:
    return container_dir / "state.img"


def folder_path(container_dir: Path) -> Path:
    return container_dir / "state"


def spawn_tool(argv: list[str], lock_fd: int | None = None):
    """(exit status, stdout, stderr) of a tool. With lock_fd the tool inherits the
    container lock and its own session: if kiwi is killed or signalled, the tool
    still finishes (a resize2fs cut short corrupts), and until it has, the
    container stays locked for every other kiwi."""
    import subprocess

    keep = () if lock_fd is None else (lock_fd,)
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            pass_fds=keep,
            start_new_session=bool(keep),
        )
    except FileNotFoundError:
        raise KiwiError(f"{argv[0]} is missing; install e2fsprogs (apt-get install e2fsprogs)") from None
    out, err = proc.communicate()  # never kills the tool, even when a signal interrupts us
    return proc.returncode, out, err


def run_tool(argv: list[str], what: str, lock_fd: int | None = None) -> str:
    code, out, err = spawn_tool(argv, lock_fd)
    if code != 0:
        detail = (err or out).strip().splitlines()
        raise KiwiError(f"{what} failed: {detail[-1] if detail else 'exit ' + str(code)}")
    return out


def extend_file(img: Path, size: int, sparse: bool) -> None:
    """Make img size bytes long; unless sparse, reserve every byte on the host now.
    Sparse is the user's explicit opt-in to overcommit (thin provisioning): only a
    reserved image is refused for being larger than the whole filesystem."""
    if not sparse:
        check_fits(img.parent, size)
    try:
        _extend_open_file(img, size, sparse)
    except OSError as e:
        if e.errno == errno.EFBIG:
            raise KiwiError(
                f"storage {format_size(size)} is larger than the filesystem of Kiwi's data "
                "folder allows for one file; give a smaller --storage"
            ) from None
        raise


def _extend_open_file(img: Path, size: int, sparse: bool) -> None:
    with open(img, "r+b") as f:
        st = os.fstat(f.fileno())
        if sparse:
            if size > st.st_size:
                f.truncate(size)
            return
        missing = size - st.st_blocks * 512
        if missing <= 0:
            return
        import shutil

        free = shutil.disk_usage(img.parent).free
        if missing > free:
            raise KiwiError(
                f"reserving {format_size(size)} of storage needs {format_size(missing)} more "
                f"on the host, which has {format_size(free)} free where {img.parent} lives; "
                "choose a smaller --storage, free space, or add --sparse (not reserved)"
            )
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except OSError as e:
            f.truncate(st.st_size)  # gives back what the failed reservation took
            if is_disk_full(e):
                raise host_full(img.parent, f"reserving {format_size(size)} of storage") from None
            raise


def create_state(container_dir: Path, size: int | None, sparse: bool = False) -> None:
    """Lay out upper/ and work/ either in a fresh ext4 image or in a folder."""
    if size is None:
        for sub in ("upper", "work"):
            (folder_path(container_dir) / sub).mkdir(parents=True, mode=0o755)
        return
    import tempfile

    with tempfile.TemporaryDirectory(dir=container_dir) as seed:
        for sub in ("upper", "work"):
            os.mkdir(os.path.join(seed, sub), 0o755)
        img = image_path(container_dir)
        format_image(img, size, sparse, seed)


def format_image(img: Path, size: int, sparse: bool, content: str, lock_fd: int | None = None) -> None:
    with open(img, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # the container's whole writable data
    extend_file(img, size, sparse)
    # nodiscard: mke2fs would punch the reservation out of the file again.
    run_tool(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-m",
            "0",
            "-L",
            "kiwi-state",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0,nodiscard",
            "-d",
            content,
            str(img),
        ],
        "formatting the container's storage",
        lock_fd,
    )


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


def filesystem_size(img: Path) -> int | None:
    sb = read_superblock(img)
    return None if sb is None else sb["blocks"] * sb["block_size"]


def image_agrees(container_dir: Path, size: int) -> bool:
    """state.img's file and filesystem both have the configured size (to the block)."""
    img = image_path(container_dir)
    fs = filesystem_size(img)
    return fs is not None and img.exists() and img.stat().st_size == size and 0 <= size - fs < 4096


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
            f"and at least 1G must stay free; choose {format_size(current_used + GIB)} or more"
        )


def resize_image(container_dir: Path, new_size: int, sparse: bool, lock_fd: int | None = None) -> None:
    """Bring a stopped container's state.img (file and filesystem) to new_size from
    wherever they are, so running it again finishes an interrupted resize. The
    file is never smaller than the filesystem: it grows first and shrinks last."""
    img = image_path(container_dir)
    check_fs(img, lock_fd)
    fs = filesystem_size(img)
    if fs is None:
        raise KiwiError(f"{img} holds no ext4 filesystem; the container's storage is damaged")
    extend_file(img, new_size, sparse)
    if not 0 <= new_size - fs < 4096:
        run_tool(["resize2fs", str(img), f"{new_size // 1024}K"], "resizing the storage", lock_fd)
    if img.stat().st_size > new_size:
        with open(img, "r+b") as f:
            f.truncate(new_size)


def check_fs(img: Path, lock_fd: int | None = None) -> None:
    code, _, _ = spawn_tool(["e2fsck", "-f", "-p", str(img)], lock_fd)
    # 0: clean, 1: errors corrected. Anything else needs a human.
    if code not in (0, 1):
        raise KiwiError(f"the container's storage has errors e2fsck could not fix: run e2fsck -f {img}")


def check_fits(folder: Path, size: int) -> None:
    """A state.img larger than the whole filesystem that holds it could never be filled."""
    st = os.statvfs(folder)
    total = st.f_blocks * st.f_frsize
    if size > total:
        raise KiwiError(
            f"storage {format_size(size)} is more than the whole filesystem of Kiwi's data "
            f"folder holds ({format_size(total)}); give a smaller --storage, or --storage host"
        )


def remove_state(container_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(image_path(container_dir))
    remove_tree(folder_path(container_dir), ignore_errors=True)
