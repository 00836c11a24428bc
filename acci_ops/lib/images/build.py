"""Build one multi-platform image (an OCI index) from a clean checkout with buildah.

``buildah build --platform A,B --manifest LIST --timestamp <commit time>`` builds every platform
with file and config times taken from the commit, so the same commit gives the same digests;
``buildah manifest push --all --format oci LIST oci:DIR`` writes the result to an OCI layout
directory: the staging copy every check reads and the push copies from, byte for byte. Each build
uses storage of its own under its work directory (removed afterwards), so concurrent builds never
share a lock or a half-built image, and nothing accumulates.
"""

from __future__ import annotations

import re
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from acci_ops.lib.core.commands import CommandFailed, LineSink
from acci_ops.lib.core.errors import AcciOpsError, ConfigError
from acci_ops.lib.images.elf import SUPPORTED_ARCHITECTURES
from acci_ops.lib.images.oci import IndexInfo, normalize_index, read_index
from acci_ops.lib.images.source import Checkout
from acci_ops.lib.images.tools import ContainerTools

SUPPORTED_PLATFORMS = ("linux/amd64", "linux/arm64", "linux/arm/v7", "linux/ppc64le", "linux/s390x", "linux/riscv64")
LABEL_PREFIX = "org.opencontainers.image."
MIN_FREE_MB = 512


class BuildFailed(AcciOpsError):
    """buildah could not build the image (a failing step); the message names the step."""


@dataclass(frozen=True)
class PlatformImage:
    digest: str
    config_digest: str
    size_bytes: int
    architecture: str
    os: str
    variant: str | None = None


@dataclass(frozen=True)
class LocalIndex:
    """A built multi-platform image in an OCI layout directory (not pushed anywhere yet)."""

    oci_dir: Path
    index_digest: str
    platforms: dict[str, PlatformImage]
    labels: dict[str, str] = field(default_factory=dict)
    build_seconds: float = 0.0
    base_images: tuple[str, ...] = ()

    def info(self) -> IndexInfo:
        return read_index(self.oci_dir)


def parse_platforms(value: str | Sequence[str]) -> list[str]:
    """``linux/amd64,linux/arm64`` -> a list, each checked; ConfigError for an unsupported one."""
    items = [p.strip() for p in (value.split(",") if isinstance(value, str) else value) if p.strip()]
    if not items:
        raise ConfigError("ACCI_IMAGE_PLATFORMS is empty: name at least one platform, e.g. linux/amd64")
    for item in items:
        parts = item.split("/")
        if item not in SUPPORTED_PLATFORMS or parts[1] not in SUPPORTED_ARCHITECTURES:
            raise ConfigError(f"unsupported platform '{item}' in ACCI_IMAGE_PLATFORMS; supported: "
                              f"{', '.join(SUPPORTED_PLATFORMS)}")
    if len(set(items)) != len(items):
        raise ConfigError(f"ACCI_IMAGE_PLATFORMS names a platform twice: {','.join(items)}")
    return items


def _inside(root: Path, relative: str, what: str, checkout: Checkout) -> Path:
    path = (root / relative).resolve()
    if path != root.resolve() and root.resolve() not in path.parents:
        raise ConfigError(f"{what} '{relative}' points outside the source checkout")
    return path


