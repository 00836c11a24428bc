"""Build one ACCI Framework version: source -> build -> checks -> push, or nothing when it is built.

``build_version(settings, ref)`` is the whole flow the Dagster asset runs:

1. registry reachable and credentials accepted (one line otherwise), platforms valid;
2. the ref resolved (a release tag ``v1.2.0``, its version ``1.2.0``, a branch or a commit);
3. already built? when the registry serves the version's tag and that image's revision label is
   this commit, nothing is built or pushed ("nothing to do"), in a few HTTP calls;
4. a clean checkout, a reproducible multi-platform build into an OCI layout (``build.py``);
5. tags must be free (or already hold this very digest): a tag is never moved;
6. the checks: the ELF architecture check, then every check the caller passes
   (``(LocalIndex, Checkout) -> CheckOutcome``: smoke test, image policy, scan). A failed
   ERROR-severity check blocks the push: the version is never pushed under its tags;
7. push under ``<version>`` and ``sha-<12 hex>`` (non-release builds: ``sha-<12 hex>`` only), plus
   the configured moving tag (``ACCI_IMAGE_LATEST_TAG``) only when set; then the artifacts
   (SBOM, provenance) that artifact producers return, as OCI artifacts referring to the index.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acci_ops.lib.core.commands import LineSink
from acci_ops.lib.core.errors import AcciOpsError, ConfigError
from acci_ops.lib.images import source
from acci_ops.lib.images.build import LocalIndex, base_image_refs, build_index, parse_platforms
from acci_ops.lib.images.elf import elf_outcome
from acci_ops.lib.images.outcome import Artifact, CheckOutcome
from acci_ops.lib.images.registry import REVISION_LABEL, Registry
from acci_ops.lib.images.source import Checkout
from acci_ops.lib.images.tools import ContainerTools, default_storage_dir

Check = Callable[[LocalIndex, Checkout], CheckOutcome]
ArtifactProducer = Callable[[LocalIndex, Checkout], Sequence[Artifact]]
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")


class ImageBlocked(AcciOpsError):
    """A blocking check failed; the image was not pushed under its tags."""


@dataclass(frozen=True)
class ImageSettings:
    """What a build needs (the Dagster resource fills it from ``settings.ImagesSpec``)."""

    source_repo: str
    repository: str
    tag_pattern: str = "v*"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_verify: bool = True
    platforms: tuple[str, ...] = ("linux/amd64", "linux/arm64")
    dockerfile: str = "Dockerfile"
    context: str = "."
    backend: str = "buildah"
    engine: str = "podman"
    storage_dir: Path | None = None
    latest_tag: str | None = None
    title: str = "acci-framework"
    min_free_mb: int = 512
    build_timeout_seconds: float = 3600  # the buildah build is killed after this long

    def registry(self) -> Registry:
        return Registry(self.repository, self.username, self.password, self.tls_verify)


@dataclass
class BuildReport:
    """What one ``build_version`` did. ``pushed`` is True only when every blocking check passed
    and the registry serves ``index_digest`` under every tag in ``tags``."""

    ref: str
    revision: str
    source_tag: str | None
    version: str | None
    release: bool
    repository: str
    index_digest: str | None = None
    platforms: dict[str, str] = field(default_factory=dict)
    size_bytes: dict[str, int] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    # The FROM images as ``name@sha256:...`` (``build.base_image_refs``), ``base_image_digests`` the
    # same as a mapping (``LocalIndex.base_image_digests``: what the provenance statement records).
    base_images: tuple[str, ...] = ()
    base_image_digests: dict[str, str | None] = field(default_factory=dict)
    build_seconds: float = 0.0
    total_seconds: float = 0.0
    tags: dict[str, str] = field(default_factory=dict)
    outcomes: list[CheckOutcome] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)
    artifact_metadata: dict[str, Any] = field(default_factory=dict)
    noop: bool = False
    pushed: bool = False
    message: str = ""

    @property
    def image_ref(self) -> str | None:
        return f"{self.repository}@{self.index_digest}" if self.index_digest else None

    @property
    def blocking(self) -> list[CheckOutcome]:
        return [o for o in self.outcomes if o.blocks]

    def raise_if_blocked(self) -> None:
        """ImageBlocked with the first blocking check's one-line cause."""
        if self.blocking:
            raise ImageBlocked(self.message)

    def metadata(self) -> dict[str, Any]:
        """The materialization metadata the issue names (plain values)."""
        out: dict[str, Any] = {
            "image_digest": self.index_digest, "image_ref": self.image_ref, "platforms": sorted(self.platforms),
            "revision": self.revision, "source_tag": self.source_tag or "", "build_seconds": self.build_seconds,
            "base_image_digests": list(self.base_images), "tags": sorted(self.tags), "noop": self.noop,
        }
        for platform, digest in self.platforms.items():
            out[f"digest {platform}"] = digest
        for platform, size in self.size_bytes.items():
            out[f"size_bytes {platform}"] = size
        out.update(self.artifact_metadata)
        return out


