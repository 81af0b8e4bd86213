"""The working directory of an entering command must never be a host folder.

kiwi-exec joins the container and resolves the command's working directory (`attach -w`,
or the image's WorkingDir) while it still holds host root's capabilities, all of them for a
--privileged container. kiwi-sysinfo lives in the container's PID namespace, chrooted in a
host folder (`<runtime>/lxfs`), so `/proc/<its pid>/cwd` and `/root` inside the container
are magic links to the host: root inside cannot follow them (no CAP_SYS_PTRACE), but a
plain chdir() by kiwi-exec did. Root inside only had to put a symlink to one of them where
the admin's next `attach -w` (or the image's WorkingDir) goes: the command started in the
host folder and `../../..` was the host's / (seventh red-team pass: it read a host file).
"""

from __future__ import annotations

import secrets
from pathlib import Path

from oci.ocitest import Layout, busybox_layer_tar, make_tar

UP = "../" * 24  # from any host folder, up to the host's /


def sysinfo_pid(kiwi, cid: str) -> str:
    found = kiwi.sh(
        cid, "for p in /proc/[0-9]*; do [ $(cat $p/comm) = kiwi-sysinfo ] && echo ${p#/proc/}; done; true"
    )
    pid = found.stdout.strip()
    assert pid.isdigit(), found
    return pid


def host_marker(tmp_path: Path) -> tuple[Path, str]:
    secret = f"host-secret-{secrets.token_hex(8)}"
    marker = tmp_path / "marker"
    marker.write_text(secret + "\n")
    return marker, secret


def probe(marker: Path) -> str:
    return f"pwd; ls -a; ls -a ..; cat {UP}{str(marker).lstrip('/')}; true"


def assert_kept_inside(done, secret: str, path: str) -> None:
    seen = done.stdout + done.stderr
    assert secret not in seen, seen
    assert "sysinfo.sock" not in seen and "runtime.json" not in seen, seen
    assert done.returncode == 1, done
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"kiwi: cannot enter {path} in the container"), done.stderr


def test_attach_workdir_through_a_link_to_kiwi_sysinfo(kiwi, busybox, tmp_path):
    marker, secret = host_marker(tmp_path)
    cid = kiwi.create(busybox, "--privileged")
    pid = sysinfo_pid(kiwi, cid)
    for link in (f"/proc/{pid}/cwd", f"/proc/{pid}/root"):
        # Root inside plants the link where the admin will enter ...
        kiwi.sh(cid, f"rm -f /app; ln -s {link} /app")
        # ... and the admin's next attach there (before the fix: the host's runtime folder,
        # the host's / above it and the marker's text).
        assert_kept_inside(
            kiwi("attach", cid, "-w", "/app", "--", "sh", "-c", probe(marker), check=False), secret, "/app"
        )
        # Named directly, too.
        assert_kept_inside(
            kiwi("attach", cid, "-w", link, "--", "sh", "-c", probe(marker), check=False), secret, link
        )
    # An ordinary working directory, and a symlink to one inside, still work.
    kiwi.sh(cid, "mkdir -p /srv/data && rm -f /app && ln -s /srv/data /app")
    assert kiwi.out("attach", cid, "-w", "/app", "--", "sh", "-c", "pwd -P") == "/srv/data"
    assert kiwi.out("attach", cid, "-w", "/srv/data", "--", "sh", "-c", "pwd -P") == "/srv/data"
    assert kiwi("attach", cid, "-w", "/none", "--", "true", check=False).stderr == (
        "kiwi: cannot enter /none in the container: No such file or directory\n"
    )


def test_image_working_dir_through_a_link_to_kiwi_sysinfo(kiwi, tmp_path):
    """The image's WorkingDir is used by every attach with no -w: root inside links it."""
    layout = Layout(tmp_path / "layout")
    layout.tag(
        layout.image(
            [busybox_layer_tar(), make_tar([("app", "d", None, 0o755)])],
            {"WorkingDir": "/app", "Env": ["PATH=/bin:/sbin"]},
        ),
        "w",
    )
    kiwi("import", "--name", "workdir", tmp_path / "layout")
    marker, secret = host_marker(tmp_path)
    cid = kiwi.create("workdir", "--privileged")
    pid = sysinfo_pid(kiwi, cid)
    kiwi.sh(cid, f"cd / && rm -rf /app && ln -s /proc/{pid}/root /app")
    done = kiwi("attach", cid, "--", "sh", "-c", probe(marker), check=False)
    assert_kept_inside(done, secret, "/app")
