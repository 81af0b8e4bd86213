"""snap, commit and create-from-archive: containers travel as .kiwi files.

The container's upper layer is read in a private mount namespace (privatens)
so nothing appears on the host; a running container is frozen meanwhile so
the copy is consistent, and always thawed again.
"""

from __future__ import annotations

import contextlib
import os
import shutil

from . import privatens
from .errors import KiwiError
from .freeze import frozen_if_running
from .fstree import remove_tree
from .storage_ops import finish_interrupted_change
from .store import NAME_RE, Store, atomic_write_json, read_json, validate_container_name, validate_name

EXPORTED_SETTINGS = ("memory", "cpu", "storage", "network", "shell")


def container_image(store: Store, config: dict) -> tuple[dict, str]:
    from . import images

    meta = images.get_image(store, config["image"])
    return meta, str(store.image_dir(config["image"]) / "rootfs")


# --- snap --------------------------------------------------------------------------


def snap(store: Store, cid: str, snapshot: str, progress=None):
    out = store.snapshot_path(cid, snapshot)
    if out.exists():
        raise KiwiError(f"{out} exists already; choose another snapshot name or remove the file")
    with store.container_lock(cid):
        config = store.container_config(cid)
        finish_interrupted_change(store, config)
        meta, rootfs = container_image(store, config)
        settings = {k: config.get(k) for k in EXPORTED_SETTINGS}
        settings["name"] = config.get("name")
        with frozen_if_running(store, cid):
            manifest = privatens.run(
                write_container_archive, store, cid, str(out), settings, meta, rootfs, progress
            )
        remember_rootfs_hash(store, config["image"], manifest)
    return out


def write_container_archive(store, cid, out, settings, meta, rootfs, progress):
    from . import archive

    with privatens.work_folder(store, "snap") as work:
        state = privatens.mount_state(store, cid, os.path.join(work, "state"))
        return archive.write_archive(
            out,
            "container",
            settings,
            meta,
            rootfs,
            upper_dir=os.path.join(state, "upper"),
            progress=progress,
        )


def remember_rootfs_hash(store: Store, image: str, manifest: dict) -> None:
    """Cache the image's content hash, so restoring on this machine finds it without rehashing."""
    path = store.image_dir(image) / "image.json"
    with store.lock():
        meta = read_json(path)
        digest = manifest["parts"]["rootfs"]["sha256"]
        if meta.get("rootfs_sha256") != digest:
            meta["rootfs_sha256"] = digest
            atomic_write_json(path, meta)


# --- create from a .kiwi file --------------------------------------------------------


def find_identical_image(store: Store, manifest: dict) -> tuple[str | None, bool]:
    """A local image with exactly the archive's rootfs, by content hash, and whether we
    now own it (restored by a create that was killed: this create takes it over)."""
    from . import archive, images

    wanted = archive.image_content_hash(manifest)
    preferred = manifest.get("image", {}).get("name")
    candidates = images.list_images(store)
    for meta in candidates:
        if meta.get("rootfs_sha256") == wanted:
            if "restored_by" not in meta:
                return meta["name"], False
            if take_over_restored(store, meta["name"]):
                return meta["name"], True
    # Same name but never hashed (e.g. imported from the same tarball): hash it once.
    for meta in candidates:
        if meta.get("name") == preferred and not meta.get("rootfs_sha256"):
            digest = archive.image_content_hash(store.image_dir(preferred) / "rootfs")
            meta["rootfs_sha256"] = digest
            with store.lock():
                atomic_write_json(store.image_dir(preferred) / "image.json", meta)
            if digest == wanted:
                return preferred, False
    return None, False


def take_over_restored(store: Store, image: str) -> bool:
    """Claim an image whose restoring create died before its container existed."""
    from .runstate import own_identity, owner_alive

    path = store.image_dir(image) / "image.json"
    with store.lock():
        meta = read_json(path)
        if owner_alive(meta.get("restored_by")):
            return False  # another create is restoring it right now
        meta["restored_by"] = own_identity()
        atomic_write_json(path, meta)
    return True


def release_restored(store: Store, image: str) -> None:
    """The container exists: the image is an ordinary one from now on."""
    path = store.image_dir(image) / "image.json"
    with store.lock():
        meta = read_json(path)
        if meta.pop("restored_by", None) is not None:
            atomic_write_json(path, meta)


def free_image_name(store: Store, base: str, digest: str) -> str:
    from . import images

    for name in (base, f"{base}-{digest[:8]}", f"{base}-{digest[:16]}"):
        try:
            validate_name(name, "image name")
        except KiwiError:
            continue
        if not images.image_exists(store, name):
            return name
    raise KiwiError(f"cannot find a free image name for {base}; delete or rename an image")