def oci_labels(checkout: Checkout, title: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The OCI labels every image carries: where it came from, which commit, which version, when."""
    created = datetime.fromtimestamp(checkout.commit_epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    labels = {
        LABEL_PREFIX + "source": _public_url(checkout.repo),
        LABEL_PREFIX + "revision": checkout.commit,
        LABEL_PREFIX + "version": checkout.version or f"sha-{checkout.short}",
        LABEL_PREFIX + "created": created,
        LABEL_PREFIX + "title": title,
    }
    labels.update(extra or {})
    return labels


def _public_url(repo: str) -> str:
    return re.sub(r"//[^/@]+@", "//", repo)


def base_images(dockerfile: Path) -> tuple[str, ...]:
    """The external images named in FROM lines (stage names and ``scratch`` excluded)."""
    stages: set[str] = set()
    found: list[str] = []
    for line in dockerfile.read_text(errors="replace").splitlines():
        match = re.match(r"^\s*FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if not match:
            continue
        image, alias = match.group(1), match.group(2)
        if image.lower() != "scratch" and image not in stages and image not in found:
            found.append(image)
        if alias:
            stages.add(alias)
    return tuple(found)


def _failed_step(lines: Sequence[str], error: CommandFailed) -> str:
    """One line: the failing step and the tool's last error line."""
    step = next((line for line in reversed(lines) if re.search(r"\bSTEP \d+(/\d+)?:", line)), "")
    last = error.result.last_line
    match = re.search(r'building at STEP "([^"]+)"', last)
    step_text = match.group(1) if match else re.sub(r"^.*?STEP \d+(/\d+)?:\s*", "", step)
    reason = re.sub(r'^.*?building at STEP "[^"]+":\s*', "", last)
    reason = re.sub(r'^(level=\w+ msg=|Error:\s*)', "", reason).strip().strip('"')
    return f"build step '{step_text}' failed: {reason}" if step_text else f"buildah build failed: {reason}"


def check_free_space(directory: Path, min_free_mb: int = MIN_FREE_MB) -> None:
    """Fail fast, in one line, when the build's disk is (nearly) full."""
    free_mb = shutil.disk_usage(directory).free // (1024 * 1024)
    if free_mb < min_free_mb:
        raise AcciOpsError(f"not enough disk space for an image build under {directory}: {free_mb} MB free, "
                           f"need at least {min_free_mb} MB (ACCI_IMAGE_STORAGE_DIR)")


def build_index(tools: ContainerTools, checkout: Checkout, platforms: Sequence[str], *, workdir: Path,
                dockerfile: str = "Dockerfile", context: str = ".", title: str = "acci-framework",
                extra_labels: Mapping[str, str] | None = None, log: LineSink | None = None,
                tls_verify: bool = True, authfile: Path | None = None, min_free_mb: int = MIN_FREE_MB,
                timeout: float = 3600) -> LocalIndex:
    """Build ``checkout`` for ``platforms`` into ``workdir/oci`` and return what was built.

    ConfigError before any build for an unsupported platform or a missing Dockerfile/context;
    BuildFailed naming the failing step and its last output line."""
    platforms = parse_platforms(platforms)
    root = checkout.path
    dockerfile_path = _inside(root, dockerfile, "ACCI_DOCKERFILE", checkout)
    context_path = _inside(root, context, "ACCI_BUILD_CONTEXT", checkout)
    where = f"{checkout.ref} ({checkout.short})"
    if not dockerfile_path.is_file():
        raise ConfigError(f"Dockerfile '{dockerfile}' not found in {where} (ACCI_DOCKERFILE)")
    if not context_path.is_dir():
        raise ConfigError(f"build context '{context}' is not a directory in {where} (ACCI_BUILD_CONTEXT)")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    check_free_space(workdir, min_free_mb)
    oci_dir = workdir / "oci"
    if oci_dir.exists():
        shutil.rmtree(oci_dir)
    storage = ContainerTools(workdir / "buildah", runtime=tools.runtime, ulimits=tools.ulimits)
    labels = oci_labels(checkout, title, extra_labels)
    list_name = f"localhost/acci-build-{checkout.short}-{uuid.uuid4().hex[:8]}"
    argv = ["build", "--isolation", "chroot", "--format", "oci", "--platform", ",".join(platforms),
            "--manifest", list_name, "--timestamp", str(checkout.commit_epoch),
            "--signature-policy", str(storage.policy_json), f"--tls-verify={'true' if tls_verify else 'false'}",
            "--build-arg", f"SOURCE_DATE_EPOCH={checkout.commit_epoch}", "-f", str(dockerfile_path)]
    if authfile:
        argv += ["--authfile", str(authfile)]
    for key, value in labels.items():
        argv += ["--label", f"{key}={value}"]
    argv.append(str(context_path))
    lines: list[str] = []

    def sink(line: str) -> None:
        lines.append(line)
        if log:
            log(line)

    started = time.monotonic()
    try:
        try:
            storage.buildah(*argv, log=sink, timeout=timeout,
                            env={"SOURCE_DATE_EPOCH": str(checkout.commit_epoch)})
        except CommandFailed as exc:
            if any("no space left on device" in line for line in exc.result.tail):
                raise AcciOpsError(f"image build ran out of disk space under {workdir}") from None
            raise BuildFailed(_failed_step(lines, exc)) from None
        try:
            storage.buildah("manifest", "push", "--all", "--format", "oci", "--signature-policy",
                            str(storage.policy_json), list_name, f"oci:{oci_dir}", log=log, timeout=timeout)
        except CommandFailed as exc:
            raise AcciOpsError(f"writing the built image to {oci_dir} failed: {exc.result.last_line}") from None
    finally:
        storage.remove_storage()
    index_digest = normalize_index(oci_dir, platforms)
    info = read_index(oci_dir)
    built = {m.platform: PlatformImage(m.digest, m.config_digest, m.size_bytes, m.architecture, m.os, m.variant)
             for m in info.manifests}
    missing = [p for p in platforms if p not in built]
    if missing:
        raise BuildFailed(f"the built index lacks platform(s) {', '.join(missing)}")
    return LocalIndex(oci_dir, index_digest, built, labels, round(time.monotonic() - started, 3),
                      base_images(dockerfile_path))
