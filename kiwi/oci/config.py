"""The image config at attach time: Env and WorkingDir for every command, and
Entrypoint + Cmd as the command of `kiwi attach c --` (nothing after --)."""

from __future__ import annotations

from ..errors import KiwiError

# Set by Kiwi per container and terminal; an image cannot change them.
KIWI_OWNED = ("HOSTNAME", "TERM")


def image_config(store, config: dict) -> dict:
    """The container's image's kept config ({} for images without one)."""
    from ..store import read_json

    try:
        found = read_json(store.image_dir(config["image"]) / "image.json").get("config")
    except (OSError, KiwiError, KeyError, ValueError, AttributeError):
        return {}
    return found if isinstance(found, dict) else {}


def exec_defaults(store, config: dict, env: dict) -> list[str]:
    """Add the image's Env to env; returns kiwi-exec options (its WorkingDir)."""
    return image_exec_defaults(image_config(store, config), env)


def image_exec_defaults(image: dict, env: dict) -> list[str]:
    """exec_defaults of an image config already read (quickattach reads it with os alone)."""
    for item in image.get("Env") or []:
        key, eq, value = item.partition("=")
        if eq and key and key not in KIWI_OWNED and "\0" not in item:
            env[key] = value
    workdir = image.get("WorkingDir")
    return (
        ["-w", workdir]
        if isinstance(workdir, str) and workdir.startswith("/") and "\0" not in workdir
        else []
    )


def default_command(store, config: dict) -> list[str]:
    """Entrypoint + Cmd of the container's image, for `kiwi attach c --`."""
    image = image_config(store, config)
    argv = list(image.get("Entrypoint") or []) + list(image.get("Cmd") or [])
    if not argv:
        raise KiwiError(
            f"the image {config.get('image')} has no default command (Entrypoint/Cmd); give one after --"
        )
    return argv
