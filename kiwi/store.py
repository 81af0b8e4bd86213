"""The kiwi-data folder: layout, atomic JSON, locks, ids and names.

Every path is derived from an id or a name that was validated here; nothing
read back from a JSON file ever decides what root mounts or deletes.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import stat
import sys
from pathlib import Path

from . import layout
from .errors import Doing, KiwiError, os_error_message

# The file helpers live in files.py (hoststate.py needs them and store.py needs hoststate.py);
# their callers import them from here.
from .files import atomic_write_json, flock, fsync_dir, host_full, is_disk_full, read_json, utc_now  # noqa: F401

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import ClassVar

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}\Z")
ID_RE = re.compile(r"[0-9a-f]{12}\Z")
ID_LEN = layout.ID_LEN
# Everything under kiwi-data is root's alone (0700): image trees and containers'
# upper layers hold setuid-root files an unprivileged host user must never reach.
PRIVATE_MODE = 0o700
FOLDER_ID_FILE = layout.FOLDER_ID
GLOBAL_LOCK = "global.lock"  # lock(): ids, names and addresses


def validate_name(name: str, what: str = "name") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise KiwiError(f"invalid {what} {name!r}: use 1-63 of a-z 0-9 _ . - starting with a letter or digit")
    return name


def validate_container_name(name: str) -> str:
    """A name that looks like an id would make `kiwi attach <it>` ambiguous."""
    validate_name(name, "container name")
    if is_container_id(name):
        raise KiwiError(
            f"invalid container name {name!r}: 12 hex digits look like a container id; choose another name"
        )
    return name


is_container_id = layout.is_container_id


def new_container_id() -> str:
    import secrets

    return secrets.token_hex(ID_LEN // 2)


def executable_path() -> Path:
    """The kiwi file the user ran. The one-file launcher (cffi_build/launcher.c) runs
    the frozen bundle from a cache folder and names itself in $KIWI_EXECUTABLE."""
    if getattr(sys, "frozen", False):
        return Path(os.environ.get("KIWI_EXECUTABLE") or sys.executable)
    return Path(sys.executable)


def executable_dir() -> Path:
    """layout.executable_dir: where kiwi-data lives by default."""
    return Path(layout.executable_dir())


class Store:
    # The store never prints: the CLI sets this to its warn, and a command that has to
    # wait for a container another kiwi holds (a start behind a `kiwi cp`) says so in one line.
    lock_wait_notice: ClassVar[Callable[[str], None] | None] = None

    def __init__(self, root: Path):
        self.root = Path(root)
        self._folder_id: str | None = None
        self.held_locks: dict[str, int] = {}  # lock name -> the fd holding it

    @classmethod
    def open(cls) -> Store:
        try:
            root = Path(layout.data_folder())
        except ValueError as e:
            raise KiwiError(str(e)) from None
        if not os.environ.get("KIWI_ROOT"):
            migrate_old_folder(root.parent / ".kiwi", root)
        check_data_folder(root)
        migrate_old_runtime(root)
        store = cls(root)
        if os.geteuid() == 0:
            store.tighten_modes()
        else:
            store.refuse_unreadable()
        return store

    # --- layout -----------------------------------------------------------
    @functools.cached_property
    def images_dir(self) -> Path:
        return self.root / layout.IMAGES

    @functools.cached_property
    def containers_dir(self) -> Path:
        return self.root / layout.CONTAINERS

    @functools.cached_property
    def mounts_dir(self) -> Path:
        return self.root / layout.MOUNTS

    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"

    @property
    def tmp_dir(self) -> Path:
        return self.root / ".tmp"

    @property
    def locks_dir(self) -> Path:
        return self.root / layout.LOCKS

    @property
    def unpack_dir(self) -> Path:
        """Where the one-file launcher unpacks the frozen bundle, one folder per build."""
        return self.root / ".runtime"

    def image_dir(self, name: str) -> Path:
        return self.images_dir / validate_name(name, "image name")

    def container_dir(self, cid: str) -> Path:
        if not is_container_id(cid):
            raise KiwiError(f"invalid container id {cid!r}")
        return self.containers_dir / cid

    def runtime_dir(self, cid: str) -> Path:
        if not is_container_id(cid):
            raise KiwiError(f"invalid container id {cid!r}")
        return self.mounts_dir / cid

    def snapshot_path(self, cid: str, snapshot: str) -> Path:
        validate_name(snapshot, "snapshot name")
        return self.root / f"{cid}-{snapshot}.kiwi"

    def private_dirs(self) -> tuple[Path, ...]:
        return tuple(self.root / name for name in layout.PRIVATE_DIRS)

    def ensure_layout(self) -> None:
        """Create the folders a writing command needs, all PRIVATE_MODE."""
        with Doing("create the data folder", self.root):
            self.root.parent.mkdir(parents=True, exist_ok=True)
            for d in (self.root, *self.private_dirs()):
                with contextlib.suppress(FileExistsError):
                    d.mkdir(mode=PRIVATE_MODE)
            self.tighten_modes()

    def tighten_modes(self) -> None:
        """Folders made by an older Kiwi were 0755: close them (a few lstat calls).

        Not the data folder itself: KIWI_ROOT may name a folder that is not Kiwi's
        alone (/srv, /tmp); only Kiwi's own folders inside it hold container files."""
        for d in self.private_dirs():
            try:
                st = os.lstat(d)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o077:
                os.chmod(d, PRIVATE_MODE)

    def refuse_unreadable(self) -> None:
        """Without root the data folder is closed: say so once instead of failing on a file."""
        for d in (self.root, self.containers_dir, self.images_dir):
            if d.exists() and not os.access(d, os.R_OK | os.X_OK):
                raise KiwiError(
                    f"Kiwi's data folder {self.root} is readable by root only; run this command with sudo"
                )

    # --- identity ---------------------------------------------------------
    @functools.cached_property
    def real_root(self) -> str:
        """The folder's path with symlinks resolved: where it is now."""
        return str(self.root.resolve())

    def folder_id(self) -> str:
        """This data folder's identity: random, made once, moves with the folder.

        Everything Kiwi makes outside the folder (cgroups, veths, address
        leases, filter chains) records it, so that two data folders on one
        host never touch each other's objects. Checked in with the host-wide
        registry before first use, so that a copied folder takes a new one
        before it can touch anything of the original's."""
        if self._folder_id is None:
            path = self.root / FOLDER_ID_FILE
            try:
                text = path.read_text()[:64].strip()
            except FileNotFoundError:
                self.ensure_layout()
                text = self._publish_folder_id(new_container_id())
            if not ID_RE.match(text):
                raise KiwiError(f"{path} is damaged; remove it only if no container of this folder runs")
            self._folder_id = text
            from . import hoststate

            hoststate.check_in(self)
        return self._folder_id

    def _publish_folder_id(self, fid: str) -> str:
        """link() makes the first writer win when two kiwi processes race on a new folder."""
        tmp = self.root / f".{FOLDER_ID_FILE}.{os.getpid()}.tmp"
        tmp.write_text(fid + "\n")
        try:
            os.link(tmp, self.root / FOLDER_ID_FILE)
        except FileExistsError:
            fid = (self.root / FOLDER_ID_FILE).read_text()[:64].strip()
        finally:
            tmp.unlink()
        fsync_dir(self.root)
        return fid

    def renew_folder_id(self) -> str:
        """A copied folder takes a new identity (the original keeps its own)."""
        fid = new_container_id()
        tmp = self.root / f".{FOLDER_ID_FILE}.{os.getpid()}.tmp"
        tmp.write_text(fid + "\n")
        os.rename(tmp, self.root / FOLDER_ID_FILE)
        fsync_dir(self.root)
        self._folder_id = fid
        return fid

    # --- locks ------------------------------------------------------------
    @contextlib.contextmanager
    def _flock(self, name: str, wait: bool = True, what: Callable[[], str] | None = None):
        """wait=False raises BlockingIOError when another kiwi holds it. With what (names
        the thing locked, for a person; asked only then) and a notice set, a wait of more
        than a moment is told."""
        self.ensure_layout()
        fd = os.open(self.locks_dir / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise
                notice = Store.lock_wait_notice
                if what is None or notice is None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                else:
                    from .lockwait import wait_telling

                    wait_telling(fd, what(), notice)
            self.held_locks[name] = fd
            yield fd
        finally:
            if self.held_locks.get(name) == fd:
                del self.held_locks[name]
            os.close(fd)

    def held_container_lock(self, cid: str) -> int | None:
        """The fd of this process's lock on cid: a tool that must keep the container
        locked even if kiwi dies (resize2fs) inherits it."""
        return self.held_locks.get(f"{cid}.lock")

    def lock(self):
        """The global lock: id, name and IP allocation."""
        return self._flock(GLOBAL_LOCK)

    def holds_lock(self) -> bool:
        """Whether this process holds lock() now (ipam prunes only under it)."""
        return GLOBAL_LOCK in self.held_locks

    def container_lock(self, cid: str, wait: bool = True):
        """Every change to one container (start, stop, set, delete, snap ...)."""
        if not is_container_id(cid):
            raise KiwiError(f"invalid container id {cid!r}")
        return self._flock(f"{cid}.lock", wait, what=lambda: f"container {self.container_name(cid) or cid}")

    # --- containers -------------------------------------------------------
    def container_ids(self) -> list[str]:
        try:
            names = os.listdir(self.containers_dir)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if is_container_id(n))

    def started_ids(self) -> set[str] | None:
        """Containers that have a runtime folder (running, mounted, or left by a killed
        start); None when the folder cannot be read (not root)."""
        try:
            return set(os.listdir(self.mounts_dir))
        except FileNotFoundError:
            return set()
        except OSError:
            return None

    def container_config(self, cid: str) -> dict:
        path = self.container_dir(cid) / layout.CONFIG
        try:
            config = read_json(path)
        except FileNotFoundError:
            raise KiwiError(f"no container {cid}; see 'kiwi list'") from None
        if not isinstance(config, dict):
            raise KiwiError(f"{path} is damaged (not a JSON object); fix or remove it")
        return config

    def container_names(self) -> dict[str, str]:
        """name -> id for every container that has one."""
        names = {}
        for cid in self.container_ids():
            try:
                name = read_json(self.container_dir(cid) / layout.CONFIG).get("name")
            except (FileNotFoundError, KiwiError):
                continue
            if name:
                names[name] = cid
        return names

    def container_name(self, cid: str):
        """Its config's name; None when it has none or its config is missing or damaged."""
        try:
            return read_json(self.container_dir(cid) / layout.CONFIG).get("name")
        except (FileNotFoundError, KiwiError):
            return None

    def resolve_container(self, ref: str) -> str:
        """An id, a unique prefix of an id, or a name -> the id."""
        if not ref:
            raise KiwiError("no container given; see 'kiwi list'")
        matches = layout.find_container(ref, self.container_ids(), self.container_name)
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise KiwiError(
                f"{ref!r} matches {len(matches)} containers ({', '.join(matches[:4])}"
                f"{', ...' if len(matches) > 4 else ''}); give more of the id"
            )
        if re.fullmatch(r"[0-9a-f]{13,24}", ref):
            adopted = self.container_by_go_id(ref)
            if adopted:
                return adopted
        raise KiwiError(f"no container named or starting with {ref!r}; see 'kiwi list'")

    def container_by_go_id(self, ref: str) -> str | None:
        """A container adopted from the Go Kiwi, by (a prefix of) its old 24-hex id."""
        for cid in self.container_ids():
            with contextlib.suppress(FileNotFoundError, KiwiError):
                go_id = read_json(self.container_dir(cid) / "config.json").get("go_id")
                if isinstance(go_id, str) and go_id.startswith(ref):
                    return cid
        return None


