"""OCI images in: `kiwi pull <reference>` and `kiwi import` of an OCI layout or `docker save` tar.

Every source gives the same three things: a manifest (an index is first
resolved to this host's platform), a config, and layer blobs, each checked
against its digest before use and kept in the blob cache. The layers are
applied into a staging folder, which becomes the image only when all went well.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tarfile
from pathlib import Path

from ..errors import KiwiError
from ..store import utc_now
from . import blobs
from .reference import DIGEST, parse_reference
from .registry import INDEX_TYPES, MANIFEST_LIMIT, MANIFEST_TYPES, Registry

CONFIG_LIMIT = 8 << 20
CONFIG_TYPES = ("application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json")
LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
)
# The config keys a container uses (attach) and `list images --json` shows.
KEPT_CONFIG: dict[str, type] = {"Env": list, "WorkingDir": str, "User": str, "Entrypoint": list, "Cmd": list}
# uname -m / Kiwi / Debian names -> OCI (architecture, variant)
OCI_PLATFORMS = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"),
    "armhf": ("arm", "v7"),
    "arm": ("arm", "v7"),
    "i686": ("386", None),
    "i386": ("386", None),
    "386": ("386", None),
    "ppc64le": ("ppc64le", None),
    "ppc64el": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}


# ------------------------------------------------------------------ sources


class RegistrySource:
    def __init__(self, store, ref, insecure=False, credentials=None):
        self.store, self.ref = store, ref
        self.registry = Registry(ref.api_host, ref.registry, insecure, credentials)
        self.label = str(ref)

    def top_manifest(self) -> tuple[bytes, str]:
        body, media_type, claimed = self.registry.get_manifest(self.ref.repository, self.ref.version)
        expected = self.ref.digest or (claimed if claimed and DIGEST.fullmatch(claimed) else None)
        digest = sha256_digest(body)
        if expected and digest != expected:
            raise KiwiError(
                f"the manifest of {self.ref} does not match its digest {expected}; refusing the image"
            )
        return body, media_type

    def manifest(self, descriptor) -> bytes:
        digest, size = blobs.descriptor_digest_size(descriptor)
        if size > MANIFEST_LIMIT:
            raise KiwiError(
                f"a manifest of {self.ref} is larger than {MANIFEST_LIMIT >> 20} MiB; refusing it"
            )
        body, _, _ = self.registry.get_manifest(self.ref.repository, digest)
        if sha256_digest(body) != digest:
            raise KiwiError(
                f"the manifest {digest} of {self.ref} does not match its digest; refusing the image"
            )
        return body

    def blob(self, descriptor, progress=None) -> Path:
        return blobs.fetch(self.store, self.registry, self.ref.repository, descriptor, progress)


class LayoutSource:
    """An OCI image layout: a folder, or a tar of one (skopeo's oci-archive:)."""

    def __init__(self, store, path: Path, tar: tarfile.TarFile | None = None):
        self.store, self.path, self.tar = store, path, tar
        self.label = str(path)
        if self.read("oci-layout", 1 << 16) is None:
            raise KiwiError(f"{path} is not an OCI image layout (no oci-layout file)")

    def read(self, name: str, limit: int) -> bytes | None:
        f = self.open(name)
        if f is None:
            return None
        with f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise KiwiError(f"{name} in {self.path} is larger than {limit >> 20} MiB; refusing it")
        return data

    def open(self, name: str):
        if self.tar is None:
            try:
                return open(self.path / name, "rb")
            except FileNotFoundError:
                return None
            except OSError as e:
                raise KiwiError(f"cannot read {self.path / name}: {e.strerror}") from None
        member = archive_member(self.tar, name)
        return self.tar.extractfile(member) if member is not None else None

    def top_manifest(self) -> tuple[bytes, str]:
        body = self.read("index.json", MANIFEST_LIMIT)
        if body is None:
            raise KiwiError(f"{self.path} has no index.json; it is not a complete OCI image layout")
        return body, INDEX_TYPES[0]

    def manifest(self, descriptor) -> bytes:
        digest, size = blobs.descriptor_digest_size(descriptor)
        if size > MANIFEST_LIMIT:
            raise KiwiError(
                f"a manifest in {self.path} is larger than {MANIFEST_LIMIT >> 20} MiB; refusing it"
            )
        body = self.read(blob_name(digest), MANIFEST_LIMIT)
        if body is None or sha256_digest(body) != digest:
            raise KiwiError(f"the manifest {digest} in {self.path} is missing or damaged")
        return body

    def blob(self, descriptor, progress=None) -> Path:
        digest, size = blobs.descriptor_digest_size(descriptor)
        cached = blobs.blob_path(self.store, digest)
        if cached.exists():
            return cached
        f = self.open(blob_name(digest))
        if f is None:
            raise KiwiError(f"{self.path} lacks the blob {digest}; it is not a complete image")
        with f:
            return blobs.add_file(self.store, f, digest, size)[0]


# ------------------------------------------------------------------ pull


def pull(store, text, name=None, arch=None, insecure=False, credentials=None, progress_for=None) -> dict:
    """Pull an OCI reference into image `name` (default from the reference)."""
    from ..store import validate_name

    ref = parse_reference(text)
    name = validate_name(name or default_name(ref), "image name")
    source = RegistrySource(store, ref, insecure, credentials)
    manifest, manifest_digest = resolve_manifest(source, arch)
    current = _image_meta(store, name)
    if current is not None and (current.get("oci") or {}).get("manifest_digest") == manifest_digest:
        return {"image": name, "downloaded": False, "digest": manifest_digest}
    if current is not None and not (current.get("oci") or {}).get("reference"):
        raise KiwiError(
            f"an image named {name} already exists and did not come from a registry; choose another with --name"
        )
    install(
        store, name, source, manifest, manifest_digest, str(ref), progress_for, replace=current is not None
    )
    return {"image": name, "downloaded": True, "digest": manifest_digest}


def import_image_archive(store, name, path, progress_for=None) -> dict | None:
    """`kiwi import` of an OCI layout (folder or tar) or a docker save tar; None when
    path is neither (then it is a rootfs archive)."""
    from ..images import _refuse_existing
    from ..store import validate_name

    path = Path(path)
    validate_name(name, "image name")
    if path.is_dir():
        _refuse_existing(store, name)
        source = LayoutSource(store, path)
        return _import_from(store, name, source, progress_for)
    tar = open_image_tar(path)
    if tar is None:
        return None
    with tar:
        _refuse_existing(store, name)
        if archive_member(tar, "oci-layout") is not None:
            return _import_from(store, name, LayoutSource(store, path, tar), progress_for)
        return _import_from(store, name, DockerSaveSource(store, path, tar), progress_for)


def _import_from(store, name, source, progress_for) -> dict:
    manifest, digest = resolve_manifest(source, None)
    return install(store, name, source, manifest, digest, str(source.label), progress_for, replace=False)


def resolve_manifest(source, arch) -> tuple[dict, str]:
    """The image manifest for this platform (an index resolved), and its digest."""
    body, media_type = source.top_manifest()
    document = parse_json(body, "the image manifest")
    media_type = document.get("mediaType") or media_type
    digest = sha256_digest(body)
    for _ in range(2):  # an index may point at one nested index (docker save's layouts do)
        if media_type not in INDEX_TYPES and "manifests" not in document:
            break
        chosen = choose_platform(document.get("manifests"), arch, source.label)
        body = source.manifest(chosen)
        digest = chosen["digest"]
        document = parse_json(body, "the image manifest")
        media_type = document.get("mediaType") or chosen.get("mediaType") or ""
    if media_type not in MANIFEST_TYPES and not ("config" in document and "layers" in document):
        raise KiwiError(
            f"{source.label} has a manifest of type {media_type or 'unknown'}, which Kiwi cannot use"
        )
    return document, digest


def choose_platform(manifests, arch, label) -> dict:
    if not isinstance(manifests, list) or not manifests:
        raise KiwiError(f"{label} lists no images")
    wanted, variant = OCI_PLATFORMS.get(arch or os.uname().machine, (arch, None))
    usable = []
    for m in manifests:
        platform = m.get("platform") if isinstance(m, dict) else None
        if platform is None and len(manifests) == 1:
            return m  # a layout with one image and no platform said
        if isinstance(platform, dict) and platform.get("os") == "linux":
            usable.append((m, platform))
    matching = [m for m, p in usable if p.get("architecture") == wanted]
    if variant:
        matching = [m for m in matching if m["platform"].get("variant") in (variant, None)] or matching
    if not matching:
        found = sorted(
            {f"{p.get('architecture')}{'/' + p['variant'] if p.get('variant') else ''}" for _, p in usable}
        )
        raise KiwiError(
            f"{label} has no image for linux/{wanted}; it has: {', '.join(found) or 'none for linux'} (choose with --arch)"
        )
    return matching[0]


def install(store, name, source, manifest, digest, origin, progress_for, replace) -> dict:
    config_desc = manifest.get("config")
    _, config_size = blobs.descriptor_digest_size(config_desc)
    if config_size > CONFIG_LIMIT:
        raise KiwiError(
            f"the image config of {source.label} is larger than {CONFIG_LIMIT >> 20} MiB; refusing it"
        )
    config_doc = parse_json(source.blob(config_desc).read_bytes(), "the image config")
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise KiwiError(f"the manifest of {source.label} lists no layers; the image is damaged")
    for layer in layers:
        media_type = layer.get("mediaType") if isinstance(layer, dict) else None
        if media_type not in LAYER_TYPES:
            raise KiwiError(f"{source.label} has a layer of type {media_type}, which Kiwi cannot use")
    paths = []
    for i, layer in enumerate(layers):
        bar = progress_for(f"layer {i + 1}/{len(layers)} {layer['digest'][7:19]}") if progress_for else None
        try:
            paths.append(source.blob(layer, bar))
        finally:
            if bar is not None:
                bar.close()
    meta = {
        "source": origin,
        "sha256": digest.split(":", 1)[1],
        "config": kept_config(config_doc),
        "oci": {
            "reference": origin if isinstance(source, RegistrySource) else None,
            "manifest_digest": digest,
            "layers": [{k: layer[k] for k in ("mediaType", "digest", "size")} for layer in layers],
            "diff_ids": ((config_doc.get("rootfs") or {}).get("diff_ids") or []),
            "architecture": config_doc.get("architecture"),
        },
    }
    target = name if not replace else f"{name}.pull-{os.getpid()}-{secrets.token_hex(3)}"[:63]
    built = build_image(store, target, paths, meta, progress_for)
    if replace:
        from ..fstree import remove_tree
        from ..pull import _swap_into_place
        from ..store import atomic_write_json

        try:
            built["name"] = name
            atomic_write_json(store.image_dir(target) / "image.json", built)
            _swap_into_place(store, target, name, replace=True)
        except BaseException:
            remove_tree(store.image_dir(target), ignore_errors=True)
            raise
    return built


def build_image(store, name, layer_paths, meta, progress_for) -> dict:
    """Apply the layers in a staging folder and commit it as image `name`."""
    from .. import images
    from ..snapshots import tree_size
    from ..store import atomic_write_json
    from .layers import apply_layers

    with images.staging_folder(store, name) as staging:
        bars = []

        def layer_progress(i):
            if progress_for is None:
                return None
            bars.append(progress_for(f"applying layer {i + 1}/{len(layer_paths)}"))
            return bars[-1]

        try:
            files = apply_layers(staging / "rootfs", layer_paths, layer_progress)
        finally:
            for bar in bars:
                bar.close()
        size = tree_size(str(staging / "rootfs"))
        info = {"name": name, **meta, "size": size, "created": utc_now(), "files": files}
        atomic_write_json(staging / "image.json", info)
        images._commit(store, name, staging)
        return info


# ------------------------------------------------------------------ docker save


class DockerSaveSource:
    """`docker save`'s manifest.json format; layers are checked against the config's diff_ids."""

    def __init__(self, store, path: Path, tar: tarfile.TarFile):
        self.store, self.path, self.tar, self.label = store, path, tar, str(path)
        member = archive_member(tar, "manifest.json")
        if member is None:
            raise KiwiError(f"{path} is neither an OCI layout nor a docker save archive")
        f = tar.extractfile(member)
        body = f.read(MANIFEST_LIMIT + 1) if f else b""
        entries = parse_json(body, f"manifest.json in {path}")
        if not isinstance(entries, list) or len(entries) != 1 or not isinstance(entries[0], dict):
            raise KiwiError(f"{path} must hold exactly one image (docker save of one image)")
        self.entry = entries[0]

    def top_manifest(self) -> tuple[bytes, str]:
        config_name = self.entry.get("Config")
        layer_names = self.entry.get("Layers")
        if not isinstance(config_name, str) or not isinstance(layer_names, list):
            raise KiwiError(f"manifest.json in {self.path} is damaged")
        config_hex = re.search(r"([0-9a-f]{64})(\.json)?$", config_name)
        if not config_hex:
            raise KiwiError(f"{self.path} names its config {config_name!r}, not by digest; it is damaged")
        config_path, config_digest, config_size = self.add(config_name, "sha256:" + config_hex.group(1))
        config = parse_json(config_path.read_bytes(), "the image config")
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        if len(diff_ids) != len(layer_names):
            raise KiwiError(f"{self.path} has {len(layer_names)} layers but its config lists {len(diff_ids)}")
        layers = []
        for layer_name, diff_id in zip(layer_names, diff_ids, strict=True):
            _, digest, size = self.add(layer_name, diff_id)
            layers.append({"mediaType": LAYER_TYPES[0], "digest": digest, "size": size})
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPES[0],
            "config": {"mediaType": CONFIG_TYPES[0], "digest": config_digest, "size": config_size},
            "layers": layers,
        }
        return json.dumps(manifest).encode(), MANIFEST_TYPES[0]

    def add(self, name, digest) -> tuple[Path, str, int]:
        member = archive_member(self.tar, name) if isinstance(name, str) else None
        if member is None or not member.isreg():
            raise KiwiError(f"{self.path} lacks {name!r}; it is not a complete docker save archive")
        cached = blobs.blob_path(self.store, digest)
        if cached.exists():
            return cached, digest, cached.stat().st_size
        return blobs.add_file(self.store, self.tar.extractfile(member), digest)

    def manifest(self, descriptor) -> bytes:
        raise KiwiError(f"{self.path} is damaged (an index inside a docker save manifest)")

    def blob(self, descriptor, progress=None) -> Path:
        return blobs.blob_path(self.store, descriptor["digest"])  # added by top_manifest


