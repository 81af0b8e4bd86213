"""OCI images out: `kiwi export --format oci` (an oci-archive tar) and `kiwi push`.

The image is the base layers (the very blobs the image was pulled as, when
they are still cached; else one layer made from its rootfs) plus, for a
container, its overlay upper directory as the top layer: overlay whiteouts
become `.wh.<name>`, opaque folders `.wh..wh..opq` (archive.py's tree writer
already speaks OCI's layer diff format). Layers are gzip tars with fixed
mtimes, so the same tree gives the same digest and a second push uploads
nothing new.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import secrets
import tarfile
import time
from pathlib import Path

from ..errors import KiwiError
from . import blobs
from .pull import CONFIG_TYPES, OCI_PLATFORMS
from .registry import MANIFEST_TYPES

LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
GZIP_LEVEL = 3  # most of gzip -6's size for a fraction of its time


class Built:
    """An assembled image: blobs in the cache, the manifest and config as bytes."""

    def __init__(self, layers, diff_ids, config_bytes, transient, base_reference):
        self.layers: list[dict] = layers  # descriptors, bottom first
        self.config_bytes = config_bytes
        self.config: dict = {
            "mediaType": CONFIG_TYPES[0],
            "digest": _digest(config_bytes),
            "size": len(config_bytes),
        }
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPES[0],
            "config": self.config,
            "layers": layers,
        }
        self.manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
        self.manifest_digest = _digest(self.manifest_bytes)
        self.transient = transient  # blob paths made only for this export
        self.base_reference = base_reference
        self.diff_ids = diff_ids

    def discard(self) -> None:
        for path in self.transient:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def assemble(store, what: str, progress_for=None) -> Built:
    """The OCI image of container or image `what` (a container wins over an image name)."""
    from .. import images
    from ..snapshots import container_image
    from ..store import NAME_RE

    cid = _container_or_none(store, what)
    if cid is None:
        if not (NAME_RE.match(what) and images.image_exists(store, what)):
            raise KiwiError(f"no container or image named {what}; see 'kiwi list all'")
        meta = images.get_image(store, what)
        layers, diff_ids, transient = base_layers(store, meta, store.image_dir(what) / "rootfs", progress_for)
        return finish(store, meta, layers, diff_ids, transient)
    from .. import privatens
    from ..freeze import frozen_if_running
    from ..storage_ops import finish_interrupted_change

    with store.container_lock(cid):
        config = store.container_config(cid)
        finish_interrupted_change(store, config)
        meta, rootfs = container_image(store, config)
        layers, diff_ids, transient = base_layers(store, meta, Path(rootfs), progress_for)
        try:
            bar = progress_for("container layer") if progress_for else None
            try:
                with frozen_if_running(store, cid):
                    top = privatens.run(write_upper_layer, store, cid, bar)
            finally:
                if bar is not None:
                    bar.close()
            transient.append(Path(top[0]))
        except BaseException:
            for path in transient:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            raise
        layers.append(top[1])
        diff_ids.append(top[2])
    return finish(store, meta, layers, diff_ids, transient)


def _container_or_none(store, what: str):
    from ..store import NAME_RE, is_container_id

    if not (is_container_id(what) or NAME_RE.match(what)):
        return None
    try:
        return store.resolve_container(what)
    except KiwiError:
        return None


def base_layers(store, meta: dict, rootfs: Path, progress_for) -> tuple[list, list, list]:
    """The image's own layers when all are cached (shared with its registry), else one
    layer of its rootfs; returns (descriptors, diff_ids, transient paths)."""
    oci = meta.get("oci") or {}
    layers, diff_ids = oci.get("layers") or [], oci.get("diff_ids") or []
    if layers and len(layers) == len(diff_ids):
        try:
            if all(blobs.blob_path(store, layer["digest"]).exists() for layer in layers):
                return [dict(layer) for layer in layers], list(diff_ids), []
        except (KiwiError, KeyError, TypeError):
            pass
    bar = progress_for(f"layer of image {meta.get('name')}") if progress_for else None
    try:
        path, descriptor, diff_id = write_layer(store, rootfs, upper=False, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    return [descriptor], [diff_id], [path]


def write_upper_layer(store, cid: str, progress):
    """(in a private mount namespace) the container's changes as a layer blob."""
    from .. import privatens

    with privatens.work_folder(store, "oci") as work:
        state = privatens.mount_state(store, cid, os.path.join(work, "state"))
        path, descriptor, diff_id = write_layer(store, Path(state) / "upper", upper=True, progress=progress)
        return str(path), descriptor, diff_id  # a helper's result travels as JSON


def write_layer(store, root: Path, upper: bool, progress=None) -> tuple[Path, dict, str]:
    """A gzip layer of the tree at root into the blob cache: (path, descriptor, diff_id)."""
    from ..archive import END_OF_ARCHIVE, _Counter, _tree_data_bytes
    from ..fstree import more_open_files

    blobs.ensure_cache(store)
    tmp = blobs.cache_dir(store) / f".layer-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with open(tmp, "xb") as raw:
            sink = _LayerSink(raw)
            counter = _Counter(progress, _tree_data_bytes(root))
            with more_open_files():
                _layer_writer()(sink, "", counter, upper).write_root(root)
            sink.write(END_OF_ARCHIVE)
            sink.close()
            raw.flush()
            os.fsync(raw.fileno())
        digest = "sha256:" + sink.out.hash.hexdigest()
        path = blobs.blob_path(store, digest)
        os.rename(tmp, path)
        descriptor = {"mediaType": LAYER_GZIP, "digest": digest, "size": sink.out.size}
        return path, descriptor, "sha256:" + sink.diff.hexdigest()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _layer_writer():
    """archive.py's tree writer, naming members by their path alone (no part prefix)."""
    from ..archive import _TreeWriter

    class LayerTreeWriter(_TreeWriter):
        # The image spec: sparse members "SHOULD NOT be used" (not every tar reads them).
        KEEP_HOLES = False

        def member_name(self, relpath):
            return relpath or "."

    return LayerTreeWriter


