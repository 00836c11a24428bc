"""The OCI layer reader on hostile layers written here byte by byte: whiteouts in bulk, opaque
directories, and layers beyond the caps, each refused in one line by the reader and by the checks."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from acci_ops.lib.core.errors import AcciOpsError
from acci_ops.lib.images.elf import elf_outcome
from acci_ops.lib.images.oci import LayerRefused, image_files, read_index
from acci_ops.lib.images.policy import image_policy

pytestmark = pytest.mark.unit

Entry = tuple[str, bytes | None]  # (name, content); None: a directory


def _blob(root: Path, data: bytes) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def _ustar(name: str, content: bytes | None) -> bytes:
    """One ustar member, written by hand: tarfile takes seconds for 100,000 of them."""
    header = bytearray(512)
    header[0:len(name)] = name.encode()
    header[100:108] = b"0000644\0"
    header[108:124] = b"0000000\x000000000\0"
    header[124:136] = b"%011o\0" % len(content or b"")
    header[136:148] = b"00000000000\0"
    header[148:156] = b" " * 8
    header[156:157] = b"5" if content is None else b"0"
    header[257:265] = b"ustar\x0000"
    header[148:156] = b"%06o\0 " % sum(header)
    body = content or b""
    return bytes(header) + body + b"\0" * (-len(body) % 512)


def layer(entries: list[Entry]) -> bytes:
    long_names = any(len(name) > 99 for name, _ in entries)
    if not long_names:
        raw = b"".join(_ustar(name, content) for name, content in entries) + b"\0" * 1024
        return gzip.compress(raw, compresslevel=1, mtime=0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return gzip.compress(buf.getvalue(), compresslevel=1, mtime=0)


def write_layout(root: Path, layers: list[list[Entry]]) -> tuple[Path, str, list[str]]:
    """A one-platform (amd64) OCI layout: ``(layout, manifest digest, layer digests)``."""
    config = _blob(root, json.dumps({"architecture": "amd64", "os": "linux", "config": {}}).encode())
    descs = [dict(_blob(root, layer(entries)), mediaType="application/vnd.oci.image.layer.v1.tar+gzip")
             for entries in layers]
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": dict(config, mediaType="application/vnd.oci.image.config.v1+json"), "layers": descs}
    desc = _blob(root, json.dumps(manifest).encode())
    index = _blob(root, json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                                    "manifests": [dict(desc, mediaType=manifest["mediaType"],
                                                       platform={"architecture": "amd64", "os": "linux"})]}).encode())
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        dict(index, mediaType="application/vnd.oci.image.index.v1+json")]}))
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return root, desc["digest"], [d["digest"] for d in descs]


def bulk(files: int, per_dir: int = 100) -> tuple[list[Entry], list[Entry]]:
    """``files`` files in directories of ``per_dir``, and a layer of one whiteout for each."""
    lower: list[Entry] = []
    upper: list[Entry] = []
    for number in range(files):
        directory = f"data/d{number // per_dir}"
        if number % per_dir == 0:
            lower.append((directory + "/", None))
        lower.append((f"{directory}/f{number}", b"x"))
        upper.append((f"{directory}/.wh.f{number}", b""))
    return lower, upper


def test_a_layer_with_50000_whiteouts_is_read(tmp_path: Path) -> None:
    lower, upper = bulk(50_000)
    layout, digest, _ = write_layout(tmp_path, [lower, upper + [("data/new", b"kept")]])
    files = image_files(layout, digest)
    assert not any("/f" in path for path in files)  # every whited-out file is gone
    assert len([p for p in files if p.startswith("/data/d")]) == 500  # their directories stay
    assert files["/data/new"].header == b"kept"


def test_whiteouts_apply_to_the_layers_below_only(tmp_path: Path) -> None:
    """An opaque directory and a whiteout hide the lower layers' entries, not the ones their own
    layer adds, wherever the tar lists them."""
    layout, digest, _ = write_layout(tmp_path, [
        [("d/", None), ("d/a", b"1"), ("d/sub/", None), ("d/sub/x", b"2"), ("e/old", b"3")],
        [("d/b", b"4"), ("d/.wh..wh..opq", b""), ("e/old", b"5"), ("e/.wh.old", b""), ("f/.wh..wh.plnk", b"")],
    ])
    files = image_files(layout, digest)
    assert sorted(files) == ["/d", "/d/b", "/e/old"]
    assert files["/e/old"].header == b"5"


@pytest.mark.parametrize(("caps", "message"), [
    ({"max_layer_entries": 100}, "layer {layer} of {manifest} has more than 100 entries; refused (a hostile or "
                                 "broken layer)"),
    ({"max_entries": 150}, "image {manifest} has more than 150 files; refused at layer {layer2}"),
    ({"max_members": 180}, "image {manifest} has more than 180 entries over its layers; refused"),
])
def test_a_layout_over_a_cap_is_refused_in_one_line(tmp_path: Path, caps: dict[str, int], message: str) -> None:
    lower, upper = bulk(101, per_dir=1000)  # 102 entries, then 101 whiteouts
    layout, digest, layers = write_layout(tmp_path, [lower, upper + [(f"new{i}", b"") for i in range(60)]])
    if "max_entries" in caps:  # a second layer that adds files instead of removing them
        layout, digest, layers = write_layout(tmp_path / "adds", [lower, [(f"new{i}", b"") for i in range(60)]])
    with pytest.raises(LayerRefused) as caught:
        image_files(layout, digest, **caps)
    assert str(caught.value) == message.format(layer=layers[0][:19], layer2=layers[-1][:19], manifest=digest[:19])


def test_the_checks_refuse_a_hostile_layer_in_one_line(tmp_path: Path) -> None:
    deep = "a/" * 2500 + "file"  # a 5,004-byte path (pax header): beyond PATH_MAX
    layout, digest, layers = write_layout(tmp_path, [[("ok", b"1"), (deep, b"2")]])
    why = f"layer {layers[0][:19]} has a path of 5,004 bytes, longer than 4096; refused"
    outcome = elf_outcome(read_index(layout))
    assert (outcome.passed, outcome.description) == (False, f"linux/amd64: the ELF check could not read the image: "
                                                            f"{why}")
    assert image_policy(layout).description == f"policy could not be evaluated: {why}"


def test_the_disk_is_checked_before_the_layers_are_read(tmp_path: Path) -> None:
    layout, digest, _ = write_layout(tmp_path, [[("ok", b"1")]])
    with pytest.raises(AcciOpsError, match=rf"^not enough disk space to read the image's layers under {tmp_path}: "
                                           r"\d+ MB free, need at least 1000000000 MB \(ACCI_IMAGE_STORAGE_DIR\)$"):
        image_files(layout, digest, min_free_mb=10**9)
