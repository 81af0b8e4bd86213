"""OCI references, auth challenges, docker config credentials, platform choice."""

from __future__ import annotations

import base64
import json

import pytest

from kiwi.errors import KiwiError
from kiwi.oci.pull import choose_platform, default_name, kept_config
from kiwi.oci.reference import is_loopback, looks_like_reference, parse_reference
from kiwi.oci.registry import docker_config_credentials, parse_challenge

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    "text, registry, repository, tag, digest",
    [
        ("alpine", "docker.io", "library/alpine", "latest", None),
        ("alpine:3.20", "docker.io", "library/alpine", "3.20", None),
        ("docker.io/alpine:3.20", "docker.io", "library/alpine", "3.20", None),
        ("index.docker.io/user/app", "docker.io", "user/app", "latest", None),
        ("user/app:v1", "docker.io", "user/app", "v1", None),
        (f"ghcr.io/owner/img@{DIGEST}", "ghcr.io", "owner/img", None, DIGEST),
        (f"ghcr.io/owner/img:1@{DIGEST}", "ghcr.io", "owner/img", "1", DIGEST),
        ("localhost:5000/x:tag", "localhost:5000", "x", "tag", None),
        ("localhost/x", "localhost", "x", "latest", None),
        ("127.0.0.1:5000/a/b/c", "127.0.0.1:5000", "a/b/c", "latest", None),
    ],
)
def test_parse_reference(text, registry, repository, tag, digest):
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)


def test_docker_hub_api_host_and_version():
    assert parse_reference("alpine").api_host == "registry-1.docker.io"
    assert parse_reference(f"x@{DIGEST}").version == DIGEST
    assert parse_reference("localhost:5000/x").api_host == "localhost:5000"


@pytest.mark.parametrize(
    "text",
    ["UPPER:1", "x@sha256:abc", "x@md5:" + "a" * 32, "x:", "x:-bad", "a//b", "../x", "x y", "ghcr.io/"],
)
def test_bad_references_are_refused(text):
    with pytest.raises(KiwiError, match="not an image reference|only sha256"):
        parse_reference(text)


def test_bare_names_are_distributions():
    assert not looks_like_reference("alpine")
    assert all(looks_like_reference(t) for t in ("alpine:3", "a/b", f"a@{DIGEST}"))


def test_default_names():
    assert default_name(parse_reference("alpine:3.20")) == "alpine-3.20"
    assert default_name(parse_reference("ghcr.io/o/Img".lower())) == "img"
    assert default_name(parse_reference(f"x@{DIGEST}")) == "x-" + "ab" * 6


def test_loopback_hosts():
    assert all(
        is_loopback(h) for h in ("localhost", "localhost:5000", "127.0.0.1:80", "127.9.9.9", "[::1]:5000")
    )
    assert not any(is_loopback(h) for h in ("example.com", "10.0.0.1:5000", "localhost.evil.com"))


def test_parse_challenge():
    kind, params = parse_challenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io"')
    assert kind == "bearer" and params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
    }
    assert parse_challenge('Basic realm="x"')[0] == "basic"


def test_docker_config_credentials(tmp_path, monkeypatch):
    auth = base64.b64encode(b"me:s3cr:et").decode()
    (tmp_path / "config.json").write_text(
        json.dumps(
            {"auths": {"https://index.docker.io/v1/": {"auth": auth}, "r.example:5000": {"auth": auth}}}
        )
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert docker_config_credentials("docker.io") == ("me", "s3cr:et")
    assert docker_config_credentials("r.example:5000") == ("me", "s3cr:et")
    assert docker_config_credentials("other.example") is None


def test_choose_platform():
    def entry(arch, variant=None, os_="linux"):
        platform = {"os": os_, "architecture": arch} | ({"variant": variant} if variant else {})
        return {"digest": f"{arch}{variant}", "platform": platform}

    manifests = [
        entry("amd64", os_="windows"),
        entry("amd64"),
        entry("arm", "v6"),
        entry("arm", "v7"),
        entry("arm64", "v8"),
    ]
    assert choose_platform(manifests, "x86_64", "x")["digest"] == "amd64None"
    assert choose_platform(manifests, "armhf", "x")["digest"] == "armv7"
    assert choose_platform(manifests, "aarch64", "x")["digest"] == "arm64v8"
    with pytest.raises(KiwiError, match="no image for linux/s390x; it has: amd64, arm/v6, arm/v7, arm64/v8"):
        choose_platform(manifests, "s390x", "x")


def test_kept_config_drops_damaged_values():
    config = {
        "config": {"Env": ["A=1", 2], "Cmd": ["x"], "WorkingDir": 5, "User": "app", "Volumes": {"/v": {}}}
    }
    assert kept_config(config) == {"Cmd": ["x"], "User": "app"}
