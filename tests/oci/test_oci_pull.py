"""kiwi pull <OCI reference> from a real registry on 127.0.0.1; kiwi import of OCI layouts."""

from __future__ import annotations

import base64
import json
import os
import subprocess

from ocifixtures import *  # noqa: F403 - this module's pytest fixtures
from ocitest import APP_CONFIG, OTHER_ARCH, PASSWORD, USER, host_arch, skopeo_push


def rootfs(kiwi, image):
    return kiwi.root / "images" / image / "rootfs"


def blob_gets(front) -> list[str]:
    return [path for method, path, _ in front.requests if method == "GET" and "/blobs/" in path]


def assert_multi_tree(root):
    keep = root / "opt" / "keep"
    assert (keep / "base.txt").read_bytes() == b"v3\n"
    assert (keep / "base.txt").stat().st_mode & 0o777 == 0o600
    assert (keep / "link").stat().st_ino == (keep / "base.txt").stat().st_ino
    assert os.readlink(keep / "sym") == "base.txt"
    assert not (root / "opt" / "gone").exists(), "whiteout .wh.gone not applied"
    assert sorted(os.listdir(root / "opt" / "opaque")) == ["new1"], "opaque dir kept lower files"
    assert not (root / "etc" / "motd").exists()
    assert (root / "bin" / "busybox").is_file()
    assert not any(name.startswith(".wh.") for _, dirs, files in os.walk(root) for name in dirs + files)


def test_multi_layer_pull_applies_whiteouts_and_caches_layers(kiwi, registry, oci_images, counting_front):
    out = kiwi.out("pull", f"{counting_front.host}/test/multi:1")
    assert "pulled image multi-1" in out
    assert_multi_tree(rootfs(kiwi, "multi-1"))
    assert len(blob_gets(counting_front)) == 5  # config + 4 layers

    # Same image again: nothing downloaded, the image is up to date.
    counting_front.requests.clear()
    assert "already up to date" in kiwi.out("pull", f"{counting_front.host}/test/multi:1")
    assert blob_gets(counting_front) == []

    # An image sharing 3 of its 4 layers: only its config and the new layer travel.
    counting_front.requests.clear()
    kiwi("pull", f"{counting_front.host}/test/multi2:1", "--name", "second")
    assert len(blob_gets(counting_front)) == 2
    assert (rootfs(kiwi, "second") / "opt" / "keep" / "more.txt").read_bytes() == b"more\n"

    images = {i["name"]: i for i in kiwi.json("list", "images")}
    assert images["multi-1"]["source"] == f"{counting_front.host}/test/multi:1"


def test_pull_resolves_the_index_to_this_host_or_arch(kiwi, registry, oci_images):
    kiwi("pull", f"{registry.host}/test/index:1", "--name", "here")
    assert (rootfs(kiwi, "here") / "platform").read_text() == host_arch()
    kiwi("pull", f"{registry.host}/test/index:1", "--name", "there", "--arch", OTHER_ARCH)
    assert (rootfs(kiwi, "there") / "platform").read_text() == OTHER_ARCH
    bad = kiwi("pull", f"{registry.host}/test/index:1", "--name", "nowhere", "--arch", "s390x", check=False)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert "no image for linux/s390x" in bad.stderr and host_arch() in bad.stderr


def test_pull_by_digest_and_bearer_token_flow(kiwi, registry, oci_images, bearer_front):
    digest = subprocess.run(
        [
            "skopeo",
            "inspect",
            "--tls-verify=false",
            "--format",
            "{{.Digest}}",
            f"docker://{registry.host}/test/app:1",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    kiwi("pull", f"{bearer_front.host}/test/app@{digest}", "--name", "app")
    assert bearer_front.tokens_issued, "the Bearer flow was not used"
    assert "scope=repository%3Atest%2Fapp%3Apull" in bearer_front.tokens_issued[0]
    assert any(auth == f"Bearer {bearer_front.token}" for _, _, auth in bearer_front.requests)
    image = next(i for i in kiwi.json("list", "images") if i["name"] == "app")
    assert image["config"] == APP_CONFIG


def test_basic_auth_from_user_option_and_docker_config(kiwi, auth_registry, oci_images, tmp_path):
    skopeo_push(
        oci_images,
        "index",
        f"{auth_registry.host}/private/img:1",
        all_platforms=True,
        creds=f"{USER}:{PASSWORD}",
    )
    ref = f"{auth_registry.host}/private/img:1"
    refused = kiwi("pull", ref, "--name", "anon", check=False)
    assert refused.returncode == 1 and "wants a login" in refused.stderr and refused.stderr.count("\n") == 1
    wrong = kiwi("pull", ref, "--name", "wrong", "--user", f"{USER}:nope", check=False)
    assert wrong.returncode == 1 and "refused" in wrong.stderr
    kiwi("pull", ref, "--name", "byuser", "--user", f"{USER}:{PASSWORD}")
    config = tmp_path / "docker"
    config.mkdir()
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {auth_registry.host: {"auth": auth}}}))
    kiwi("pull", ref, "--name", "byconfig", env={"DOCKER_CONFIG": str(config)})
    names = {i["name"] for i in kiwi.json("list", "images")}
    assert {"byuser", "byconfig"} <= names and not {"anon", "wrong"} & names


def test_app_image_env_workdir_and_default_command(kiwi, registry, oci_images):
    kiwi("pull", f"{registry.host}/test/app:1", "--name", "app")
    cid = kiwi.create("app")
    got = kiwi.sh(cid, 'echo "$GREETING"; pwd').stdout.splitlines()
    assert got == ["hello from the image", "/srv/app"]
    assert kiwi.out("attach", cid, "--") == "entry cmd-arg"


def test_import_oci_archive_layout_folder_and_docker_save(kiwi, oci_images, tmp_path):
    archive = tmp_path / "multi.oci.tar"
    subprocess.run(
        ["skopeo", "copy", "--quiet", f"oci:{oci_images}:multi", f"oci-archive:{archive}"], check=True
    )
    kiwi("import", "--name", "fromarchive", archive)
    assert_multi_tree(rootfs(kiwi, "fromarchive"))

    folder = tmp_path / "one"
    subprocess.run(["skopeo", "copy", "--quiet", f"oci:{oci_images}:app", f"oci:{folder}:app"], check=True)
    kiwi("import", "--name", "fromfolder", folder)
    image = next(i for i in kiwi.json("list", "images") if i["name"] == "fromfolder")
    assert image["config"]["WorkingDir"] == "/srv/app"

    saved = tmp_path / "docker-save.tar"
    subprocess.run(
        ["skopeo", "copy", "--quiet", f"oci:{oci_images}:multi", f"docker-archive:{saved}:test/multi:1"],
        check=True,
    )
    kiwi("import", "--name", "fromdocker", saved)
    assert_multi_tree(rootfs(kiwi, "fromdocker"))