def _new_workdir(base: Path) -> Path:
    """``build-<hex>``: lowercase hex only, because podman derives an image name from an OCI
    layout's path, and mkdtemp's ``_``/uppercase would make an invalid reference."""
    path = Path(base) / f"build-{uuid.uuid4().hex[:16]}"
    path.mkdir(parents=True)
    return path


def release_tags(checkout_commit: str, version: str | None) -> list[str]:
    """``[<version>, sha-<12 hex>]`` for a release, ``[sha-<12 hex>]`` otherwise."""
    sha_tag = f"sha-{checkout_commit[:12]}"
    return [version, sha_tag] if version else [sha_tag]


def _run_check(check: Check, local: LocalIndex, checkout: Checkout) -> CheckOutcome:
    name = getattr(check, "__name__", type(check).__name__)
    try:
        outcome = check(local, checkout)
    except AcciOpsError as exc:
        return CheckOutcome(name, False, "ERROR", str(exc))
    except Exception as exc:  # noqa: BLE001 - a crashing check must block, with its cause in one line
        return CheckOutcome(name, False, "ERROR", " ".join(f"{type(exc).__name__}: {exc}".split()))
    if not isinstance(outcome, CheckOutcome):
        return CheckOutcome(name, False, "ERROR", f"check {name} returned {type(outcome).__name__}, not a CheckOutcome")
    return outcome


