"""./.kiwi beside the binary moves to kiwi-data/ only when it is provably an older Kiwi's
data folder, by one rule applied twice: kiwi/store.py is_old_kiwi_folder (Store.open, the
source tree) and cffi_build/launcher.c is_old_kiwi_folder (the frozen binary's launcher,
before Python runs). Each case runs through both; anything not provably Kiwi's stays as
it is and Kiwi says nothing about it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kiwi.store import is_old_kiwi_folder, migrate_old_folder

HERE = Path(__file__).resolve().parent
GO_DATA = HERE.parent / "fixtures" / "go-kiwi" / "go-data-changes.tar.gz"  # the Go program's
CID = "0123456789ab"


def kiwi_layout(old: Path) -> None:
    """An older Kiwi's data folder: an image, a container, its runtime folder, a snapshot."""
    (old / "images" / "bb" / "rootfs").mkdir(parents=True)
    (old / "images" / "bb" / "image.json").write_text("{}")
    (old / "containers" / CID).mkdir(parents=True)
    (old / "containers" / CID / "config.json").write_text("{}")
    (old / "mounts" / CID).mkdir(parents=True)
    for name in ("exports", ".tmp", ".locks"):
        (old / name).mkdir()
    (old / f"{CID}-s1.kiwi").write_bytes(b"archive")


def go_layout(old: Path) -> None:
    """The Go program's own folder (its fixture) as it kept it in ./.kiwi."""
    subprocess.run(["tar", "-xzf", str(GO_DATA), "-C", str(old.parent)], check=True)
    os.rename(old.parent / "kiwi-data", old)
    (old / "mounts").mkdir()
    (old / "s1.kiwi").write_bytes(b"hsqs")


def replace_with_symlink(path: Path) -> None:
    os.rename(path, path.with_name(path.name + ".moved"))
    os.symlink(path.name + ".moved", path)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path)


PROVEN = {
    "an older Kiwi's folder": kiwi_layout,
    "the Go program's folder": go_layout,
    "only containers/": lambda old: (kiwi_layout(old), remove_tree(old / "images")),
}
NOT_PROVEN = {
    "someone's file in it": lambda old: (old / "settings.toml").write_text("mine"),
    "a folder Kiwi never makes": lambda old: (old / "cache").mkdir(),
    "a file named .kiwi only": lambda old: (old / ".kiwi").write_text(""),
    "a container without its config": lambda old: os.unlink(old / "containers" / CID / "config.json"),
    "an image without its record": lambda old: os.unlink(old / "images" / "bb" / "image.json"),
    "a file among the containers": lambda old: (old / "containers" / "notes").write_text(""),
    "a container folder is a symlink": lambda old: replace_with_symlink(old / "containers" / CID),
    "a config is a symlink": lambda old: replace_with_symlink(old / "containers" / CID / "config.json"),
    "containers/ is a symlink": lambda old: replace_with_symlink(old / "containers"),
    "neither images/ nor containers/": lambda old: [remove_tree(old / n) for n in ("images", "containers")],
    "another user's": lambda old: os.chown(old, 65534, 65534),
    "writable by others": lambda old: os.chmod(old, 0o777),
    ".kiwi is a symlink": replace_with_symlink,
}


def make_old(folder: Path, case: str) -> Path:
    old = folder / ".kiwi"
    if case in PROVEN:
        old.mkdir()
        PROVEN[case](old)
    else:
        old.mkdir()
        kiwi_layout(old)
        NOT_PROVEN[case](old)
    return old


def tree(path: Path) -> list[tuple[str, bool]]:
    """Every path below path (not following symlinks), with whether it is a symlink."""
    found = []
    for parent, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(parent, name)
            found.append((os.path.relpath(full, path), os.path.islink(full)))
    return sorted(found)


def run_python(folder: Path, env: dict) -> None:
    migrate_old_folder(folder / ".kiwi", folder / "kiwi-data")


def run_frozen(folder: Path, env: dict) -> None:
    """The release binary beside the folder, with no KIWI_ROOT: its launcher unpacks into
    kiwi-data/.runtime (after its own migration); Store.open then finds kiwi-data."""
    shutil.copy2(env["KIWI_BIN_PATH"], folder / "kiwi")
    env = {k: v for k, v in env.items() if k not in ("KIWI_ROOT", "KIWI_BIN_PATH")}
    done = subprocess.run(
        [str(folder / "kiwi"), "list", "containers"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    # Nothing about a folder that is not Kiwi's; the Go program's folder gets migrate's hint.
    assert done.stderr == "" or "migrate" in done.stderr, done.stderr


RUNNERS = {"python": run_python, "frozen": run_frozen}


@pytest.fixture
def folder(kiwi, tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    env = {**kiwi.env, "KIWI_BIN_PATH": kiwi.cmd[0]}
    yield folder, env
    shutil.rmtree(folder)


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("case", PROVEN)
def test_an_older_kiwis_folder_moves(folder, case, runner):
    folder, env = folder
    old = make_old(folder, case)
    before = tree(old)
    assert is_old_kiwi_folder(old)
    RUNNERS[runner](folder, env)
    assert not os.path.lexists(old)
    after = [entry for entry in tree(folder / "kiwi-data") if not entry[0].startswith(".runtime")]
    assert after == before


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("case", NOT_PROVEN)
def test_a_folder_not_provably_kiwis_stays(folder, case, runner):
    folder, env = folder
    old = make_old(folder, case)
    before = tree(old) if not old.is_symlink() else os.readlink(old)
    assert not is_old_kiwi_folder(old)
    RUNNERS[runner](folder, env)
    assert (tree(old) if not old.is_symlink() else os.readlink(old)) == before
    assert not (folder / "kiwi-data" / "containers").exists()


@pytest.mark.parametrize("runner", RUNNERS)
def test_an_existing_kiwi_data_is_never_replaced(folder, runner):
    folder, env = folder
    old = make_old(folder, "an older Kiwi's folder")
    (folder / "kiwi-data").mkdir()
    (folder / "kiwi-data" / "mine").write_text("kept")
    before = tree(old)
    RUNNERS[runner](folder, env)
    assert tree(old) == before
    assert (folder / "kiwi-data" / "mine").read_text() == "kept"
