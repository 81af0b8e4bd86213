"""Adopt a data folder of the original Go Kiwi (`kiwi migrate`).

The Go program kept images/<name>/{manifest.json,rootfs/} and
containers/<24-hex id>/{config.json,state/{upper,work}} (older ones a
state.img), with its runtime records in mounts/containers/<id>/runtime.json.
Adopting happens in place, without copying data:

- an image gets an image.json beside its manifest.json;
- a container keeps its folder, gets a Kiwi config.json (the Go one is kept
  as go-config.json first) and is then renamed to a 12-hex id: the first 12
  digits of its Go id when free, so every short prefix keeps working.

Every step is atomic (one write or one rename), so a migration killed at any
point simply resumes the next time. Paths stored in the Go JSON files
(state_path, rootfs_path) are never read: everything comes from the layout,
opened without following symlinks, and device nodes (other than overlay
whiteouts in state/upper) are removed, as Kiwi's extractor never creates them.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat

from .errors import KiwiError
from .store import NAME_RE, atomic_write_json

GO_ID_RE = re.compile(r"[0-9a-f]{24}\Z")
GO_DEFAULT_MEMORY = "256"  # MiB, as the Go program assumed when none was set
GO_CONFIG = "go-config.json"
_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


# ------------------------------------------------------------------ settings


def settings_from_go(config: dict, where) -> dict:
    """Kiwi settings from a Go container config (memory, cpu, shell, storage).

    network is always 'separate': nothing read from Go data widens access.
    """
    from .containers import parse_memory, parse_shell, usable_cpus
    from .storage import GIB, MIN_STORAGE

    def bad(what):
        return KiwiError(f"{where}: the Go config has an invalid {what}; it is damaged or hostile")

    memory = config.get("memory") or GO_DEFAULT_MEMORY
    if not isinstance(memory, str):
        raise bad("memory")
    memory = memory.strip().lower()
    try:
        memory = None if memory in ("host", "max", "unlimited") else parse_memory(memory)
    except KiwiError:
        raise bad(f"memory {memory!r}") from None
    cpu = config.get("cpu") or config.get("smp") or 1
    if not isinstance(cpu, int) or isinstance(cpu, bool) or cpu < 1:
        raise bad("cpu count")
    cpu = None if config.get("cpu_host") is True else min(cpu, usable_cpus())
    shell = config.get("shell") or None
    if shell is not None:
        if not isinstance(shell, str):
            raise bad("shell")
        shell = parse_shell(shell)
    size = config.get("state_size_bytes") or GIB
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise bad("state_size_bytes")
    storage = None if config.get("state_size_host") is True else max(size, MIN_STORAGE)
    return {"memory": memory, "cpu": cpu, "shell": shell, "storage": storage, "network": "separate"}


# ------------------------------------------------------------------ detection


def _real_dirs(folder, name_re=None) -> list[str]:
    """Entries of folder (whose names match name_re) that are directories themselves (a
    symlink is not). The names are filtered first: `kiwi list` asks with 100s of Kiwi ids."""
    try:
        names = sorted(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [
        n
        for n in names
        if (name_re is None or name_re.match(n)) and stat.S_ISDIR(_lstat_mode(os.path.join(folder, n)))
    ]


def _lstat_mode(path) -> int:
    try:
        return os.lstat(path).st_mode
    except OSError:
        return 0


def go_container_ids(store) -> list[str]:
    return _real_dirs(store.containers_dir, GO_ID_RE)


def go_image_names(store) -> list[str]:
    return [
        n
        for n in _real_dirs(store.images_dir)
        if stat.S_ISREG(_lstat_mode(store.images_dir / n / "manifest.json"))
        and not os.path.lexists(store.images_dir / n / "image.json")
    ]


def pending(store) -> bool:
    """Does this data folder still hold containers or images of the Go program?"""
    return bool(go_container_ids(store) or go_image_names(store))


# ------------------------------------------------------------------ refusals


def refuse_symlinked_layout(store) -> None:
    for folder in (store.images_dir, store.containers_dir, store.mounts_dir, store.mounts_dir / "containers"):
        if os.path.islink(folder):
            raise KiwiError(
                f"{folder} is a symlink; Kiwi only adopts a data folder whose"
                f" folders are real ones (replace the link by the folder it names)"
            )


def running_go_containers(store) -> list[str]:
    """Go ids the old program still runs (runtime.json running + live pid) or still mounts."""
    from .proc import pid_alive

    runtime_root = store.mounts_dir / "containers"
    found = []
    for goid in sorted(set(_real_dirs(runtime_root)) | set(go_container_ids(store))):
        record = _read_go_json(runtime_root / goid, "runtime.json")
        pid = record.get("pid") if record else None
        if record and record.get("running") is True and isinstance(pid, int) and pid > 0 and pid_alive(pid):
            found.append(f"{goid} (pid {pid})")
    mounted = _mounts_below([runtime_root, store.containers_dir])
    if mounted:
        found.append(mounted[0])
    return found


def _mounts_below(folders) -> list[str]:
    prefixes = [os.path.realpath(f) + "/" for f in folders]
    found = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            point = line.split()[4].decode("utf-8", "surrogateescape")
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point)
            if any(point.startswith(p) for p in prefixes):
                found.append(point)
    return found


def _read_go_json(folder, name: str) -> dict | None:
    """A small JSON object from a Go folder, opened without following any symlink."""
    from .goarchive import json_object, read_small_file

    try:
        fd = os.open(folder, _NOFOLLOW_DIR)
    except OSError:
        return None
    try:
        data = read_small_file(fd, name, folder)
    finally:
        os.close(fd)
    return None if data is None else json_object(data, f"{folder}/{name}")


# ------------------------------------------------------------------ migrate


def migrate(store) -> list[str]:
    """Adopt every Go image and container; returns one line per thing done or skipped
    (a skipped one starts with 'image ' or 'container ' and says why)."""
    refuse_symlinked_layout(store)
    running = running_go_containers(store)
    if running:
        raise KiwiError(
            f"the original Kiwi still runs or mounts {', '.join(running)}; stop its"
            f" containers with the old program first (old-kiwi stop <id>),"
            f" then run 'kiwi migrate'"
        )
    store.ensure_layout()
    lines = []
    with store.lock():
        for name in go_image_names(store):
            lines += _skipped_on_error(f"image {name}", adopt_image, store, name)
        for goid in go_container_ids(store):
            lines += _skipped_on_error(f"container {goid}", adopt_container, store, goid)
    remove_go_runtime_records(store)
    return lines or ["nothing to adopt: no data of the original Kiwi here"]


def is_skipped(line: str) -> bool:
    return line.startswith(("image ", "container ")) and " skipped: " in line


def _skipped_on_error(what: str, adopt, store, name: str) -> list[str]:
    """One damaged or hostile entry is skipped with its reason; the others still move."""
    try:
        done = adopt(store, name)
    except KiwiError as e:
        return [f"{what} skipped: {e.message}"]
    return [done] if isinstance(done, str) else done


def adopt_image(store, name: str) -> str:
    from .goarchive import image_identity
    from .store import utc_now

    folder = store.images_dir / name
    if not NAME_RE.match(name):
        return f"image {name!r} skipped: its name is not a valid Kiwi name; re-import it"
    manifest = _read_go_json(folder, "manifest.json") or {}
    rootfs = _open_below(folder, "rootfs")
    if rootfs is None and stat.S_ISREG(_lstat_mode(folder / "rootfs.squashfs")):
        unpack_squashfs_image(folder)
        rootfs = _open_below(folder, "rootfs")
    if rootfs is None:
        return f"image {name} skipped: it has no rootfs/ folder; import its rootfs tarball again"
    try:
        removed, size = sanitize_tree(rootfs, upper=False, where=folder / "rootfs")
    finally:
        os.close(rootfs)
    created = manifest.get("created_at")
    source = manifest.get("source")
    atomic_write_json(
        folder / "image.json",
        {
            "name": name,
            "source": source if isinstance(source, str) else None,
            "sha256": None,
            "size": size,
            "created": created if isinstance(created, str) else utc_now(),
            "files": None,
            "go_image": image_identity(manifest),
        },
    )
    note = f" ({removed} device nodes dropped)" if removed else ""
    return f"adopted image {name}{note}"


def unpack_squashfs_image(folder) -> None:
    """Older Go images kept only rootfs.squashfs: unpack it to rootfs/ (through Kiwi's
    extractor, like a Go archive), staged beside it and renamed into place."""
    import shutil

    from . import goarchive, privatens

    image, staging = folder / "rootfs.squashfs", folder / ".rootfs-unpacking"
    if os.path.islink(staging):
        os.unlink(staging)
    shutil.rmtree(staging, ignore_errors=True)  # a killed earlier migrate
    goarchive.check_superblock(image)
    privatens.run(goarchive.extract_part, str(image), "squashfs", "", str(staging))
    os.rename(staging, folder / "rootfs")


def adopt_container(store, goid: str) -> list[str]:
    from . import images, ipam
    from .containers import new_config
    from .sizes import format_size
    from .store import is_container_id

    folder = store.containers_dir / goid
    current = _read_go_json(folder, "config.json")
    resumed = current is not None and current.get("go_id") == goid  # killed after writing it
    go = _read_go_json(folder, GO_CONFIG) if resumed else current
    if go is None:
        return [f"container {goid} skipped: it has no config.json"]
    image = go.get("image")
    if (
        not isinstance(image, str)
        or not NAME_RE.match(image)
        or not images.image_exists(store, image)
        or not os.path.lexists(store.image_dir(image) / "image.json")
    ):
        return [f"container {goid} skipped: its image {image!r} was not adopted"]
    settings = settings_from_go(go, f"container {goid}")
    storage = adopt_state(folder, settings, goid)
    if isinstance(storage, str):
        return [storage]
    cid = current.get("id") if resumed else None
    if not isinstance(cid, str) or not is_container_id(cid) or os.path.lexists(store.container_dir(cid)):
        cid = pick_id(store, goid)
    if not resumed:
        atomic_write_json(folder / GO_CONFIG, go)  # the original, kept before it is replaced
    config = new_config(cid, None, image, storage)
    config.update({k: settings[k] for k in ("memory", "cpu", "shell", "network")})
    if isinstance(go.get("created_at"), str):
        config["created"] = go["created_at"]
    config["go_id"] = goid
    wanted = go.get("ipv4") if isinstance(go.get("ipv4"), str) else None
    if wanted and not ipam.can_parse_in(wanted, ipam.subnet()):
        wanted = None  # outside this Kiwi's subnet: a new address
    config["ipv4"] = ipam.claim(store, cid, wanted)
    atomic_write_json(folder / "config.json", config)
    os.rename(folder, store.container_dir(cid))
    limit = "host" if storage is None else format_size(storage)
    lines = [
        (
            f"adopted container {goid} as {cid} (image {image}, memory "
            f"{format_size(settings['memory']) if settings['memory'] else 'host'}, cpu "
            f"{settings['cpu'] or 'host'}, storage {limit}, ip {config['ipv4']})"
        )
    ]
    if go.get("network") == "host":
        lines.append(
            f"container {cid}: network host is not carried over;"
            f" 'kiwi set {cid} --network host' grants it again"
        )
    return lines


def pick_id(store, goid: str) -> str:
    """The Go id's first 12 digits (so old prefixes still work), unless taken."""
    from .store import new_container_id

    cid = goid[:12]
    while os.path.lexists(store.containers_dir / cid):
        cid = new_container_id()
    return cid


