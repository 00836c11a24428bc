"""Read an OCI image layout directory (what ``buildah manifest push --all ... oci:DIR`` writes) in
pure Python: the index, each platform's manifest and config, and the final file tree of an image
(layers applied in order, whiteouts honoured), so checks can look inside an image without running
it or trusting a tool's summary.

The layers come from the source repository's Dockerfile, so they are read as hostile input: the
work is linear in what a layer holds (a whiteout costs the entries it deletes, not a scan of the
whole tree), and entries per layer, in the file map and over the whole image are capped, each
refusal one line.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import posixpath
import shutil
import tarfile
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from acci_ops.lib.core.errors import AcciOpsError

INDEX_TYPES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")
HEADER_BYTES = 64  # enough for an ELF header's e_ident, e_type and e_machine
# Caps on one platform's file tree. A distroless ACCI Framework image holds a few thousand files;
# a Debian base about 10,000. What a hostile layer could make us hold and walk stops well before
# memory does (a file entry is about 300 bytes).
MAX_LAYER_ENTRIES = 200_000  # tar members in one layer, whiteouts included
MAX_IMAGE_ENTRIES = 200_000  # paths in the file map at any time (directories implied by a path too)
MAX_IMAGE_MEMBERS = 1_000_000  # tar members over all layers of one image
MAX_PATH_BYTES = 4096  # PATH_MAX
MAX_CAPTURE_BYTES = 1 << 20  # whole content kept for a few small files a check asks for (/etc/passwd)
MIN_FREE_MB = 512  # as build.MIN_FREE_MB: checked again before each platform's layers are read


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
    content: bytes = field(default=b"", compare=False, repr=False)  # only for image_files(capture=...)


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


class LayerRefused(AcciOpsError):
    """A layer is beyond what the checks agree to read (one line: which cap, which layer)."""


def check_free_space(directory: Path, min_free_mb: int = MIN_FREE_MB) -> None:
    """Fail fast, in one line, when the disk holding the staged image is (nearly) full: the layers
    of a later platform may have filled it since the build checked."""
    free_mb = shutil.disk_usage(directory).free // (1024 * 1024)
    if free_mb < min_free_mb:
        raise AcciOpsError(f"not enough disk space to read the image's layers under {directory}: {free_mb} MB free, "
                           f"need at least {min_free_mb} MB (ACCI_IMAGE_STORAGE_DIR)")


class _Tree:
    """The file map plus each directory's children, so that deleting a subtree costs its size.

    ``files``: path -> entry as in the tar; ``kids``: directory -> its children's paths (also of
    directories that have no entry of their own, implied by a deeper path); ``known``: every path
    registered in its parent's ``kids``."""

    def __init__(self) -> None:
        self.files: dict[str, FileEntry] = {}
        self.kids: dict[str, set[str]] = {}
        self.known: set[str] = set()

    def _register(self, path: str) -> None:
        while path != "/" and path not in self.known:
            self.known.add(path)
            parent = posixpath.dirname(path)
            self.kids.setdefault(parent, set()).add(path)
            path = parent

    def _drop(self, path: str) -> None:
        """Forget ``path`` and everything below it (``path`` already unlinked from its parent)."""
        stack = [path]
        while stack:
            current = stack.pop()
            self.files.pop(current, None)
            self.known.discard(current)
            stack.extend(self.kids.pop(current, ()))

    def remove(self, path: str) -> None:
        if path in self.known:
            self.kids.get(posixpath.dirname(path), set()).discard(path)
            self._drop(path)

    def empty(self, directory: str) -> None:
        """An opaque whiteout: everything below ``directory`` goes, the directory stays."""
        for child in self.kids.pop(directory, ()):
            self._drop(child)

    def add(self, entry: FileEntry) -> None:
        old = self.files.get(entry.path)
        if old is not None and old.type == "dir" and entry.type != "dir":
            self.remove(entry.path)
        self.files[entry.path] = entry
        self._register(entry.path)