def restore_image(store: Store, path: str, manifest: dict, progress=None) -> str:
    """Extract the archive's rootfs as a new image (staged, then renamed)."""
    from . import archive
    from .runstate import own_identity

    digest = archive.image_content_hash(manifest)
    base = manifest.get("image", {}).get("name") or "restored"
    store.ensure_layout()
    staging = store.tmp_dir / f"restore-{os.getpid()}-{digest[:12]}"
    try:
        archive.extract_archive(path, rootfs_dest=staging / "rootfs", progress=progress)
        with store.lock():
            name = free_image_name(store, base, digest)
            meta = dict(manifest.get("image") or {})
            meta.update({"name": name, "source": os.path.abspath(path), "rootfs_sha256": digest})
            # Until its container exists the image is ours: if we are killed, cleanup removes it.
            meta["restored_by"] = own_identity()
            atomic_write_json(staging / "image.json", meta)
            os.rename(staging, store.image_dir(name))
    finally:
        remove_tree(staging, ignore_errors=True)
    return name


def create_from_archive(
    store: Store,
    path: str,
    name: str | None = None,
    storage_text: str | None = None,
    overrides: dict | None = None,
    notes: list | None = None,
    progress=None,
    sparse: bool = False,
    privileged: bool | None = None,
) -> dict:
    """overrides: settings the user gave on the command line; notes collects what to tell them."""
    from . import archive, containers, storage
    from .sizes import format_size

    if not os.path.isfile(path):
        raise KiwiError(f"no such file: {path}")
    from . import goarchive

    if goarchive.archive_format(path):  # written by the original Go Kiwi
        config = create_from_go_archive(store, path, name, storage_text, progress, notes)
        if overrides or privileged is not None:  # the command line's settings win, as for .kiwi files
            with store.container_lock(config["id"]):
                config.update(overrides or {})
                if privileged is not None:
                    containers.set_privileged(store, config, privileged)
                containers.save_config(store, config)
        return config
    manifest = archive.read_manifest(path)
    settings = checked_settings(manifest.get("settings") or {}, path)
    overrides = overrides or {}
    granted = set(overrides) | ({"storage"} if storage_text is not None else set())
    dropped = drop_widening(settings, path, granted)
    refuse_beyond_host(store, path, {k: v for k, v in settings.items() if k not in granted})
    if notes is not None:
        notes += dropped
    settings.update(overrides)
    if storage_text is None and "storage" in settings:
        storage_text = "host" if settings["storage"] is None else str(settings["storage"])
    upper = manifest["parts"].get("upper")
    needed = upper["size"] if upper else 0  # tar bytes: checked against the stream, data_bytes is not
    size = containers.parse_storage(storage_text)
    reserve = storage.GIB // 8  # ext4's own metadata and journal in state.img
    if size is not None and needed + reserve > size:
        raise KiwiError(
            f"storage {format_size(size)} is too small for the archive's {format_size(needed)} "
            f"of changes plus {format_size(reserve)} for the filesystem; "
            f"give --storage {format_size(needed + storage.GIB)} or more"
        )
    if name is None and settings.get("name"):
        wanted = settings["name"]
        name = wanted if wanted not in store.container_names() else None
    # Only after every check that can refuse: a refused archive must leave no image behind.
    reused, owned = find_identical_image(store, manifest)
    check_free_space(store, path, needed + (0 if reused else manifest["parts"]["rootfs"]["size"]))
    image = reused or restore_image(store, path, manifest, progress)
    owned = owned or not reused

    def populate(staging, config):
        if upper:
            privatens.run(extract_upper, str(staging), path, progress)
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(os.path.join(staging, "mnt"))

    try:
        config = containers.create(
            store,
            image,
            name=name,
            storage_text=storage_text,
            settings=settings,
            populate=populate,
            sparse=sparse,
            privileged=privileged,
        )
    except BaseException:
        if owned:  # restored for this container only (e.g. its upper part was damaged)
            from . import images

            with contextlib.suppress(KiwiError, OSError):
                images.delete_image(store, image)
        raise
    if owned:
        release_restored(store, image)
    return config


def drop_widening(settings: dict, path: str, granted: set) -> list[str]:
    """An archive never gives a container more of the host than a plain create does: the
    host's network or unlimited storage only come from the command line. Returns notes."""
    notes = []
    if settings.get("network") == "host" and "network" not in granted:
        settings["network"] = "separate"
        notes.append(
            f"{path} asks for the host's network; the container gets its own network "
            f"(add --network host to grant it)"
        )
    if "storage" in settings and settings["storage"] is None and "storage" not in granted:
        del settings["storage"]
        notes.append(
            f"{path} asks for unlimited storage; the container gets the default limit "
            f"(add --storage host to grant it)"
        )
    return notes