def adopt_state(folder, settings: dict, goid: str):
    """Check the container's state (folder or older state.img) in place; returns the
    storage limit (None: host) or a line saying why the container is skipped."""
    img_mode = _lstat_mode(folder / "state.img")
    fd = _open_below(folder, "state")
    if fd is None:
        if stat.S_ISREG(img_mode):
            return os.lstat(folder / "state.img").st_size  # Kiwi's own ext4 backend
        return f"container {goid} skipped: it has neither a state/ folder nor a state.img"
    try:
        for sub in ("upper", "work"):
            with contextlib.suppress(FileExistsError):
                os.mkdir(sub, 0o755, dir_fd=fd)
        upper = _open_below_fd(fd, "upper")
        if upper is None or _open_below_fd(fd, "work", close=True) is None:
            return f"container {goid} skipped: its state/upper or state/work is not a folder"
        try:
            sanitize_tree(upper, upper=True, where=folder / "state" / "upper")
        finally:
            os.close(upper)
    finally:
        os.close(fd)
    return None  # Go's state folder: Kiwi's folder backend has no hard limit


def _open_below(folder, name: str) -> int | None:
    try:
        parent = os.open(folder, _NOFOLLOW_DIR)
    except OSError:
        return None
    try:
        return _open_below_fd(parent, name)
    finally:
        os.close(parent)


