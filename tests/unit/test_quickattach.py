"""quickattach.py (the everyday `kiwi attach c -- cmd`) decides, before anything starts,
whether it may enter with what the start recorded: the same container the Store would
resolve, the facts of this build only, and only from a record that is root's alone.
Anything else is Unusual (cmd_attach answers).

A running container is stood in for by this test's own process, as in test_listing.py:
its pid and start time in runtime.json are a live init."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from kiwi import enter, freeze, listing, proc, quickattach, version_text
from kiwi.store import Store

CID, OTHER = "abcdef000001", "abcdef000002"
PROCS = ["/sys/fs/cgroup/pids/kiwi/kiwi-abcdef000001/cgroup.procs"]


def write_json(path, value, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    os.chmod(path, mode)


def facts(**changes) -> dict:
    found = {
        "kiwi": version_text(),
        "procs": PROCS,
        "own_net": True,
        "handler_socket": "/nowhere/sysinfo.sock",
        "seccomp": "0102",
        "seccomp_sysinfo": "030405",
        "caps": "a80425fb",
    }
    return {**found, **changes}


def make_running(data, cid: str, mode: int = 0o600, **record) -> None:
    pid = os.getpid()
    base = {"init_pid": pid, "init_start_time": proc.process_start_time(pid), "enter": facts()}
    write_json(data / "mounts" / cid / "runtime.json", {**base, **record}, mode)


@pytest.fixture
def root(tmp_path, monkeypatch):
    root = tmp_path / "kiwi-data"
    for name in listing.PRIVATE_DIRS:
        (root / name).mkdir(parents=True, mode=0o700)
    for cid, name in ((CID, "web"), (OTHER, "db")):
        write_json(root / "containers" / cid / "config.json", {"id": cid, "name": name, "image": "bb"})
    monkeypatch.setenv("KIWI_ROOT", str(root))
    # kiwi-exec is looked for beside the package, where a build puts it; a clean checkout's
    # unit tier has none, so the package is stood in for by a folder that has one.
    package = tmp_path / "package"
    package.mkdir()
    (package / "kiwi-exec").write_bytes(b"")
    monkeypatch.setattr(enter, "__file__", str(package / "enter.py"))
    return root


def attach_args(container: str, cmd=("true",), **options) -> SimpleNamespace:
    values = {"env": None, "workdir": None, "user": None, "old": None, "session": False}
    return SimpleNamespace(container=container, cmd=list(cmd), **{**values, **options})


@pytest.mark.parametrize(
    "ref", [CID, "web", "abcdef000001", "db", "abc", "abcdef00000", "nope", "ABCDEF000001", ""]
)
def test_it_resolves_what_the_store_resolves(root, ref):
    try:
        expected = Store(root).resolve_container(ref)
    except Exception:  # noqa: BLE001 - any refusal: the quick path must leave it to cmd_attach
        expected = None
    if expected is None:
        with pytest.raises(listing.Unusual):
            quickattach.resolve(str(root), ref)
    else:
        assert quickattach.resolve(str(root), ref) == expected


def test_it_enters_with_the_recorded_facts(root):
    make_running(root, CID)
    attach = quickattach.prepare(attach_args("web"))
    assert callable(attach)  # not run: this test's process is no container's init
    entry = quickattach.entry_of(json.loads((root / "mounts" / CID / "runtime.json").read_text()))
    assert (entry.procs, entry.own_net, entry.caps) == (PROCS, True, "a80425fb")
    assert (entry.program(False), entry.program(True)) == (b"\x01\x02", b"\x03\x04\x05")
    assert os.path.basename(entry.helper) == "kiwi-exec" and os.path.isfile(entry.helper)


@pytest.mark.parametrize(
    "case",
    [
        "stopped",
        "dead init",
        "record of another folder",
        "freeze lease",
        "no facts",
        "another build",
        "procs outside the cgroup mounts",
        "procs climbing out",
        "procs not a list",
        "damaged seccomp",
        "no seccomp",
        "caps not hex",
        "record writable by others",
        "record not root's",
        "record a symlink",
        "not root",
        "empty command",
        "an old session",
        "a managed session",
        "odd image name",
        "no kiwi-exec beside the package",
    ],
)
def test_what_it_leaves_to_cmd_attach(root, case, monkeypatch):
    args, record = attach_args(CID), root / "mounts" / CID / "runtime.json"
    make_running(root, CID)
    assert callable(quickattach.prepare(attach_args(CID)))  # the case alone sends it away
    if case == "stopped":
        record.unlink()
    elif case == "dead init":
        make_running(root, CID, init_pid=2**22 + 1)
    elif case == "record of another folder":
        make_running(root, CID, root="/elsewhere/kiwi-data")
    elif case == "freeze lease":
        write_json(root / "mounts" / CID / freeze.LEASE, {"pid": 1, "start_time": 1})
    elif case == "no facts":
        make_running(root, CID, enter=None)
    elif case == "another build":
        make_running(root, CID, enter=facts(kiwi="kiwi 0.0.1 (an older build)"))
    elif case == "procs outside the cgroup mounts":
        make_running(root, CID, enter=facts(procs=["/tmp/cgroup.procs"]))
    elif case == "procs climbing out":
        make_running(root, CID, enter=facts(procs=["/sys/fs/cgroup/pids/../../../tmp/x/cgroup.procs"]))
    elif case == "procs not a list":
        make_running(root, CID, enter=facts(procs=PROCS[0]))
    elif case == "damaged seccomp":
        make_running(root, CID, enter=facts(seccomp="zz"))
    elif case == "no seccomp":
        make_running(root, CID, enter={k: v for k, v in facts().items() if k != "seccomp_sysinfo"})
    elif case == "caps not hex":
        make_running(root, CID, enter=facts(caps="-1 -t"))
    elif case == "record writable by others":
        os.chmod(record, 0o622)
    elif case == "record not root's":
        os.chown(record, 1000, 1000)
    elif case == "record a symlink":
        target = root / "mounts" / CID / "real.json"
        record.rename(target)
        record.symlink_to(target)
    elif case == "not root":
        monkeypatch.setattr(os, "geteuid", lambda: 1000)
    elif case == "empty command":
        args.cmd = [""]
    elif case == "an old session":
        args.old = "s1"
    elif case == "a managed session":
        args.session = True
    elif case == "odd image name":
        write_json(root / "containers" / CID / "config.json", {"id": CID, "name": "web", "image": "../x"})
    elif case == "no kiwi-exec beside the package":
        os.unlink(os.path.join(os.path.dirname(enter.__file__), "kiwi-exec"))
    with pytest.raises((listing.Unusual, OSError)):
        quickattach.prepare(args)


def test_its_own_errors_are_cmd_attachs(root):
    make_running(root, CID)
    with pytest.raises(Exception, match="invalid --env 'X'") as quick:
        quickattach.prepare(attach_args(CID, env=["X"]))
    assert quick.value.message.startswith("invalid --env")
