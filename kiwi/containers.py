"""Container records: create, change settings, delete.

A container is containers/<id>/config.json plus its state (state.img or
state/). Creation is staged in .tmp/ and renamed into place under the global
lock, so a killed create never leaves a half container that `list` shows.
"""

from __future__ import annotations

import contextlib
import os

from . import storage
from .errors import KiwiError
from .fstree import remove_tree
from .sizes import format_size, parse_size
from .store import Store, atomic_write_json, new_container_id, utc_now, validate_container_name

DEFAULT_STORAGE = storage.GIB
MIN_MEMORY = 16 << 20
# Without --privileged a container gets its own user namespace (idmap.py).
DEFAULT_PRIVILEGED = False


def parse_storage(text: str | None) -> int | None:
    """'host' -> None (no limit); else bytes, at least 1G."""
    if text is None:
        return DEFAULT_STORAGE
    if text == "host":
        return None
    size = parse_size(text, what="storage size", maximum=storage.MAX_STORAGE)
    if size < storage.MIN_STORAGE:
        raise KiwiError(f"storage {text} is too small: the minimum is 1G")
    return size


def parse_memory(text: str) -> int | None:
    if text == "host":
        return None
    size = parse_size(text, default_unit="m", what="memory size")
    if size < MIN_MEMORY:
        raise KiwiError(f"memory {text} is too small: the minimum is {format_size(MIN_MEMORY)}")
    return size


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0))


def host_memory() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def parse_cpu(text: str) -> int | None:
    if text == "host":
        return None
    try:
        cpus = int(text)
    except ValueError:
        raise KiwiError(f"invalid cpu count {text!r}: use a whole number like 2, or 'host'") from None
    limit = usable_cpus()
    if not 1 <= cpus <= limit:
        raise KiwiError(f"invalid cpu count {cpus}: this host has {limit} usable CPUs")
    return cpus


def parse_shell(text: str) -> str:
    if not text.startswith("/") or "\0" in text or "\n" in text:
        raise KiwiError(f"invalid shell {text!r}: give an absolute path inside the container, e.g. /bin/bash")
    return text


def new_config(
    cid: str, name: str | None, image: str, storage_size: int | None, sparse: bool = False
) -> dict:
    return {
        "id": cid,
        "name": name,
        "image": image,
        "created": utc_now(),
        "ipv4": None,
        "storage": storage_size,
        "storage_sparse": sparse,
        "memory": None,
        "cpu": None,
        "network": "separate",
        "shell": None,
    }


def check_name_free(store: Store, name: str) -> None:
    if name in store.container_names():
        raise KiwiError(f"a container named {name!r} exists already; choose another name")


def create(
    store: Store,
    image: str,
    name: str | None = None,
    storage_text: str | None = None,
    settings: dict | None = None,
    populate=None,
    sparse: bool = False,
    privileged: bool | None = None,
) -> dict:
    """Create a container of an existing image. populate(staging_dir) may fill its state."""
    from . import images, ipam

    images.get_image(store, image)  # refuses an unknown image with a clear message
    if name is not None:
        validate_container_name(name)
    size = parse_storage(storage_text)
    if privileged is None:
        privileged = DEFAULT_PRIVILEGED
    store.ensure_layout()
    cid = new_container_id()
    staging = store.tmp_dir / f"create-{os.getpid()}-{cid}"
    staging.mkdir(mode=0o700)
    try:
        config = new_config(cid, name, image, size, sparse)
        if settings:
            config.update({k: v for k, v in settings.items() if k in ("memory", "cpu", "network", "shell")})
        storage.create_state(staging, size, sparse)
        if not privileged:
            check_unprivileged_support(store, image, staging)
        if populate:
            populate(staging, config)
        with store.lock():
            images.get_image(store, image)  # not deleted meanwhile: kiwi delete image holds this lock
            if name is not None:
                check_name_free(store, name)
            if store.container_dir(cid).exists():
                raise KiwiError("id collision; run the command again")
            config["ipv4"] = ipam.allocate(store, cid)
            try:
                set_privileged(store, config, privileged)
                atomic_write_json(staging / "config.json", config)
                os.rename(staging, store.container_dir(cid))
            except BaseException:
                ipam.release(store, config["ipv4"], cid)
                release_idmap(store, config)
                raise
    except BaseException:
        remove_tree(staging, ignore_errors=True)
        raise
    return config


