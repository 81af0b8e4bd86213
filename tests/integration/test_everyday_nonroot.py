"""Non-root users (issue 17 item 9): read-only commands show correct data or refuse in
one line; never a running container shown as stopped."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_nobody_never_sees_wrong_data(kiwi, busybox_tar):
    shared = tempfile.mkdtemp(prefix="kiwi-e2nr-", dir="/tmp")  # pytest's own tmp is 0700
    os.chmod(shared, 0o755)
    cache = os.path.join(shared, "cache")  # where the launcher unpacks for nobody
    os.mkdir(cache)
    os.chown(cache, 65534, 65534)
    data = os.path.join(shared, "kiwi-data")
    env = {**kiwi.env, "KIWI_ROOT": data, "XDG_CACHE_HOME": cache}

    def as_nobody(*args):
        return subprocess.run(
            NOBODY + kiwi.cmd + list(args), env=env, capture_output=True, text=True, timeout=60
        )

    try:
        kiwi("import", "--name", "bb", busybox_tar, env=env)
        cid = kiwi("create", "bb", env=env).stdout.strip()
        kiwi("attach", cid, "--", "true", env=env)  # running from now on
        # An admin opened the folders (or an old Kiwi made them 0755): the runtime
        # record of the running container is still root's alone.
        for folder in ("", "containers", "images", "mounts"):
            os.chmod(os.path.join(data, folder), 0o755)
        for args in (["list"], ["list", "all"], ["list", "--json"]):
            done = as_nobody(*args)
            assert done.returncode == 1 and done.stdout == "", done
            assert (
                done.stderr
                == "kiwi: the state of Kiwi's running containers is readable by root only; run: sudo kiwi list\n"
            )
        # An image folder is root's (0700): refused. Opened, images carry no runtime
        # state: the same list as root's.
        done = as_nobody("list", "images")
        assert done.returncode == 1 and done.stdout == "", done
        assert done.stderr == "kiwi: Kiwi's images are readable by root only; run: sudo kiwi list images\n"
        os.chmod(os.path.join(data, "images", "bb"), 0o755)
        done = as_nobody("list", "images", "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == json.loads(kiwi.out("list", "images", "--json", env=env))
        for args in (["inspect", cid], ["stats"], ["logs", cid]):
            done = as_nobody(*args)
            assert done.returncode == 1 and done.stderr.startswith(f"kiwi: '{args[0]}' needs root"), done
        kiwi("stop", cid, env=env)
        kiwi("delete", cid, "--yes", env=env)
    finally:
        kiwi("cleanup", env=env, check=False)
        shutil.rmtree(shared, ignore_errors=True)
