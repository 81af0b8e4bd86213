"""`pull`: fetch a distribution's stock rootfs from an LXC-style image server.

The server (KIWI_IMAGE_SERVER, default the public one Incus and LXC use)
publishes `meta/1.0/index-system`, one build per line:

    distro;release;arch;variant;build;path

and in each build folder `rootfs.tar.xz` plus `SHA256SUMS`. We pick the
newest build of the release for the architecture, compare the published sum
with the image we have (equal: nothing is downloaded), download into the
store's staging folder while hashing, refuse anything that does not match,
import it, and keep a portable exports/<image>.kiwi.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import urllib.error
import urllib.request
from pathlib import Path

from .errors import KiwiError
from .fstree import remove_tree

DEFAULT_SERVER = "https://images.linuxcontainers.org"
INDEX_PATH = "meta/1.0/index-system"
ROOTFS_FILE = "rootfs.tar.xz"
SUMS_FILE = "SHA256SUMS"
INDEX_LIMIT = 16 << 20
SUMS_LIMIT = 1 << 20
CHUNK = 1 << 20
TIMEOUT = 60
# Debian's stable releases, oldest first; testing and sid are never a default.
DEBIAN_STABLE = ("buster", "bullseye", "bookworm", "trixie")
MACHINE_TO_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "armhf",
    "armv8l": "armhf",
    "armv7": "armhf",
    "armhf": "armhf",
    "i686": "i386",
    "i386": "i386",
    "ppc64le": "ppc64el",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def pull(store, distro, release=None, arch=None, variant="default", progress=None) -> dict:
    """Make image `distro` the newest build of the release; returns what was done.

    progress(done, total) is called for each phase in turn (download, import,
    export), each starting again from 0.
    Result: {"image", "release", "arch", "build", "url", "sha256",
    "downloaded": bool, "export": path}.
    """
    from .store import validate_name

    validate_name(distro, "image name")
    server = image_server()
    arch = normalise_arch(arch or os.uname().machine)
    builds = parse_index(fetch_text(f"{server}/{INDEX_PATH}", INDEX_LIMIT), server)
    build = choose_build(builds, distro, release, arch, variant)
    folder = f"{server}/{build['path'].strip('/')}"
    url = f"{folder}/{ROOTFS_FILE}"
    published = published_sha256(fetch_text(f"{folder}/{SUMS_FILE}", SUMS_LIMIT), folder)
    result = {
        "image": distro,
        "release": build["release"],
        "arch": arch,
        "build": build["build"],
        "url": url,
        "sha256": published,
        "export": str(store.exports_dir / f"{distro}.kiwi"),
    }
    current = _image_meta(store, distro)
    if current is not None and current.get("sha256") == published:
        _ensure_export(store, distro, current, progress)
        return dict(result, downloaded=False)
    store.ensure_layout()
    tarball = store.tmp_dir / f"pull-{os.getpid()}-{secrets.token_hex(4)}.{ROOTFS_FILE}"
    try:
        download(url, tarball, published, progress)
        _install(store, distro, tarball, url, replace=current is not None, progress=progress)
    finally:
        _unlink_quietly(tarball)
    return dict(result, downloaded=True)


# ------------------------------------------------------------------ server


def image_server() -> str:
    return os.environ.get("KIWI_IMAGE_SERVER", DEFAULT_SERVER).rstrip("/")


def normalise_arch(name: str) -> str:
    return MACHINE_TO_ARCH.get(name, name)


def fetch_text(url: str, limit: int) -> str:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            data = response.read(limit + 1)
    except urllib.error.HTTPError as e:
        raise KiwiError(f"the image server has no {url} (HTTP {e.code}); check KIWI_IMAGE_SERVER") from None
    except (urllib.error.URLError, OSError) as e:
        raise KiwiError(
            f"cannot reach the image server for {url}: {_reason(e)}; check the network or KIWI_IMAGE_SERVER"
        ) from None
    if len(data) > limit:
        raise KiwiError(f"{url} is larger than {limit} bytes; the image server is not usable")
    return data.decode("utf-8", "replace")


def parse_index(text: str, server: str) -> list[dict]:
    builds = []
    for line in text.splitlines():
        fields = line.strip().split(";")
        if len(fields) != 6 or not all(fields):
            continue
        distro, release, arch, variant, build, path = fields
        builds.append(
            {
                "distro": distro,
                "release": release,
                "arch": arch,
                "variant": variant,
                "build": build,
                "path": path,
            }
        )
    if not builds:
        raise KiwiError(f"{server}/{INDEX_PATH} lists no images; check KIWI_IMAGE_SERVER")
    return builds


def choose_build(builds, distro, release, arch, variant) -> dict:
    """The newest build of (distro, release, arch, variant); a clear error lists the choices."""
    of_distro = [b for b in builds if b["distro"] == distro]
    if not of_distro:
        raise KiwiError(
            f"the image server has no {distro!r}; it has: {_listing(b['distro'] for b in builds)}"
        )
    of_arch = [b for b in of_distro if b["arch"] == arch and b["variant"] == variant]
    if not of_arch:
        raise KiwiError(
            f"the image server has no {distro} for architecture {arch}"
            f"{'' if variant == 'default' else f' (variant {variant})'}; "
            f"architectures: {_listing(b['arch'] for b in of_distro)} "
            "(choose with --arch)"
        )
    releases = {b["release"] for b in of_arch}
    release = release or default_release(distro, releases)
    matching = [b for b in of_arch if b["release"] == release]
    if not matching:
        raise KiwiError(
            f"the image server has no {distro} release {release!r} for {arch}; "
            f"releases: {_listing(releases)} (choose with --release)"
        )
    return max(matching, key=lambda b: b["build"])  # builds are named by date, e.g. 20250101_13:00


def default_release(distro: str, releases: set) -> str:
    if distro == "debian":
        stable = [r for r in DEBIAN_STABLE if r in releases]
        if stable:
            return stable[-1]
    numbered = [r for r in releases if re.fullmatch(r"\d+(\.\d+)*", r)]
    if numbered:
        return max(numbered, key=lambda r: tuple(int(p) for p in r.split(".")))
    raise KiwiError(f"choose a {distro} release with --release: {_listing(releases)}")


def published_sha256(text: str, folder: str) -> str:
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].lstrip("*") == ROOTFS_FILE:
            digest = fields[0].lower()
            if re.fullmatch(r"[0-9a-f]{64}", digest):
                return digest
    raise KiwiError(
        f"{folder}/{SUMS_FILE} publishes no sha256 for {ROOTFS_FILE}; refusing an unverifiable download"
    )


def _listing(names) -> str:
    return ", ".join(sorted(set(names))) or "none"


def _reason(e) -> str:
    return str(getattr(e, "reason", None) or e)


# ---------------------------------------------------------------- download


def download(url: str, dest: Path, expected_sha256: str, progress=None) -> None:
    """Download to `dest` (removed on any failure) and check its sha256."""
    hasher = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response, open(dest, "xb") as out:
            total = _content_length(response)
            done = 0
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                hasher.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        if total is not None and done != total:
            raise KiwiError(f"the download of {url} stopped after {done} of {total} bytes; run pull again")
    except urllib.error.HTTPError as e:
        _unlink_quietly(dest)
        raise KiwiError(f"cannot download {url} (HTTP {e.code})") from None
    except (urllib.error.URLError, OSError, EOFError) as e:
        _unlink_quietly(dest)
        raise KiwiError(f"the download of {url} failed ({_reason(e)}); run pull again") from None
    except BaseException:
        _unlink_quietly(dest)
        raise
    if hasher.hexdigest() != expected_sha256:
        _unlink_quietly(dest)
        raise KiwiError(
            f"{url} does not match the sha256 the server publishes; "
            "refusing it (run pull again, or check the server)"
        )


def _content_length(response):
    value = response.headers.get("Content-Length")
    return int(value) if value and value.isdigit() else None


# ------------------------------------------------------------------ import


def _install(store, distro, tarball, url, replace, progress):
    """Import under a staging name, export, then put it in place of any old image."""
    from . import images

    staging = f"{distro}.pull-{os.getpid()}-{secrets.token_hex(3)}"[:63]
    images.import_image(store, staging, tarball, progress=progress, source=url)
    try:
        meta = _image_meta(store, staging)
        meta["name"] = distro
        _write_export(store, distro, meta, store.image_dir(staging) / "rootfs", progress)
        from .store import atomic_write_json

        atomic_write_json(store.image_dir(staging) / "image.json", meta)
        _swap_into_place(store, staging, distro, replace)
    except BaseException:
        remove_tree(store.image_dir(staging), ignore_errors=True)
        raise


def _swap_into_place(store, staging, distro, replace):
    final = store.image_dir(distro)
    with store.lock():
        if replace:
            users = [cid for cid in store.container_ids() if _container_image(store, cid) == distro]
            if users:
                raise KiwiError(
                    f"a newer {distro} is on the server, but containers "
                    f"{', '.join(users)} use the current image; delete them "
                    "first or keep the image you have"
                )
        old = store.tmp_dir / f"pull-{os.getpid()}-old-{distro}"
        if final.exists():
            os.rename(final, old)
        os.rename(store.image_dir(staging), final)
    remove_tree(old, ignore_errors=True)


def _write_export(store, distro, meta, rootfs, progress):
    from . import archive

    store.exports_dir.mkdir(parents=True, exist_ok=True)
    manifest = archive.write_archive(
        store.exports_dir / f"{distro}.kiwi", "image", {}, meta, rootfs, progress=progress
    )
    # Lets `create file.kiwi` recognise this image without hashing it again.
    meta["rootfs_sha256"] = archive.image_content_hash(manifest)


def _ensure_export(store, distro, meta, progress):
    """An up-to-date image keeps its export; rewrite it only if it went missing."""
    if (store.exports_dir / f"{distro}.kiwi").exists():
        return
    _write_export(store, distro, meta, store.image_dir(distro) / "rootfs", progress)
    from .store import atomic_write_json

    atomic_write_json(store.image_dir(distro) / "image.json", meta)


def _image_meta(store, name):
    from .store import read_json

    try:
        return read_json(store.image_dir(name) / "image.json")
    except FileNotFoundError:
        return None


def _container_image(store, cid):
    try:
        return store.container_config(cid).get("image")
    except KiwiError:
        return None


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