def check_free_space(store: Store, path: str, needed: int) -> None:
    """Extracted data never exceeds its tar bytes (sparse files stay sparse): refuse up front."""
    from .sizes import format_size

    free = free_bytes(store.root)
    if needed > free:
        raise KiwiError(
            f"{path} needs up to {format_size(needed)} and the filesystem of {store.root} "
            f"has only {format_size(free)} free; free some space and try again"
        )


def free_bytes(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def checked_settings(settings: dict, path: str) -> dict:
    """The archive's settings, refused when `kiwi set` would refuse them (the file may be hostile)."""
    from .containers import MIN_MEMORY, parse_shell

    def whole(v, low):
        return v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= low)

    unknown = sorted(set(settings) - set(EXPORTED_SETTINGS) - {"name"})
    ok = (
        not unknown
        and whole(settings.get("memory"), MIN_MEMORY)
        and whole(settings.get("cpu"), 1)
        and whole(settings.get("storage"), 1)
        and settings.get("network") in (None, "host", "separate")
        and (settings.get("name") is None or isinstance(settings["name"], str))
        and (settings.get("shell") is None or isinstance(settings["shell"], str))
    )
    if not ok:
        what = f"unknown setting {unknown[0]!r}" if unknown else "invalid settings"
        raise KiwiError(f"{path}: {what}; the file is damaged or hostile")
    if settings.get("shell") is not None:
        parse_shell(settings["shell"])
    if settings.get("name") is not None:
        validate_container_name(settings["name"])
    return dict(settings)


def refuse_beyond_host(store: Store, path: str, settings: dict) -> None:
    """Limits an archive asks for must exist on this host: refuse here, not at the first start."""
    from .containers import host_memory, usable_cpus
    from .sizes import format_size

    store.ensure_layout()
    for key, have, show, unit in (
        ("cpu", usable_cpus, str, "usable CPUs"),
        ("memory", host_memory, format_size, "of memory"),
        ("storage", lambda: free_bytes(store.root), format_size, "free"),
    ):
        if settings.get(key) and settings[key] > have():
            raise KiwiError(
                f"{path} asks for {key} {show(settings[key])} but this host has only "
                f"{show(have())} {unit}; give a smaller --{key} to create it here"
            )


def extract_upper(staging: str, path: str, progress) -> None:
    from pathlib import Path

    from . import archive, storage
    from .extract import NoSpaceError
    from .sizes import format_size

    img = storage.image_path(Path(staging))
    if img.exists():
        mnt = os.path.join(staging, "mnt")
        os.mkdir(mnt, 0o700)
        privatens.mount_ext4_image(str(img), mnt)
        state = mnt
    else:
        state = str(storage.folder_path(Path(staging)))
    upper = os.path.join(state, "upper")
    os.rmdir(upper)  # the archive's upper replaces the empty one
    from . import goarchive

    fmt = goarchive.archive_format(path)
    if fmt:  # written by the original Go Kiwi
        goarchive.extract_part(path, fmt, goarchive.UPPER, upper)
        return
    try:
        archive.extract_archive(path, upper_dest=upper, progress=progress)
    except NoSpaceError:
        if not img.exists():
            raise
        raise KiwiError(
            f"the changes in {path} do not fit the container's storage of "
            f"{format_size(img.stat().st_size)}; give a larger --storage"
        ) from None


# --- commit --------------------------------------------------------------------------


def commit(store: Store, cid: str, image: str, progress=None) -> dict:
    from . import images
    from .store import utc_now

    validate_name(image, "image name")
    if images.image_exists(store, image):
        raise KiwiError(f"an image named {image!r} exists already; choose another name")
    store.ensure_layout()
    with store.container_lock(cid):
        config = store.container_config(cid)
        finish_interrupted_change(store, config)
        _, rootfs = container_image(store, config)
        staging = store.tmp_dir / f"commit-{os.getpid()}-{image}"
        try:
            with frozen_if_running(store, cid):
                stats = privatens.run(flatten_container, store, cid, rootfs, str(staging))
            meta = {
                "name": image,
                "source": f"commit of container {cid} (image {config['image']})",
                "sha256": None,
                "size": stats.get("size"),
                "created": utc_now(),
                "parent": config["image"],
            }
            atomic_write_json(staging / "image.json", meta)
            with store.lock():
                if images.image_exists(store, image):
                    raise KiwiError(f"an image named {image!r} exists already; choose another name")
                os.rename(staging, store.image_dir(image))
        finally:
            remove_tree(staging, ignore_errors=True)
    return meta


def flatten_container(store, cid, rootfs, staging) -> dict:
    from . import flatten

    os.mkdir(staging, 0o700)
    work = os.path.join(staging, "state-mnt")
    state = privatens.mount_state(store, cid, work)
    stats = flatten.flatten(rootfs, os.path.join(state, "upper"), os.path.join(staging, "rootfs"))
    if state == work:
        from . import syscalls as sc

        sc.umount(work, sc.MNT_DETACH)
    with contextlib.suppress(OSError):
        os.rmdir(work)
    stats["size"] = tree_size(os.path.join(staging, "rootfs"))
    return stats


