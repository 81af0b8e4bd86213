"""Store.open renames an older Kiwi's run/ to mounts/, and only that: KIWI_ROOT may name
a shared folder whose run/ is someone else's, which the frozen kiwi leaves as it is."""

from __future__ import annotations

import os


def test_a_shared_folders_own_run_folder_is_left_alone(kiwi, busybox_tar):
    run = kiwi.root / "run"
    (run / "0123456789ab").mkdir(parents=True)  # named like a container id, but no container
    (run / "app.pid").write_text("4242\n")
    kiwi("list")
    kiwi("import", "--name", "busybox", busybox_tar)  # the first command that writes
    cid = kiwi.create("busybox")
    assert kiwi.sh(cid, "echo up").stdout == "up\n"
    kiwi("stop", cid)
    assert sorted(os.listdir(run)) == ["0123456789ab", "app.pid"]
    assert (run / "app.pid").read_text() == "4242\n"
    assert (kiwi.root / "mounts").is_dir()


def test_an_older_kiwis_run_folder_becomes_mounts(kiwi, busybox):
    cid = kiwi.create(busybox)
    mounts, run = kiwi.root / "mounts", kiwi.root / "run"
    os.rename(mounts, run)  # the layout an older Kiwi left: its runtime folders in run/
    (run / cid / "root").mkdir(parents=True)
    assert kiwi.json("list", "containers")[0]["status"] in ("stopped", "stale")
    assert not run.exists()
    assert (mounts / cid / "root").is_dir()
    assert kiwi.sh(cid, "echo up").stdout == "up\n"
    kiwi("stop", cid)