def image_files(oci_dir: Path, manifest_digest: str, *, capture: Collection[str] = (),
                max_layer_entries: int = MAX_LAYER_ENTRIES, max_entries: int = MAX_IMAGE_ENTRIES,
                max_members: int = MAX_IMAGE_MEMBERS, min_free_mb: int = MIN_FREE_MB) -> dict[str, FileEntry]:
    """The final file tree of one platform's image: every layer applied in order, whiteouts
    (``.wh.NAME`` deletes NAME, ``.wh..wh..opq`` empties its directory) honoured.

    A layer's whiteouts apply to the layers below it (OCI image spec), so each layer is read whole
    first, then its whiteouts applied, then its entries. ``capture``: paths whose whole content
    (up to 1 MiB) is kept in ``FileEntry.content``. ``LayerRefused`` (one line) beyond a cap."""
    check_free_space(Path(oci_dir), min_free_mb)
    manifest = read_json(oci_dir, manifest_digest)
    tree = _Tree()
    wanted = {_norm(p) for p in capture}
    members = 0
    for layer in manifest.get("layers", []):
        digest = layer["digest"]
        short = digest[:19]
        stream = _open_layer(blob_path(oci_dir, digest))
        entries: list[FileEntry] = []
        deleted: list[str] = []
        emptied: list[str] = []
        count = 0
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    count += 1
                    if count > max_layer_entries:
                        raise LayerRefused(f"layer {short} of {manifest_digest[:19]} has more than "
                                           f"{max_layer_entries:,} entries; refused (a hostile or broken layer)")
                    if members + count > max_members:
                        raise LayerRefused(f"image {manifest_digest[:19]} has more than {max_members:,} entries "
                                           "over its layers; refused")
                    if len(member.name) > MAX_PATH_BYTES:
                        raise LayerRefused(f"layer {short} has a path of {len(member.name):,} bytes, longer than "
                                           f"{MAX_PATH_BYTES}; refused")
                    path = _norm(member.name)
                    directory, base = posixpath.split(path)
                    if base == ".wh..wh..opq":
                        emptied.append(directory)
                        continue
                    if base.startswith(".wh..wh."):
                        continue  # aufs bookkeeping (.wh..wh.plnk), not a whiteout
                    if base.startswith(".wh."):
                        deleted.append(posixpath.join(directory, base[4:]))
                        continue
                    header = content = b""
                    if member.isreg():
                        extracted = tar.extractfile(member)
                        if extracted:
                            if path in wanted and member.size <= MAX_CAPTURE_BYTES:
                                content = extracted.read(MAX_CAPTURE_BYTES)
                                header = content[:HEADER_BYTES]
                            else:
                                header = extracted.read(HEADER_BYTES)
                    entries.append(FileEntry(path, _entry_type(member), member.mode, member.size, member.uid,
                                             member.gid, member.linkname, header, digest, content))
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise AcciOpsError(f"layer {digest} of {manifest_digest} cannot be read: {exc}") from None
        finally:
            stream.close()
        members += count
        for directory in emptied:
            tree.empty(directory)
        for path in deleted:
            tree.remove(path)
        for entry in entries:
            tree.add(entry)
            if len(tree.known) > max_entries:
                raise LayerRefused(f"image {manifest_digest[:19]} has more than {max_entries:,} files; refused "
                                   f"at layer {short}")
    return tree.files


def iter_files(oci_dir: Path, manifest_digest: str) -> Iterator[FileEntry]:
    """The entries of ``image_files``, sorted by path."""
    files = image_files(oci_dir, manifest_digest)
    for path in sorted(files):
        yield files[path]


def read_entry(oci_dir: Path, entry: FileEntry, max_bytes: int = MAX_CAPTURE_BYTES) -> bytes | None:
    """The content (up to ``max_bytes``) of a regular file ``image_files`` returned, read again from
    its layer; None when it is not a regular file or not found there."""
    if entry.type != "file":
        return None
    stream = _open_layer(blob_path(oci_dir, entry.layer))
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            found = None
            for member in tar:
                if member.isreg() and _norm(member.name) == entry.path:
                    extracted = tar.extractfile(member)
                    found = extracted.read(max_bytes) if extracted else b""  # the last one wins, as in the tree
            return found
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise AcciOpsError(f"layer {entry.layer} cannot be read: {exc}") from None
    finally:
        stream.close()


def read_file(oci_dir: Path, manifest_digest: str, path: str) -> bytes | None:
    """The content of one regular file in the image's final tree (None when absent or not a file)."""
    entry = image_files(oci_dir, manifest_digest).get(_norm(path))
    if entry is None:
        return None
    return read_entry(oci_dir, entry, max_bytes=entry.size + 1)
