"""A Debian base image made with ``debootstrap``, for machines where nothing can be pulled.

acci_ops's code-location image (``deploy/dagster/Containerfile``) is built ``FROM`` a Debian with
Python 3.11 by default ``python:3.11-slim-bookworm``. Where no public registry answers (CI, an air-gapped
build host) the same Debian release is made from Debian's own packages: ``debootstrap --variant=minbase``
with Python, the PostgreSQL 15 client tools and zstd already installed, so the Containerfile's RUN steps
need no network. Apt's lists and caches, documentation and locales are left out of the image.

It takes about a minute, so it is made once per machine and kept as an OCI layout under
``~/.cache/acci_ops/debian-base/<key>/oci`` (``ACCI_DEBIAN_BASE_CACHE`` elsewhere), where ``<key>``
hashes everything that shapes it (suite, mirror, packages, this recipe's version). Concurrent callers
wait for one build (a file lock); a half-made base is never left under its final name.

    python -m acci_ops.dev.debian_base [--cache DIR]   # prints the OCI layout's path
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from acci_ops.lib.core.commands import run_command
from acci_ops.lib.images.tools import ContainerTools

RECIPE = 1  # bump when the steps below change what the image holds
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3", "python3-venv", "postgresql-client-15", "zstd", "ca-certificates")
PACKAGE = "apt-get install -y debootstrap"
# Not in the image: what apt fetched and indexed, and what no program reads at run time.
STRIP = ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info",
         "usr/share/locale", "var/log")
CONTAINERFILE = 'FROM scratch\nADD rootfs.tar /\nENV LANG=C.UTF-8\nCMD ["/bin/bash"]\n'


def default_cache() -> Path:
    """Where the base is kept: ``ACCI_DEBIAN_BASE_CACHE``, else ``~/.cache/acci_ops/debian-base``."""
    explicit = os.environ.get("ACCI_DEBIAN_BASE_CACHE")
    return Path(explicit) if explicit else Path.home() / ".cache" / "acci_ops" / "debian-base"


def cache_key(suite: str = SUITE, mirror: str = MIRROR, packages: Sequence[str] = PACKAGES) -> str:
    """What the cached base depends on, hashed: a change to any of it makes a new base."""
    text = json.dumps({"recipe": RECIPE, "suite": suite, "mirror": mirror, "packages": sorted(packages)})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def debian_base(cache: Path | None = None, *, suite: str = SUITE, mirror: str = MIRROR,
                packages: Sequence[str] = PACKAGES, log: object = print) -> Path:
    """The OCI layout of the base (one platform, the machine's), made the first time it is asked for."""
    root = Path(cache or default_cache()) / cache_key(suite, mirror, packages)
    final = root / "oci"
    if (final / "index.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be making it: wait, then use its result
        if (final / "index.json").is_file():
            return final
        work = Path(tempfile.mkdtemp(prefix="make-", dir=root))
        try:
            _make(work, suite, mirror, packages, log)
            os.replace(work / "oci", final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final


def _make(work: Path, suite: str, mirror: str, packages: Sequence[str], log: object) -> None:
    say = log if callable(log) else (lambda _line: None)
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not Path(debootstrap).exists():
        raise RuntimeError(f"debootstrap is not installed; {PACKAGE} (./run test does this)")
    rootfs = work / "rootfs"
    say(f"debian base: debootstrap {suite} with {', '.join(packages)} (about a minute, once per machine)")
    run_command([debootstrap, "--variant=minbase", f"--include={','.join(packages)}", suite, str(rootfs), mirror],
                timeout=1800)
    for relative in STRIP:
        target = rootfs / relative
        if target.is_dir():
            shutil.rmtree(target)
            target.mkdir(mode=0o755)
    context = work / "context"
    context.mkdir()
    # GNU tar keeps owners, modes and device nodes; sorted names and one mtime make the layer repeatable.
    run_command(["tar", "--sort=name", "--mtime=@0", "--numeric-owner", "-C", str(rootfs), "-cf",
                 str(context / "rootfs.tar"), "."], timeout=600)
    shutil.rmtree(rootfs)
    (context / "Containerfile").write_text(CONTAINERFILE)
    tools = ContainerTools(work / "buildah")
    name = f"localhost/acci-debian-base:{suite}"
    tools.buildah("build", "--isolation", "chroot", "--timestamp", "0", "--format", "oci", "--signature-policy",
                  str(tools.policy_json), "-t", name, "-f", str(context / "Containerfile"), str(context), timeout=1800)
    tools.buildah("push", "--signature-policy", str(tools.policy_json), name, f"oci:{work / 'oci'}", timeout=1800)
    tools.remove_storage()
    say(f"debian base: ready in {work.parent}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None, help="cache directory (default: ~/.cache/acci_ops)")
    args = parser.parse_args(argv)
    print(debian_base(args.cache))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
