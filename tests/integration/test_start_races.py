"""Red team of the parallel cold start: the parent killed between two of its steps, and the
pid stage 1 reports recycled before the parent puts the container's veth into its network
namespace. Frozen binary under strace (kills and pauses injected at a chosen syscall of
the parent kiwi alone), the test's own bridge, subnet and cgroup parent only."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")


def strace_start(kiwi, cid: str, inject: str, trace: Path, **popen) -> subprocess.Popen:
    """`kiwi start cid` with strace on the parent kiwi alone (no -f: the stages run free).
    inject: strace's -e inject= argument; the syscall it names is the one traced."""
    syscall = inject.split(":", 1)[0]
    return subprocess.Popen(
        ["strace", "-qq", "-o", str(trace), "-e", f"trace={syscall}", "-e", f"inject={inject}"]
        + kiwi.cmd
        + ["start", cid],
        env=kiwi.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def test_a_start_killed_at_its_record_leaves_no_runtime_folder(kiwi, busybox, tmp_path):
    """SIGKILL as the start renames its written runtime.json into place: the next start
    and stop (and cleanup) remove the record's temporary file with the runtime folder."""
    cid = kiwi.create(busybox)
    trace = tmp_path / "trace"
    proc = strace_start(kiwi, cid, "rename:signal=KILL:when=1", trace)
    proc.communicate(timeout=60)
    killed_at = trace.read_text().splitlines()[-2]
    assert "runtime.json" in killed_at, killed_at  # the kill hit the record's rename
    rdir = kiwi.root / "mounts" / cid
    assert [p.name for p in rdir.glob(".runtime.json.*.tmp")]
    assert "stale" in kiwi.out("list")
    kiwi("start", cid)
    kiwi("stop", cid)
    assert not rdir.exists(), sorted(p.name for p in rdir.iterdir())

    # The same kill, then cleanup instead of a start.
    proc = strace_start(kiwi, cid, "rename:signal=KILL:when=1", trace)
    proc.communicate(timeout=60)
    kiwi("cleanup")
    assert not rdir.exists(), sorted(p.name for p in rdir.iterdir())