def check_data_folder(root: Path) -> None:
    """The data folder (KIWI_ROOT) is a folder, or missing (the first write makes it)."""
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return
    except OSError as e:
        raise KiwiError(os_error_message(e, "use the data folder", root)) from None
    if not stat.S_ISDIR(st.st_mode):
        raise KiwiError(f"the data folder {root} is not a folder; set KIWI_ROOT to a folder")


def migrate_old_folder(old: Path, new: Path) -> None:
    """Older Kiwi kept its data in ./.kiwi; move it once to the visible kiwi-data/. Only a
    .kiwi that is provably an older Kiwi's (is_old_kiwi_folder) moves: the folder beside
    the binary may hold someone else's .kiwi, which stays as it is, silently."""
    with contextlib.suppress(OSError):  # not root, or nothing to move
        if not new.exists() and is_old_kiwi_folder(old):
            os.rename(old, new)


# What an older Kiwi's data folder holds besides snapshot files (<name>.kiwi): the Go
# program's images/, containers/, mounts/ (run/ before it), and Kiwi's own folders.
OLD_FOLDER_DIRS = frozenset(("images", "containers", "run", "mounts", "exports", ".tmp", ".locks"))
# Each entry of these holds its record: a container's config, an image's manifest (the
# Go program's) or image.json (Kiwi's).
OLD_FOLDER_RECORDS = {"containers": ("config.json",), "images": ("manifest.json", "image.json")}


