"""Base images: images/<name>/image.json + rootfs/ (an extracted tree).

An import extracts into a staging folder under .tmp/ (same filesystem) and
renames it into place only when everything succeeded, so a failure, Ctrl-C
or a killed process never leaves a half image in images/.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from . import store as store_mod
from .errors import KiwiError
from .fstree import remove_tree
from .store import utc_now

STAGING_PREFIX = "import-"


def import_image(store, name: str, archive_path, progress=None, source=None) -> dict:
    """Extract a rootfs archive as the new image `name`; returns its image.json."""
    store_mod.validate_name(name, "image name")
    archive_path = Path(archive_path)
    if not archive_path.is_file():
        raise KiwiError(f"{archive_path} is not a file; give the path of a rootfs archive")
    _refuse_existing(store, name)
    from .extract import extract_archive  # tarfile, hashlib: not on the start path

    with staging_folder(store, name) as staging:
        stats = extract_archive(archive_path, staging / "rootfs", progress=progress)
        info = {
            "name": name,
            "source": source if source is not None else str(archive_path.resolve()),
            "sha256": stats.sha256,
            "size": stats.bytes,
            "created": store_mod.utc_now(),
            "files": stats.entries,
        }
        store_mod.atomic_write_json(staging / "image.json", info)
        _commit(store, name, staging)
        return info


@contextlib.contextmanager
def staging_folder(store, name: str):
    """A locked folder under .tmp/ to build image `name` in; gone afterwards unless
    _commit moved it into images/."""
    import tempfile

    store.ensure_layout()
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{name}-", dir=store.tmp_dir))
    lock_fd = _hold_staging_lock(staging)
    try:
        yield staging
    finally:
        os.close(lock_fd)
        remove_tree(staging, ignore_errors=True)  # nothing there once committed


def _refuse_existing(store, name: str) -> None:
    if image_exists(store, name):
        raise KiwiError(
            f"an image named {name} already exists; choose another name or delete it first: kiwi delete image {name}"
        )


def _commit(store, name: str, staging: Path) -> None:
    """Rename the finished staging folder into images/ (atomic; never over an image)."""
    with store.lock():
        _refuse_existing(store, name)
        os.rename(staging, store.image_dir(name))
        store_mod.fsync_dir(store.images_dir)


def _hold_staging_lock(staging: Path) -> int:
    """flock the staging folder while we work in it; cleanup skips locked ones."""
    fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def remove_stale_staging(store) -> list[str]:
    """Remove import staging folders whose process is gone (for `kiwi cleanup`).

    A live import holds a flock on its folder; a killed one's lock died with it.
    """
    removed = []
    try:
        entries = os.listdir(store.tmp_dir)
    except FileNotFoundError:
        return removed
    for entry in entries:
        path = store.tmp_dir / entry
        if not entry.startswith(STAGING_PREFIX) or path.is_symlink() or not path.is_dir():
            continue
        if _is_unlocked(path):
            remove_tree(path, ignore_errors=True)
            removed.append(entry)
    return removed


def _is_unlocked(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def image_exists(store, name: str) -> bool:
    return store.image_dir(name).is_dir()


def get_image(store, name: str) -> dict:
    store_mod.validate_name(name, "image name")
    try:
        info = store_mod.read_json(store.image_dir(name) / "image.json")
    except FileNotFoundError:
        raise KiwiError(f"no image named {name}; see 'kiwi list images'") from None
    info["name"] = name  # the folder name is the truth, not the file
    return info


def list_images(store) -> list[dict]:
    """Every image, sorted by name; a damaged image.json shows as damaged, not as an error."""
    try:
        names = sorted(os.listdir(store.images_dir))
    except FileNotFoundError:
        return []
    images = []
    for name in names:
        if not store_mod.NAME_RE.match(name) or not (store.images_dir / name).is_dir():
            continue
        try:
            images.append(get_image(store, name))
        except KiwiError:
            images.append(
                {
                    "name": name,
                    "source": None,
                    "sha256": None,
                    "size": None,
                    "created": None,
                    "files": None,
                    "damaged": True,
                }
            )
    return images


def containers_using(store, name: str) -> list[str]:
    """Labels ("id (name)") of the containers made from the image `name`."""
    users = []
    for cid in store.container_ids():
        with contextlib.suppress(FileNotFoundError, KiwiError):
            config = store.container_config(cid)
            if config.get("image") == name:
                users.append(cid + (f" ({config['name']})" if config.get("name") else ""))
    return users


def remove_image(store, name: str) -> None:
    """`kiwi delete image`: refused while a container uses it (checked under the
    global lock, which container creation also holds)."""
    delete_image(store, name, refuse_used=True)


def delete_image(store, name: str, refuse_used: bool = False) -> None:
    """Remove an image. Callers check first that no container uses it, or ask for refuse_used."""
    store_mod.validate_name(name, "image name")
    store.ensure_layout()
    with store.lock():
        if not image_exists(store, name):
            raise KiwiError(f"no image named {name}; see 'kiwi list images'")
        users = containers_using(store, name) if refuse_used else []
        if users:
            raise KiwiError(
                f"image {name} is used by {len(users)} container(s): {', '.join(users)}; delete those first"
            )
        # Move it out of images/ at once; a crash mid-delete leaves only .tmp/ debris.
        import tempfile

        doomed = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{name}-deleted-", dir=store.tmp_dir))
        os.rename(store.image_dir(name), doomed / "image")
    with contextlib.suppress(FileNotFoundError):
        remove_tree(doomed)


# --- .kiwi archives ---------------------------------------------------------------

EXPORT_SUFFIX = ".kiwi"


def export_folders(store) -> list[Path]:
    """exports/ (pulled images) and the data folder itself (snapshots: <id>-<name>.kiwi)."""
    return [store.exports_dir, store.root]


def list_exports(store) -> list[dict]:
    """The .kiwi files Kiwi keeps, each as {name, path, size, modified}; symlinks are not listed."""
    import stat

    rows = []
    for folder in export_folders(store):
        try:
            entries = sorted(os.listdir(folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            if not entry.endswith(EXPORT_SUFFIX):
                continue
            try:
                st = os.lstat(folder / entry)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                modified = utc_now(st.st_mtime)
                rows.append(
                    {"name": entry, "path": str(folder / entry), "size": st.st_size, "modified": modified}
                )
    return rows


def delete_export(store, name: str) -> str:
    """Remove one .kiwi file by its file name (".kiwi" may be left off); returns its path."""
    base = name[: -len(EXPORT_SUFFIX)] if name.endswith(EXPORT_SUFFIX) else name
    if not store_mod.NAME_RE.match(base):
        raise KiwiError(f"no .kiwi file named {name!r}; see 'kiwi list exports'")
    for row in list_exports(store):
        if row["name"] == base + EXPORT_SUFFIX:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(row["path"])
            return row["path"]
    raise KiwiError(f"no .kiwi file named {name!r}; see 'kiwi list exports'")
