"""Read an OCI image layout directory (what ``buildah manifest push --all ... oci:DIR`` writes) in
pure Python: the index, each platform's manifest and config, and the final file tree of an image
(layers applied in order, whiteouts honoured), so checks can look inside an image without running
it or trusting a tool's summary.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import posixpath
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from acci_ops.lib.core.errors import AcciOpsError

INDEX_TYPES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")
HEADER_BYTES = 64  # enough for an ELF header's e_ident, e_type and e_machine


@dataclass(frozen=True)
class LayerInfo:
    digest: str
    media_type: str
    size: int


@dataclass(frozen=True)
class ManifestInfo:
    """One platform's image: ``platform`` is ``os/arch[/variant]``; ``size_bytes`` = manifest +
    config + compressed layers (what a pull transfers)."""

    digest: str
    platform: str
    os: str
    architecture: str
    variant: str | None
    config_digest: str
    config: dict[str, Any]
    layers: tuple[LayerInfo, ...]
    size_bytes: int

    @property
    def labels(self) -> dict[str, str]:
        return dict((self.config.get("config") or {}).get("Labels") or {})


@dataclass(frozen=True)
class IndexInfo:
    """An OCI layout holding one multi-platform index (``index_digest``) and its manifests."""

    oci_dir: Path
    index_digest: str
    manifests: tuple[ManifestInfo, ...]

    def by_platform(self) -> dict[str, ManifestInfo]:
        return {m.platform: m for m in self.manifests}


@dataclass(frozen=True)
class FileEntry:
    """A file in an image's final tree. ``header`` holds the first bytes of a regular file."""

    path: str  # absolute, normalised ("/usr/local/bin/httpd")
    type: str  # "file", "dir", "symlink", "hardlink", "other"
    mode: int
    size: int
    uid: int
    gid: int
    linkname: str = ""
    header: bytes = b""
    layer: str = field(default="", compare=False)


def blob_path(oci_dir: Path, digest: str) -> Path:
    algorithm, _, hexdigest = digest.partition(":")
    if not hexdigest or "/" in hexdigest or "/" in algorithm:
        raise AcciOpsError(f"malformed digest {digest!r} in {oci_dir}")
    return Path(oci_dir) / "blobs" / algorithm / hexdigest


def read_blob(oci_dir: Path, digest: str) -> bytes:
    path = blob_path(oci_dir, digest)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AcciOpsError(f"blob {digest} is missing from the OCI layout {oci_dir}") from None
    if digest.startswith("sha256:") and "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise AcciOpsError(f"blob {digest} in {oci_dir} does not match its digest (corrupted layout)")
    return data


def read_json(oci_dir: Path, digest: str) -> dict[str, Any]:
    return json.loads(read_blob(oci_dir, digest))


def _platform_string(os_name: str, arch: str, variant: str | None) -> str:
    return f"{os_name}/{arch}" + (f"/{variant}" if variant else "")


def read_manifest(oci_dir: Path, digest: str, platform: dict[str, Any] | None = None) -> ManifestInfo:
    raw = read_blob(oci_dir, digest)
    manifest = json.loads(raw)
    config_digest = manifest["config"]["digest"]
    config = read_json(oci_dir, config_digest)
    platform = platform or {}
    os_name = platform.get("os") or config.get("os", "")
    arch = platform.get("architecture") or config.get("architecture", "")
    variant = platform.get("variant") or config.get("variant")
    layers = tuple(LayerInfo(layer["digest"], layer.get("mediaType", ""), int(layer.get("size", 0)))
                   for layer in manifest.get("layers", []))
    size = len(raw) + int(manifest["config"].get("size", 0)) + sum(layer.size for layer in layers)
    return ManifestInfo(digest, _platform_string(os_name, arch, variant), os_name, arch, variant, config_digest, config,
                        layers, size)


def index_entry(oci_dir: Path) -> dict[str, Any]:
    """The single multi-platform index that ``index.json`` points at."""
    try:
        top = json.loads((Path(oci_dir) / "index.json").read_text())
    except FileNotFoundError:
        raise AcciOpsError(f"{oci_dir} is not an OCI layout (no index.json)") from None
    indexes = [m for m in top.get("manifests", []) if m.get("mediaType") in INDEX_TYPES]
    if len(indexes) != 1:
        raise AcciOpsError(f"{oci_dir} holds {len(indexes)} image indexes; expected exactly one")
    return indexes[0]


def read_index(oci_dir: Path) -> IndexInfo:
    """The layout's multi-platform index and each platform's manifest and config."""
    entry = index_entry(oci_dir)
    index = read_json(oci_dir, entry["digest"])
    manifests = tuple(read_manifest(oci_dir, m["digest"], m.get("platform"))
                      for m in index.get("manifests", []) if m.get("mediaType", MANIFEST_TYPES[0]) in MANIFEST_TYPES)
    return IndexInfo(Path(oci_dir), entry["digest"], manifests)