def is_old_kiwi_folder(old: Path) -> bool:
    """old is a real folder (no symlink) of the user running Kiwi, writable by no one else,
    holding nothing but a
    data folder's entries (OLD_FOLDER_DIRS as folders, snapshot files <name>.kiwi), with
    images/ or containers/ among them, each of their entries a folder with its record
    (OLD_FOLDER_RECORDS). cffi_build/launcher.c (is_old_kiwi_folder) applies the same
    rule before this runs in the frozen binary: change both together."""
    try:
        st = os.lstat(old)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return False  # not ours, or others could change it between this look and the move
        names = os.listdir(old)
        for name in names:
            mode = os.lstat(old / name).st_mode
            if stat.S_ISREG(mode) and name.endswith(".kiwi") and name != ".kiwi":
                continue
            if not (stat.S_ISDIR(mode) and name in OLD_FOLDER_DIRS):
                return False
            if name in OLD_FOLDER_RECORDS and not all_hold_a_record(old / name, OLD_FOLDER_RECORDS[name]):
                return False
        return any(name in OLD_FOLDER_RECORDS for name in names)
    except OSError:  # missing, vanished or unreadable: nothing proves it is Kiwi's
        return False


def all_hold_a_record(folder: Path, records: tuple[str, ...]) -> bool:
    """Every entry of folder is a folder (no symlink) holding one of records as a file."""
    for name in os.listdir(folder):
        if not stat.S_ISDIR(os.lstat(folder / name).st_mode):
            return False
        if not any(is_regular_file(folder / name / record) for record in records):
            return False
    return True