def tree_size(path: str) -> int:
    import stat

    from .fstree import walk_stats

    return sum(st.st_size for _fd, _name, st in walk_stats(path) if not stat.S_ISDIR(st.st_mode))


# --- .kiwi files the original Go Kiwi wrote (read by kiwi/goarchive.py) --------------------


def check_go_free_space(store, info: dict, path) -> None:
    from .sizes import format_size

    needed = sum(info["sizes"].values())
    st = os.statvfs(store.root)
    free = st.f_bavail * st.f_frsize
    if needed > free:
        raise KiwiError(
            f"{path} declares {format_size(needed)} of files but only {format_size(free)}"
            f" is free under {store.root}; free some space first"
        )


def find_go_image(store, identity: str) -> str | None:
    """A local image restored or adopted from the same Go image."""
    from . import images

    for meta in images.list_images(store):
        if meta.get("go_image") == identity:
            return meta["name"]
    return None


def go_image_without_rootfs(store, info: dict, path) -> str | None:
    """An archive without rootfs uses the local image of the same name, or is refused."""
    from . import images

    if info["has_rootfs"]:
        return None
    name = info["manifest"].get("name")
    if isinstance(name, str) and NAME_RE.match(name) and images.image_exists(store, name):
        return name
    raise KiwiError(
        f"{path} holds no rootfs (an older Go Kiwi snapshot) and there is no image"
        f" {name!r} here; import that image first (kiwi import --name NAME rootfs.tar.xz)"
    )


def restore_go_image(store, path, fmt, info: dict, progress=None) -> str:
    from . import goarchive
    from .store import atomic_write_json, fsync_dir, utc_now

    manifest, identity = info["manifest"], info["identity"]
    base = str(manifest.get("name") or info["meta"].get("image_name") or "restored")
    store.ensure_layout()
    staging = store.tmp_dir / f"restore-{os.getpid()}-go{identity[:12]}"
    try:
        os.mkdir(staging, 0o755)
        privatens.run(goarchive.extract_part, str(path), fmt, goarchive.ROOTFS, str(staging / "rootfs"))
        with store.lock():
            try:
                name = free_image_name(store, base, identity)
            except KiwiError:
                name = free_image_name(store, "restored", identity)
            atomic_write_json(
                staging / "image.json",
                {
                    "name": name,
                    "source": os.path.abspath(path),
                    "sha256": None,
                    "size": info["sizes"][goarchive.ROOTFS] or None,
                    "created": utc_now(),
                    "files": None,
                    "go_image": identity,
                },
            )
            os.rename(staging, store.image_dir(name))
            fsync_dir(store.images_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return name


def create_from_go_archive(store, path, name=None, storage_text=None, progress=None, notes=None) -> dict:
    """`kiwi create file.kiwi` for a file the Go program wrote."""
    from . import containers, goarchive, gokiwi, storage
    from .sizes import format_size

    fmt = goarchive.archive_format(path)
    info = goarchive.read_info(path, fmt)
    store.ensure_layout()
    config = info["config"] if info["meta"]["kind"] == "container" else {}
    settings = checked_settings(gokiwi.settings_from_go(config, path), path)
    # A Go file is as hostile as a .kiwi one: its `state_size_host` must not give the
    # container unlimited storage (the host's whole disk) that the command line did not.
    dropped = drop_widening(settings, path, {"storage"} if storage_text is not None else set())
    if notes is not None:
        notes += dropped
    if storage_text is None and config and "storage" in settings:
        storage_text = str(settings["storage"])
    size = containers.parse_storage(storage_text)
    needed = info["sizes"][goarchive.UPPER]
    if size is not None and needed + storage.GIB // 8 > size:
        raise KiwiError(
            f"storage {format_size(size)} is too small for the archive's"
            f" {format_size(needed)} of changes; give --storage"
            f" {format_size(needed + storage.GIB)} or more"
        )
    check_go_free_space(store, info, path)
    reused = find_go_image(store, info["identity"]) or go_image_without_rootfs(store, info, path)
    image = reused or restore_go_image(store, path, fmt, info, progress)

    def populate(staging, new_config):
        if info["meta"]["kind"] == "container":
            privatens.run(extract_upper, str(staging), path, progress)  # reads state/upper
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(os.path.join(staging, "mnt"))

    settings.pop("storage", None)
    try:
        return containers.create(
            store, image, name=name, storage_text=storage_text, settings=settings, populate=populate
        )
    except BaseException:
        if not reused:
            from . import images

            with contextlib.suppress(KiwiError, OSError):
                images.delete_image(store, image)
        raise