def normalize_index(oci_dir: Path, platform_order: Sequence[str]) -> str:
    """Rewrite the layout's index with its manifests in ``platform_order`` and return its digest.

    buildah builds platforms concurrently and lists them in the order they finish, so the same
    commit could give two index digests; a fixed order makes the digest depend on content only."""
    oci_dir = Path(oci_dir)
    top_path = oci_dir / "index.json"
    top = json.loads(top_path.read_text())
    entry = index_entry(oci_dir)
    index = read_json(oci_dir, entry["digest"])
    rank = {p: i for i, p in enumerate(platform_order)}

    def key(m: dict[str, Any]) -> tuple[int, str]:
        p = m.get("platform") or {}
        name = _platform_string(p.get("os", ""), p.get("architecture", ""), p.get("variant"))
        return (rank.get(name, len(rank)), name)

    index["manifests"] = sorted(index.get("manifests", []), key=key)
    index.setdefault("mediaType", INDEX_TYPES[0])
    raw = json.dumps(index, separators=(",", ":")).encode()
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    if digest != entry["digest"]:
        blob_path(oci_dir, digest).write_bytes(raw)
        old = blob_path(oci_dir, entry["digest"])
        entry.update(digest=digest, size=len(raw))
        top["manifests"] = [entry if m.get("mediaType") in INDEX_TYPES else m for m in top.get("manifests", [])]
        top_path.write_text(json.dumps(top, separators=(",", ":")))
        old.unlink(missing_ok=True)
    return digest


def _open_layer(path: Path) -> BinaryIO:
    """The layer's uncompressed tar stream (gzip, zstd or plain, told by the magic bytes)."""
    handle = open(path, "rb")
    magic = handle.read(4)
    handle.seek(0)
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=handle)  # type: ignore[return-value]
    if magic == b"\x28\xb5\x2f\xfd":
        try:
            import zstandard
        except ImportError:
            handle.close()
            raise AcciOpsError(f"layer {path.name} is zstd-compressed; install the Python package zstandard") from None
        return zstandard.ZstdDecompressor().stream_reader(handle)  # type: ignore[return-value]
    return handle


def _norm(name: str) -> str:
    """A tar member name as an absolute normalised path ("./usr/bin/" -> "/usr/bin")."""
    if name.startswith("./"):
        name = name[2:]
    return posixpath.normpath("/" + name.lstrip("/"))


def _entry_type(member: tarfile.TarInfo) -> str:
    if member.isreg():
        return "file"
    if member.isdir():
        return "dir"
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hardlink"
    return "other"


def _remove_tree(files: dict[str, FileEntry], path: str, *, keep_self: bool = False) -> None:
    prefix = path.rstrip("/") + "/"
    for name in [n for n in files if n.startswith(prefix) or (n == path and not keep_self)]:
        del files[name]


def image_files(oci_dir: Path, manifest_digest: str) -> dict[str, FileEntry]:
    """The final file tree of one platform's image: every layer applied in order, whiteouts
    (``.wh.NAME`` deletes NAME, ``.wh..wh..opq`` empties its directory) honoured."""
    manifest = read_json(oci_dir, manifest_digest)
    files: dict[str, FileEntry] = {}
    for layer in manifest.get("layers", []):
        stream = _open_layer(blob_path(oci_dir, layer["digest"]))
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    path = _norm(member.name)
                    directory, base = posixpath.split(path)
                    if base == ".wh..wh..opq":
                        _remove_tree(files, directory, keep_self=True)
                        continue
                    if base.startswith(".wh."):
                        _remove_tree(files, posixpath.join(directory, base[4:]))
                        continue
                    header = b""
                    if member.isreg():
                        extracted = tar.extractfile(member)
                        header = extracted.read(HEADER_BYTES) if extracted else b""
                    if path in files and files[path].type == "dir" and not member.isdir():
                        _remove_tree(files, path)
                    files[path] = FileEntry(path, _entry_type(member), member.mode, member.size, member.uid,
                                            member.gid, member.linkname, header, layer["digest"])
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise AcciOpsError(f"layer {layer['digest']} of {manifest_digest} cannot be read: {exc}") from None
        finally:
            stream.close()
    return files


def iter_files(oci_dir: Path, manifest_digest: str) -> Iterator[FileEntry]:
    """The entries of ``image_files``, sorted by path."""
    files = image_files(oci_dir, manifest_digest)
    for path in sorted(files):
        yield files[path]


def read_file(oci_dir: Path, manifest_digest: str, path: str) -> bytes | None:
    """The content of one regular file in the image's final tree (None when absent or not a file)."""
    entry = image_files(oci_dir, manifest_digest).get(_norm(path))
    if entry is None or entry.type != "file":
        return None
    stream = _open_layer(blob_path(oci_dir, entry.layer))
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if _norm(member.name) == entry.path and member.isreg():
                    extracted = tar.extractfile(member)
                    return extracted.read() if extracted else b""
    finally:
        stream.close()
    return None

