"""The ELF architecture check and the OCI layout reader, on layouts written here byte by byte (unit),
and on the fixture app's real build where the arm64 variant carries the amd64 binary (integration)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

from acci_ops.dev.fixture_app import BINARY_PATH
from acci_ops.lib.images.build import LocalIndex
from acci_ops.lib.images.elf import check_architectures, elf_machine, elf_outcome
from acci_ops.lib.images.oci import image_files, read_file, read_index


def elf_header(machine: int) -> bytes:
    return b"\x7fELF\x02\x01\x01" + b"\x00" * 11 + machine.to_bytes(2, "little") + b"\x00" * 44


def _blob(root: Path, data: bytes) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def _layer(files: dict[str, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(content)
                info.mode = 0o755
                tar.addfile(info, io.BytesIO(content))
    return gzip.compress(buf.getvalue(), mtime=0)


def write_layout(root: Path, images: dict[str, list[dict[str, bytes | None]]]) -> Path:
    """An OCI layout with one index; ``images`` maps an architecture to its layers."""
    manifests = []
    for arch, layers in images.items():
        config = _blob(root, json.dumps({"architecture": arch, "os": "linux", "config": {}}).encode())
        layer_descs = [dict(_blob(root, _layer(files)), mediaType="application/vnd.oci.image.layer.v1.tar+gzip")
                       for files in layers]
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": dict(config, mediaType="application/vnd.oci.image.config.v1+json"), "layers": layer_descs}
        desc = _blob(root, json.dumps(manifest).encode())
        manifests.append(dict(desc, mediaType=manifest["mediaType"], platform={"architecture": arch, "os": "linux"}))
    index = _blob(root, json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                                    "manifests": manifests}).encode())
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        dict(index, mediaType="application/vnd.oci.image.index.v1+json")]}))
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return root


def test_elf_machine_reads_the_header() -> None:
    assert elf_machine(elf_header(62)) == (62, True)
    assert elf_machine(elf_header(183)) == (183, True)
    assert elf_machine(b"#!/bin/sh\n" + b"\x00" * 30) is None
    assert elf_machine(b"\x7fELF") is None  # truncated


def test_whiteouts_are_applied_layer_by_layer(tmp_path: Path) -> None:
    layout = write_layout(tmp_path, {"amd64": [
        {"app/": None, "app/old.bin": elf_header(183), "app/keep": b"x", "cache/": None, "cache/a": b"1"},
        {"app/.wh.old.bin": b"", "cache/.wh..wh..opq": b"", "cache/b": b"2", "./app/new": elf_header(62)},
    ]})
    info = read_index(layout)
    files = image_files(layout, info.manifests[0].digest)
    assert "/app/old.bin" not in files and "/cache/a" not in files
    assert {"/app/keep", "/app/new", "/cache/b", "/cache"} <= set(files)
    assert read_file(layout, info.manifests[0].digest, "/cache/b") == b"2"
    # The aarch64 binary was deleted by the upper layer: nothing wrong is left.
    assert check_architectures(info) == []


def test_wrong_architecture_names_file_platform_and_both_machines(tmp_path: Path) -> None:
    layout = write_layout(tmp_path, {
        "amd64": [{"usr/bin/app": elf_header(62), "usr/share/data.txt": b"text"}],
        "arm64": [{"usr/bin/app": elf_header(62), "usr/lib/ok.so": elf_header(183)}],
    })
    outcome = elf_outcome(read_index(layout))
    assert not outcome.passed and outcome.blocks
    assert outcome.description == ("wrong architecture: linux/arm64: /usr/bin/app is a x86-64 binary, "
                                   "expected aarch64")
    assert outcome.metadata["elf_files_checked"] == {"linux/amd64": 1, "linux/arm64": 2}


def test_fixture_v130_arm64_carries_amd64_binary(fixture_builds: Callable[[str], LocalIndex]) -> None:
    outcome = elf_outcome(fixture_builds("v1.3.0").info())
    assert not outcome.passed
    assert outcome.description == (f"wrong architecture: linux/arm64: /{BINARY_PATH} is a x86-64 binary, "
                                   "expected aarch64")
    good = elf_outcome(fixture_builds("v1.0.0").info())
    assert good.passed and good.metadata["elf_files_checked"] == {"linux/amd64": 1, "linux/arm64": 1}