# ------------------------------------------------------------------ helpers


def open_image_tar(path: Path) -> tarfile.TarFile | None:
    """An uncompressed tar holding oci-layout or manifest.json at its top, else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return None
    if len(head) < 512 or head[257:262] != b"ustar":
        return None
    from ..extract import StrictTarInfo

    try:
        # Every header is read to find those two: with extract.py's bounds on what one
        # member's metadata may hold (a 20 MB tar of one sparse map took 530 MB here before).
        tar = tarfile.open(path, "r:", tarinfo=StrictTarInfo)
    except (tarfile.TarError, OSError):
        return None
    if not is_image_tar(tar):
        tar.close()
        return None
    return tar


def is_image_tar(tar: tarfile.TarFile) -> bool:
    """Whether the tar holds oci-layout or manifest.json; False for a damaged or hostile
    one too: extracting it as a rootfs archive says what is wrong with it, in one line."""
    try:
        return (
            archive_member(tar, "oci-layout") is not None or archive_member(tar, "manifest.json") is not None
        )
    except tarfile.TarError:
        return False


def archive_member(tar: tarfile.TarFile, name: str):
    """The regular member called name (./name too), never a link."""
    for candidate in (name, f"./{name}"):
        try:
            member = tar.getmember(candidate)
        except KeyError:
            continue
        return member if member.isreg() else None
    return None


def blob_name(digest: str) -> str:
    return "blobs/" + digest.replace(":", "/", 1)


def sha256_digest(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def parse_json(body: bytes, what: str):
    try:
        document = json.loads(body)
    except ValueError:
        raise KiwiError(f"{what} is not valid JSON; the image is damaged") from None
    if not isinstance(document, (dict, list)):
        raise KiwiError(f"{what} is damaged")
    return document


def kept_config(config_doc: dict) -> dict:
    """Env, WorkingDir, User, Entrypoint, Cmd, type-checked (a damaged value is dropped)."""
    config = config_doc.get("config") if isinstance(config_doc, dict) else None
    kept: dict = {}
    for key, kind in KEPT_CONFIG.items():
        value = (config or {}).get(key)
        if kind is str:
            usable = isinstance(value, str)
        else:
            usable = isinstance(value, list) and all(isinstance(v, str) for v in value)
        if usable and value:
            kept[key] = value
    return kept


def default_name(ref) -> str:
    """alpine:3.20 -> alpine-3.20; x@sha256:abc.. -> x-abc...; latest is left out."""
    base = ref.repository.rsplit("/", 1)[-1]
    if ref.digest:
        base += "-" + ref.digest[7:19]
    elif ref.tag and ref.tag != "latest":
        base += "-" + ref.tag
    name = re.sub(r"[^a-z0-9_.-]", "-", base.lower()).lstrip("._-")[:63]
    return name or "image"


def _image_meta(store, name):
    from ..store import read_json

    try:
        return read_json(store.image_dir(name) / "image.json")
    except FileNotFoundError:
        return None