def apply_settings(config: dict, memory=None, cpu=None, network=None, shell=None) -> list[str]:
    """Validate and record the non-storage settings; returns what changed."""
    changed = []
    if memory is not None:
        config["memory"] = parse_memory(memory)
        changed.append("memory")
    if cpu is not None:
        config["cpu"] = parse_cpu(cpu)
        changed.append("cpu")
    if network is not None:
        config["network"] = network
        changed.append("network")
    if shell is not None:
        config["shell"] = parse_shell(shell)
        changed.append("shell")
    return changed


def rename(store: Store, cid: str, new_name: str) -> dict:
    """Give a container a new name. Only the hostname keys on it (set at start); ids
    name everything else (cgroup, veth, folders), so a running container may be renamed."""
    validate_container_name(new_name)
    with store.container_lock(cid), store.lock():
        config = store.container_config(cid)
        if config.get("name") != new_name:
            check_name_free(store, new_name)
            config["name"] = new_name
            save_config(store, config)
    return config


def check_unprivileged_support(store: Store, image: str, staging) -> None:
    """The image and the container's storage must be idmappable (ext4 image: always)."""
    from . import idmap

    paths = [str(store.image_dir(image) / "rootfs")]
    if storage.folder_path(staging).is_dir():
        paths.append(str(storage.folder_path(staging)))
    idmap.check_support(paths)


def set_privileged(store: Store, config: dict, privileged: bool) -> None:
    """Record the mode; an unprivileged container leases its id block now, a privileged
    one gives its block back. The files on disk need no change either way."""
    from . import idmap

    if privileged:
        release_idmap(store, config)
        config["idmap"] = None
    elif idmap.is_privileged(config):
        config["idmap"] = idmap.allocate(store, config["id"])
    config["privileged"] = privileged


def release_idmap(store: Store, config: dict) -> None:
    from . import idmap

    if not idmap.is_privileged(config):
        with contextlib.suppress(KiwiError):
            idmap.release(store, config["id"], config["idmap"])


def save_config(store: Store, config: dict) -> None:
    atomic_write_json(store.container_dir(config["id"]) / "config.json", config)


def delete(store: Store, cid: str) -> None:
    """Remove a stopped container's record and state, and release its address."""
    from . import ipam

    cdir = store.container_dir(cid)
    config = store.container_config(cid)
    # Rename first: from this moment list no longer shows it, and a crash
    # leaves only a .tmp entry for cleanup.
    doomed = store.tmp_dir / f"delete-{os.getpid()}-{cid}"
    with store.lock():
        os.rename(cdir, doomed)
        if config.get("ipv4"):
            with contextlib.suppress(KiwiError):
                ipam.release(store, config["ipv4"], cid)
        release_idmap(store, config)
    remove_tree(doomed, ignore_errors=True)


def storage_summary(store: Store, config: dict, init_pid: int | None = None) -> tuple[int | None, int | None]:
    """(used bytes, limit bytes or None for host)."""
    return storage.used_bytes(store.container_dir(config["id"]), init_pid), config.get("storage")


def check_shell_exists(store: Store, config: dict, shell: str) -> None:
    """Refuse a shell the container does not have. Looked up beneath the running
    container's root, or when stopped in its image: never on the host, and an
    image's symlinks resolve inside the image (rootfs.is_executable_in)."""
    from .rootfs import is_executable_in
    from .runstate import read_runtime

    record = read_runtime(store, config["id"])
    where = f"/proc/{record['init_pid']}/root" if record else store.image_dir(config["image"]) / "rootfs"
    try:
        root = os.open(where, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return  # no image to look in: pick_shell says so when a session starts
    try:
        found = is_executable_in(root, shell)
    finally:
        os.close(root)
    if found:
        return
    if record:
        raise KiwiError(f"{shell} is not an executable file in container {config['id']}; give a shell it has")
    raise KiwiError(
        f"{shell} is not an executable file in image {config['image']}; if it was installed in the "
        f"container, start the container first (kiwi attach {config['id']} -- true) and set it again"
    )
