"""Where Kiwi's host-wide state lives (KIWI_HOST_DIR, default /var/lib/kiwi), with os
alone: a stop takes its bridge's lock there before anything else needs json, pathlib or
contextlib (issue 20). hoststate.py keeps what is in it."""

from __future__ import annotations

import os
import stat

from .errors import KiwiError, os_error_message

HOST_DIR_ENV = "KIWI_HOST_DIR"
DEFAULT_HOST_DIR = "/var/lib/kiwi"


def host_dir_path() -> str:
    """The host-wide state directory, made 0700 on first use."""
    path = os.environ.get(HOST_DIR_ENV) or DEFAULT_HOST_DIR
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and info.st_mode & 0o077:
            os.chmod(path, 0o700)
    except OSError as e:
        raise KiwiError(os_error_message(e, "use", f"{path} for Kiwi's host-wide state")) from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise KiwiError(f"{path} is not a directory owned by root; move it away")
    return path


def lock_path(name: str) -> str:
    """A host-wide lock file (a bridge's: network.bridge_lock_path)."""
    return os.path.join(host_dir_path(), name)
