"""Reading an image whose upper layer is all whiteouts: acci_ops's OCI reader now vs a baseline.

A hostile Dockerfile can make a layer of N whiteouts over N files (``RUN rm`` of everything).
The reader applies them while it builds the image's file map (``oci.image_files``), which every
check (ELF, policy) does; its cost must grow with N, not N squared. For each N the benchmark
writes a one-platform OCI layout (layer 1: N files in directories of 100; layer 2: a whiteout
for each), then times ``image_files`` of the working tree's ``acci_ops/lib/images/oci.py`` and of
the same file at a git revision (``--baseline``, default HEAD, read with ``git show``: nothing in
the checkout changes), next to the floor: the same tar members parsed by ``tarfile`` alone. The
baseline runs only up to ``--baseline-max`` whiteouts; beyond, its time is extrapolated from the
largest measured size assuming N^2 (printed as such).

    .venv/bin/python benchmarks/oci_whiteouts.py [--sizes 1000,4000,50000] [--baseline REV]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from acci_ops.lib.images import oci  # noqa: E402


def _blob(root: Path, data: bytes) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def _layer(entries: list[tuple[str, bool]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, is_dir in entries:
            info = tarfile.TarInfo(name)
            if is_dir:
                info.type = tarfile.DIRTYPE
            tar.addfile(info, io.BytesIO(b""))
    return gzip.compress(buf.getvalue(), compresslevel=1, mtime=0)


def write_layout(root: Path, count: int) -> str:
    """The layout for ``count`` whiteouts; returns the manifest digest."""
    lower: list[tuple[str, bool]] = []
    upper: list[tuple[str, bool]] = []
    for number in range(count):
        directory = f"data/d{number // 100}"
        if number % 100 == 0:
            lower.append((directory + "/", True))
        lower.append((f"{directory}/f{number}", False))
        upper.append((f"{directory}/.wh.f{number}", False))
    config = _blob(root, json.dumps({"architecture": "amd64", "os": "linux", "config": {}}).encode())
    layers = [dict(_blob(root, _layer(entries)), mediaType="application/vnd.oci.image.layer.v1.tar+gzip")
              for entries in (lower, upper)]
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": dict(config, mediaType="application/vnd.oci.image.config.v1+json"), "layers": layers}
    return _blob(root, json.dumps(manifest).encode())["digest"]


def baseline_module(revision: str) -> ModuleType:
    """``oci.py`` as it is at ``revision``, imported under another name."""
    source = subprocess.run(["git", "show", f"{revision}:acci_ops/lib/images/oci.py"], cwd=ROOT, check=True,
                            capture_output=True).stdout
    with tempfile.TemporaryDirectory(prefix="acci-bench-") as tmp:
        path = Path(tmp) / "oci_baseline.py"
        path.write_bytes(source)
        spec = importlib.util.spec_from_file_location("oci_baseline", path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return module


def tar_only(layout: Path, digest: str) -> list[str]:
    """The floor: every member of every layer parsed by tarfile, nothing else done."""
    names = []
    for layer in oci.read_json(layout, digest)["layers"]:
        stream = oci._open_layer(oci.blob_path(layout, layer["digest"]))
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            names += [member.name for member in tar]
        stream.close()
    return names


def timed(read, layout: Path, digest: str, repeat: int) -> tuple[float, int]:  # noqa: ANN001
    runs, size = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        size = len(read(layout, digest))
        runs.append(time.perf_counter() - started)
    return statistics.median(runs), size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,4000,50000")
    parser.add_argument("--baseline", default="HEAD", help="git revision of oci.py to compare with")
    parser.add_argument("--baseline-max", type=int, default=4000, help="largest size the baseline is run for")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    old = baseline_module(args.baseline)
    print(f"load average {os.getloadavg()[0]:.2f}; median of {args.repeat} runs; baseline {args.baseline}")
    print(f"{'whiteouts':>10} {'tar only s':>11} {'baseline s':>11} {'now s':>8} {'now us/whiteout':>16} "
          f"{'x faster':>9}")
    measured: tuple[int, float] | None = None
    for count in sizes:
        with tempfile.TemporaryDirectory(prefix="acci-bench-oci-") as tmp:
            digest = write_layout(Path(tmp), count)
            floor, _ = timed(tar_only, Path(tmp), digest, args.repeat)
            now, left = timed(oci.image_files, Path(tmp), digest, args.repeat)
            if count <= args.baseline_max:
                before, left_before = timed(old.image_files, Path(tmp), digest, args.repeat)
                assert left_before == left, "the baseline and the working tree disagree on the result"
                measured = (count, before)
                before_text = f"{before:11.3f}"
            elif measured:
                estimate = measured[1] * (count / measured[0]) ** 2
                before_text = f"~{estimate:10.0f}"  # extrapolated, not run
                before = estimate
            else:
                before_text, before = f"{'-':>11}", float("nan")
            print(f"{count:>10} {floor:>11.3f} {before_text} {now:>8.3f} {now / count * 1e6:>16.1f} "
                  f"{before / now:>9.0f}")
    if measured and any(c > args.baseline_max for c in sizes):
        print(f"~: the baseline extrapolated from {measured[0]} whiteouts assuming N^2 (not run: too slow)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
