"""Containers that come back after a reboot: `set --autostart yes`, `kiwi autostart`
(run at boot by the systemd unit `kiwi autostart --install` writes). Never prints."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .errors import KiwiError
from .store import Store

UNIT_NAME = "kiwi-autostart.service"
DEFAULT_SYSTEMD_DIR = "/etc/systemd/system"


def marked(store: Store) -> list[str]:
    """Ids of the containers with autostart on, in id order."""
    ids = []
    for cid in store.container_ids():
        try:
            if store.container_config(cid).get("autostart"):
                ids.append(cid)
        except KiwiError:
            continue  # a damaged config shows in kiwi list; it is no reason to start nothing
    return ids


def start_marked(store: Store) -> list[tuple[str, str | None]]:
    """Start every marked container that is not running: [(id, error or None)].
    One failure does not keep the others from starting."""
    from . import runtime

    results: list[tuple[str, str | None]] = []
    for cid in marked(store):
        try:
            if runtime.read_runtime(store, cid) is None:
                runtime.start(store, cid)
            results.append((cid, None))
        except KiwiError as e:
            results.append((cid, e.message))
    return results


def systemd_quote(text: str) -> str:
    """One word of an ExecStart=/Environment= line: quoted, with systemd's % and $ escaped."""
    if any(c in text for c in "\n\r\0"):
        raise KiwiError(f"cannot write a systemd unit for the path {text!r}: it holds a line break")
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{text}"'


def unit_text(executable: str, root: str) -> str:
    # Type=oneshot + RemainAfterExit: the unit is "active" once the containers started;
    # KillMode=process: stopping the unit never kills the containers it started.
    return (
        "[Unit]\n"
        "Description=Start the Kiwi containers marked autostart\n"
        "Wants=network-online.target\n"
        "After=network-online.target local-fs.target\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        "KillMode=process\n"
        f"Environment={systemd_quote('KIWI_ROOT=' + root)}\n"
        f"ExecStart={systemd_quote(executable)} autostart\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def install_unit(store: Store, systemd_dir: str | None) -> Path:
    """Write kiwi-autostart.service (atomically) calling this kiwi binary with this data folder."""
    import sys

    from .store import executable_path

    if not getattr(sys, "frozen", False):
        raise KiwiError("install the autostart unit with the built kiwi binary (dist/kiwi), not from source")
    folder = Path(systemd_dir or os.environ.get("KIWI_SYSTEMD_DIR") or DEFAULT_SYSTEMD_DIR)
    if not folder.is_dir():
        raise KiwiError(f"{folder} is not a folder; give the systemd unit folder with --systemd-dir")
    text = unit_text(str(executable_path().resolve()), store.real_root)
    path = folder / UNIT_NAME
    tmp = folder / f".{UNIT_NAME}.{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path