def _open_below_fd(parent: int, name: str, close: bool = False) -> int | None:
    try:
        fd = os.open(name, _NOFOLLOW_DIR, dir_fd=parent)
    except OSError:
        return None
    if close:
        os.close(fd)
    return fd


def sanitize_tree(top_fd: int, upper: bool, where) -> tuple[int, int]:
    """Remove device nodes (whiteouts stay in an upper layer); returns (removed, file bytes)."""
    from .goarchive import walk

    removed = size = 0
    for _rel, dir_fd, name, st in walk(top_fd, where):
        if stat.S_ISREG(st.st_mode):
            size += st.st_size
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            if upper and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                continue
            os.unlink(name, dir_fd=dir_fd)
            removed += 1
    return removed, size


def remove_go_runtime_records(store) -> None:
    """mounts/containers/<id>/: runtime.json and empty mount points (never anything mounted)."""
    root = store.mounts_dir / "containers"
    for goid in _real_dirs(root):
        folder = root / goid
        with contextlib.suppress(OSError):
            fd = os.open(folder, _NOFOLLOW_DIR)
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink("runtime.json", dir_fd=fd)
                for sub in ("base", "state", "merged"):
                    with contextlib.suppress(OSError):
                        os.rmdir(sub, dir_fd=fd)
            finally:
                os.close(fd)
            os.rmdir(folder)
    with contextlib.suppress(OSError):
        os.rmdir(root)
