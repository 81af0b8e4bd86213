"""OCI image references: [registry/]repository[:tag][@digest], docker's defaults."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import KiwiError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
# The distribution spec's grammar, slightly simplified.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_HOST = re.compile(r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?")
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


@dataclass(frozen=True)
class Reference:
    registry: str  # as the user wrote it (docker.io for Docker Hub)
    repository: str
    tag: str | None
    digest: str | None

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def version(self) -> str:
        """What to ask /manifests/ for: the digest when there is one."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def looks_like_reference(text: str) -> bool:
    """A registry, tag or digest form; a bare word (`alpine`) is a distribution name."""
    return any(c in text for c in ":/@")


def parse_reference(text: str) -> Reference:
    bad = f"{text!r} is not an image reference; write e.g. alpine:3.20, ghcr.io/owner/image:tag or localhost:5000/name@sha256:..."
    rest, _, digest = text.partition("@")
    if digest and not DIGEST.fullmatch(digest):
        raise KiwiError(f"{bad} (only sha256 digests of 64 hex digits)")
    registry, repository = DOCKER_HUB, rest
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        registry, repository = first, remainder
        if not _HOST.fullmatch(registry):
            raise KiwiError(bad)
    tag = None
    name, colon, maybe_tag = repository.rpartition(":")
    if colon:
        repository, tag = name, maybe_tag
        if not _TAG.fullmatch(tag):
            raise KiwiError(bad)
    if registry in (DOCKER_HUB, "index.docker.io"):
        registry = DOCKER_HUB
        if "/" not in repository:
            repository = f"library/{repository}"
    if not _REPOSITORY.fullmatch(repository) or len(repository) > 255:
        raise KiwiError(bad)
    if tag is None and not digest:
        tag = "latest"
    return Reference(registry, repository, tag, digest or None)


def is_loopback(host: str) -> bool:
    """host[:port] names this machine."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if host.startswith("["):
        name = host.split("]")[0] + "]"
    return name in LOOPBACK_HOSTS or name.startswith("127.")