def is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def migrate_old_runtime(root: Path) -> None:
    """Older Kiwi kept its runtime folders in run/; rename it to mounts/ once. KIWI_ROOT
    may name a shared folder whose run/ is someone else's: only a run/ that is provably
    Kiwi's (is_old_kiwi_runtime) moves, any other stays as it is."""
    old, new = root / "run", root / "mounts"
    with contextlib.suppress(OSError):
        if not new.exists() and is_old_kiwi_runtime(root):
            os.rename(old, new)


def is_old_kiwi_runtime(root: Path) -> bool:
    """run/ is a real folder (no symlink) holding nothing but runtime folders of this data
    folder's containers: each a folder (no symlink) named by the id of a container that
    has its config.json in containers/. An empty run/ needs no move."""
    old = root / "run"
    try:
        if not stat.S_ISDIR(os.lstat(old).st_mode):
            return False
        names = os.listdir(old)
        return bool(names) and all(is_old_runtime_dir(root, name) for name in names)
    except OSError:  # missing, vanished or unreadable: nothing proves it is Kiwi's
        return False


def is_old_runtime_dir(root: Path, name: str) -> bool:
    if not is_container_id(name):
        return False
    run, config = root / "run" / name, root / "containers" / name / "config.json"
    return stat.S_ISDIR(os.lstat(run).st_mode) and stat.S_ISREG(os.lstat(config).st_mode)