def build_version(settings: ImageSettings, ref: str, *, tools: ContainerTools | None = None,
                  checks: Sequence[Check] = (), artifacts: Sequence[ArtifactProducer] = (),
                  log: LineSink | None = None, workdir: Path | None = None, keep_workdir: bool = False,
                  force: bool = False) -> BuildReport:
    """Build, check and push ``ref`` (a release tag, its version, a branch or a commit).

    Raises one-line errors for bad input (unknown ref, missing Dockerfile, unsupported platform),
    an unreachable registry, wrong credentials, a failing build step, a tag held by another
    digest. A failed blocking check does not raise: the report says so (``pushed`` False,
    ``message`` the cause); ``report.raise_if_blocked()`` turns it into ImageBlocked."""
    started = time.monotonic()
    say = log or (lambda _line: None)
    if settings.backend != "buildah":
        raise ConfigError(f"ACCI_BUILD_BACKEND={settings.backend} is not supported by this build; use buildah")
    platforms = parse_platforms(list(settings.platforms))
    registry = settings.registry()
    registry.check_access(push=True)
    commit, tag = source.resolve_ref(settings.source_repo, ref, settings.tag_pattern)
    release = source.is_release_tag(tag, settings.tag_pattern)
    version = source.version_of(tag) if release and tag else None
    report = BuildReport(ref=ref, revision=commit, source_tag=tag if release else None, version=version,
                         release=release, repository=registry.repository)
    if len(commit) == 40 and not force:
        done = _already_built(registry, commit, version, report, say)
        if done:
            report.total_seconds = round(time.monotonic() - started, 3)
            return report
    tools = tools or ContainerTools(settings.storage_dir or default_storage_dir())
    own_workdir = workdir is None
    workdir = Path(workdir) if workdir else _new_workdir(tools.base)
    try:
        checkout = source.checkout(settings.source_repo, ref, workdir / "src", pattern=settings.tag_pattern, log=say)
        report.revision = checkout.commit
        local = build_index(tools, checkout, platforms, workdir=workdir, dockerfile=settings.dockerfile,
                            context=settings.context, title=settings.title, log=say, tls_verify=settings.tls_verify,
                            min_free_mb=settings.min_free_mb, timeout=settings.build_timeout_seconds)
        report.index_digest = local.index_digest
        report.platforms = {p: img.digest for p, img in local.platforms.items()}
        report.size_bytes = {p: img.size_bytes for p, img in local.platforms.items()}
        report.labels = dict(local.labels)
        report.base_image_digests = dict(local.base_image_digests)
        report.base_images = base_image_refs(local.base_image_digests)
        report.build_seconds = local.build_seconds
        say(f"built {local.index_digest} for {', '.join(platforms)} in {local.build_seconds:.1f} s")
        tags = release_tags(checkout.commit, checkout.version)
        fresh = [t for t in tags if registry.check_tag_free(t, local.index_digest)]
        report.outcomes.append(elf_outcome(local.info()))
        for check in checks:
            outcome = _run_check(check, local, checkout)
            say(f"check {outcome.name}: {'passed' if outcome.passed else outcome.severity} - {outcome.description}")
            report.outcomes.append(outcome)
        if report.blocking:
            first = report.blocking[0]
            report.message = f"not pushed: check {first.name} failed: {first.description}"
            say(report.message)
            report.total_seconds = round(time.monotonic() - started, 3)
            return report
        produced: list[Artifact] = []
        for producer in artifacts:
            produced += list(producer(local, checkout))
        to_push = fresh or tags[:1]
        report.tags = registry.push(tools, str(local.oci_dir), local.index_digest, to_push, log=say)
        for existing in (t for t in tags if t not in report.tags):
            report.tags[existing] = local.index_digest
        if settings.latest_tag:
            found = registry.get_manifest(local.index_digest)
            if found:
                registry.put_manifest(settings.latest_tag, found[0], found[1])
                report.tags[settings.latest_tag] = local.index_digest
        for artifact in produced:
            artifact_tag, digest = registry.attach(local.index_digest, artifact.suffix, artifact.payload,
                                                   artifact.media_type, artifact.annotations)
            report.artifacts[artifact_tag] = digest
            report.artifact_metadata.update(artifact.metadata)
        report.pushed = True
        report.message = (f"pushed {registry.repository}@{local.index_digest} as "
                          f"{', '.join(sorted(report.tags))}")
        say(report.message)
        report.total_seconds = round(time.monotonic() - started, 3)
        return report
    finally:
        if own_workdir and not keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _already_built(registry: Registry, commit: str, version: str | None, report: BuildReport, say: LineSink) -> bool:
    """True (and the report filled) when the version's tag already holds an image of ``commit``."""
    tags = release_tags(commit, version)
    digest = registry.tag_digest(tags[0])
    if digest is None:
        return False
    labels = registry.labels(digest)
    if labels.get(REVISION_LABEL) != commit:
        return False  # built from another commit: the build goes on and the tag check refuses it
    for tag in tags[1:]:  # e.g. the sha- tag lost: restore it, it names the same image
        if registry.tag_digest(tag) is None:
            found = registry.get_manifest(digest)
            if found:
                registry.put_manifest(tag, found[0], found[1])
    report.noop = True
    report.pushed = True
    report.index_digest = digest
    report.tags = {t: digest for t in tags}
    report.platforms = registry.platform_digests(digest)
    report.labels = labels
    what = f"version {version}" if version else f"commit {commit[:12]}"
    report.message = f"{what} is already built from {commit}: {digest}; nothing to do"
    say(report.message)
    return True