class _HashingFile:
    def __init__(self, raw):
        self.raw, self.hash, self.size = raw, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


class _LayerSink:
    """Takes tar bytes: hashed as they are (the diff_id), then gzip, hashed again (the digest)."""

    def __init__(self, raw):
        self.out = _HashingFile(raw)
        self.diff = hashlib.sha256()
        self.files = self.data_bytes = 0
        self.gz = gzip.GzipFile(filename="", fileobj=self.out, mode="wb", compresslevel=GZIP_LEVEL, mtime=0)

    def write(self, data) -> None:
        self.diff.update(data)
        self.gz.write(data)

    def close(self) -> None:
        self.gz.close()


def finish(store, meta: dict, layers: list, diff_ids: list, transient: list) -> Built:
    arch, variant = OCI_PLATFORMS.get(os.uname().machine, (os.uname().machine, None))
    oci = meta.get("oci") or {}
    config = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "architecture": oci.get("architecture") or arch,
        "os": "linux",
        "config": meta.get("config") or {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"kiwi, from image {meta.get('name')}"}],
    }
    if variant and not oci.get("architecture"):
        config["variant"] = variant
    config_bytes = json.dumps(config, sort_keys=True).encode()
    blobs_path = blobs.blob_path(store, _digest(config_bytes))
    if not blobs_path.exists():
        blobs.add_file(store, io.BytesIO(config_bytes))
        transient.append(blobs_path)
    return Built(layers, diff_ids, config_bytes, transient, oci.get("reference"))


# ------------------------------------------------------------------ export


def export_archive(store, what: str, out: Path, tag: str = "latest", progress_for=None) -> Built:
    """Write an oci-archive tar (an OCI image layout in a tar) atomically."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise KiwiError(f"{out} exists already; choose another file name or remove it")
    if not out.parent.is_dir():
        raise KiwiError(f"no folder {out.parent} to write {out.name} in; create it first")
    built = assemble(store, what, progress_for)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        index = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": MANIFEST_TYPES[0],
                    "digest": built.manifest_digest,
                    "size": len(built.manifest_bytes),
                    "annotations": {"org.opencontainers.image.ref.name": tag},
                }
            ],
        }
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with (
            os.fdopen(fd, "wb") as raw,
            tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
            _add_bytes(tar, "index.json", json.dumps(index).encode())
            _add_bytes(tar, _blob_name(built.manifest_digest), built.manifest_bytes)
            _add_bytes(tar, _blob_name(built.config["digest"]), built.config_bytes)
            for layer in built.layers:
                path = blobs.blob_path(store, layer["digest"])
                with open(path, "rb") as f:
                    info = tarfile.TarInfo(_blob_name(layer["digest"]))
                    info.size, info.mode, info.mtime = os.fstat(f.fileno()).st_size, 0o644, 0
                    tar.addfile(info, f)
            raw.flush()
            os.fsync(raw.fileno())
        os.rename(tmp, out)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            from ..errors import os_error_message

            raise KiwiError(os_error_message(e, "write", out)) from None
        raise
    finally:
        built.discard()
    return built


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def _blob_name(digest: str) -> str:
    return "blobs/" + digest.replace(":", "/", 1)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ push


def push(store, what: str, text: str, insecure=False, credentials=None, progress_for=None) -> dict:
    from .reference import parse_reference
    from .registry import Registry

    ref = parse_reference(text)
    if ref.digest:
        raise KiwiError(
            "push to a tag (e.g. registry/name:tag), not to a digest; the digest comes from the content"
        )
    registry = Registry(ref.api_host, ref.registry, insecure, credentials)
    built = assemble(store, what, progress_for)
    try:
        mount_from = _mount_source(built.base_reference, ref)
        counts: dict[str, int] = {}
        for layer in built.layers:
            path = blobs.blob_path(store, layer["digest"])
            done = registry.upload_blob(ref.repository, layer["digest"], path, layer["size"], mount_from)
            counts[done] = counts.get(done, 0) + 1
        config_path = blobs.blob_path(store, built.config["digest"])
        registry.upload_blob(ref.repository, built.config["digest"], config_path, built.config["size"])
        claimed = registry.put_manifest(
            ref.repository, ref.tag or "latest", built.manifest_bytes, MANIFEST_TYPES[0]
        )
        if claimed and claimed != built.manifest_digest:
            raise KiwiError(
                f"the registry {ref.registry} stored the manifest as {claimed}, not {built.manifest_digest}"
            )
    finally:
        built.discard()
    return {"reference": str(ref), "digest": built.manifest_digest, "layers": counts}


def _mount_source(base_reference: str | None, target) -> str | None:
    """The base image's repository, when it lives on the registry we push to."""
    if not base_reference:
        return None
    from .reference import parse_reference

    try:
        base = parse_reference(base_reference)
    except KiwiError:
        return None
    if base.registry == target.registry and base.repository != target.repository:
        return base.repository
    return None
