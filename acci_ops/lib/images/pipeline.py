"""Build one ACCI Framework version: source -> build -> checks -> push, or nothing when it is built.

``build_version(settings, ref)`` is the whole flow the Dagster asset runs:

1. registry reachable and credentials accepted (one line otherwise), platforms valid;
2. the ref resolved (a release tag ``v1.2.0``, its version ``1.2.0``, a branch or a commit);
3. already built? when the registry serves the version's tag and that image's revision label is
   this commit, and it has every declared artifact (``.sbom``, ``.att``), nothing is built or
   pushed ("nothing to do"), in a few HTTP calls; a lost ``sha-`` tag or a ``latest`` that is
   behind is completed there. A missing artifact makes the run rebuild (reproducible: the same
   digest, else refused) and attach it;
4. a clean checkout, a reproducible multi-platform build into an OCI layout (``build.py``);
5. the version tag must be free (or already hold this very digest): it is never moved;
6. the checks: the ELF architecture check, then every check the caller passes
   (``(LocalIndex, Checkout) -> CheckOutcome``; ``gate.standard_gate``: smoke test, image policy,
   scan). A failed ERROR-severity check blocks the push: the version is never pushed under its tags;
7. the image uploaded by digest, then the artifacts (SBOM, provenance) that the producers return,
   as OCI artifacts referring to the index, and only then the tags, each a compare-and-swap:
   ``<version>`` (immutable), ``sha-<12 hex>`` (follows the release), ``ACCI_IMAGE_LATEST_TAG``
   (releases only, forward only); a non-release build gets its immutable ``sha-<12 hex>`` only.
"""

from __future__ import annotations

import re
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acci_ops.lib.core.commands import LineSink
from acci_ops.lib.core.errors import AcciOpsError, ConfigError
from acci_ops.lib.images import source
from acci_ops.lib.images.build import LocalIndex, base_image_refs, build_index, parse_platforms
from acci_ops.lib.images.cleanup import remove_stale
from acci_ops.lib.images.elf import elf_outcome
from acci_ops.lib.images.outcome import Artifact, CheckOutcome
from acci_ops.lib.images.registry import REVISION_LABEL, VERSION_LABEL, ImmutableTagError, Registry
from acci_ops.lib.images.source import Checkout
from acci_ops.lib.images.tools import ContainerTools, claim, default_storage_dir

Check = Callable[[LocalIndex, Checkout], CheckOutcome]
ArtifactProducer = Callable[[LocalIndex, Checkout], Sequence[Artifact]]
Producers = Mapping[str, ArtifactProducer] | Sequence[ArtifactProducer]
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")


class ImageBlocked(AcciOpsError):
    """A blocking check failed; the image was not pushed under its tags."""


@dataclass(frozen=True)
class ImageSettings:
    """What a build needs (the Dagster resource fills it from ``settings.ImagesSpec``)."""

    source_repo: str = field(repr=False)  # may carry a token (https://user:token@host/...)
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
    build_network: str = "none"  # RUN steps' network: none (default), host or a podman network name
    build_args: tuple[tuple[str, str], ...] = ()  # --build-arg NAME=VALUE (recorded in the image: no secrets)
    # Called with the exported checkout before the build: adds to the context what RUN must not fetch
    # (the acci_ops image's wheelhouse). Its failure stops the build with its one-line cause.
    prepare_context: Callable[[Path, LineSink], None] | None = field(default=None, compare=False, repr=False)

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
    # What this run added to an image the registry already served under its version (or sha-)
    # tag: missing artifact tags (attached after a rebuild), a lost sha- tag, a latest that was
    # behind. Non-empty means the registry changed, so it deserves a materialization even when
    # ``noop`` (nothing was built).
    completed: list[str] = field(default_factory=list)

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
        """What a materialization of this build records, as plain values."""
        out: dict[str, Any] = {
            "image_digest": self.index_digest, "image_ref": self.image_ref, "platforms": sorted(self.platforms),
            "revision": self.revision, "source_tag": self.source_tag or "", "build_seconds": self.build_seconds,
            "base_image_digests": list(self.base_images), "tags": sorted(self.tags), "noop": self.noop,
            "completed": list(self.completed),
        }
        for platform, digest in self.platforms.items():
            out[f"digest {platform}"] = digest
        for platform, size in self.size_bytes.items():
            out[f"size_bytes {platform}"] = size
        out.update(self.artifact_metadata)
        return out


def _new_workdir(base: Path) -> Path:
    """``build-<hex>``: the prefix is what ``cleanup.remove_stale`` looks for after a killed run."""
    path = Path(base) / f"build-{uuid.uuid4().hex[:16]}"
    path.mkdir(parents=True)
    claim(path)  # our pid and start time: a cleanup never removes a directory whose build still runs
    return path


def release_tags(checkout_commit: str, version: str | None) -> list[str]:
    """``[<version>, sha-<12 hex>]`` for a release, ``[sha-<12 hex>]`` otherwise."""
    sha_tag = f"sha-{checkout_commit[:12]}"
    return [version, sha_tag] if version else [sha_tag]


_RELEASE_VERSION = re.compile(r"(?P<core>[0-9]+(?:\.[0-9]+)*)(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
                              r"(?:\+[0-9A-Za-z.-]+)?")


def version_order(version: str | None) -> tuple | None:
    """A sort key with semver precedence (``1.10.0`` > ``1.9.0`` > ``1.9.0-rc.2`` > ``1.9.0-rc.1``,
    build metadata ignored, ``1.2`` == ``1.2.0``), or None for anything else (a ``sha-`` label, a
    name, non-ASCII digits): what is not a release version never counts as newer than one."""
    match = _RELEASE_VERSION.fullmatch(version or "")
    if not match:
        return None
    core = [int(part) for part in match["core"].split(".")]
    while len(core) > 1 and core[-1] == 0:
        core.pop()
    pre = match["pre"]
    if pre is None:
        return tuple(core), (1,)  # a release sorts after its pre-releases
    return tuple(core), (0, tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")))


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


def _producers(artifacts: Producers) -> list[tuple[str | None, ArtifactProducer]]:
    """(suffix or None, producer): a mapping declares the suffix each producer yields, which is
    what lets a no-op run see that an artifact is missing; a plain sequence declares none."""
    if isinstance(artifacts, Mapping):
        return list(artifacts.items())
    return [(None, producer) for producer in artifacts]


def artifact_tag(digest: str, suffix: str) -> str:
    """``sha256-<hex>.<suffix>``: where ``Registry.attach`` stores an artifact of ``digest``."""
    return digest.replace(":", "-") + f".{suffix}"


def _lock_dir(settings: ImageSettings, tools: ContainerTools | None) -> Path:
    """The tag locks live with the build storage: the builds that share it are the ones on this host."""
    base = tools.base if tools else Path(settings.storage_dir or default_storage_dir()).resolve()
    return base / "locks"


@dataclass(frozen=True)
class _Held:
    """The registry already serves this version (or commit) built from the same commit."""

    digest: str
    labels: dict[str, str]
    artifacts: dict[str, str]  # artifact tag -> digest, the declared ones it has
    missing: list[str]  # the declared artifact suffixes it lacks


def build_version(settings: ImageSettings, ref: str, *, tools: ContainerTools | None = None,
                  checks: Sequence[Check] = (), artifacts: Producers = (),
                  log: LineSink | None = None, workdir: Path | None = None, keep_workdir: bool = False,
                  force: bool = False, expected_commit: str | None = None) -> BuildReport:
    """Build, check and push ``ref`` (a release tag, its version, a branch or a commit).

    ``artifacts``: producers of the SBOM, provenance...; as a mapping ``{suffix: producer}`` a
    no-op run also checks that each is in the registry, and completes a missing one (by a
    rebuild, which must give the same digest). ``expected_commit``: the commit the run was asked
    for (a ref that moved since is refused, see ``source.resolve_ref``).

    Raises one-line errors for bad input (unknown ref, missing Dockerfile, unsupported platform),
    an unreachable registry, wrong credentials, a failing build step, a version tag held by
    another digest. A failed blocking check does not raise: the report says so (``pushed``
    False, ``message`` the cause); ``report.raise_if_blocked()`` turns it into ImageBlocked."""
    started = time.monotonic()
    say = log or (lambda _line: None)
    if settings.backend != "buildah":
        raise ConfigError(f"ACCI_BUILD_BACKEND={settings.backend} is not supported by this build; use buildah")
    platforms = parse_platforms(list(settings.platforms))
    producers = _producers(artifacts)
    registry = settings.registry()
    registry.check_access(push=True)
    commit, tag = source.resolve_ref(settings.source_repo, ref, settings.tag_pattern, expected_commit=expected_commit)
    release = source.is_release_tag(tag, settings.tag_pattern)
    version = source.version_of(tag) if release and tag else None
    report = BuildReport(ref=ref, revision=commit, source_tag=tag if release else None, version=version,
                         release=release, repository=registry.repository)
    lock_dir = _lock_dir(settings, tools)
    held = None
    if len(commit) == 40 and not force:
        held = _held(registry, commit, version, [s for s, _ in producers if s])
        if held and not held.missing:
            _noop(registry, settings, commit, version, held, report, lock_dir, say)
            report.total_seconds = round(time.monotonic() - started, 3)
            return report
        if held:
            say(f"{registry.repository}@{held.digest} lacks its {', '.join(held.missing)}: rebuilding {ref} to "
                "make them (the build is reproducible: it must give the same digest)")
    tools = tools or ContainerTools(settings.storage_dir or default_storage_dir())
    try:  # what killed runs left (processes, smoke containers, auth files, build directories)
        remove_stale(tools, settings.build_timeout_seconds, log=say)
    except (AcciOpsError, OSError) as exc:
        say(f"cleanup of earlier builds failed (the build goes on): {' '.join(str(exc).split())}")
    own_workdir = workdir is None
    workdir = Path(workdir) if workdir else _new_workdir(tools.base)
    try:
        checkout = source.checkout(settings.source_repo, ref, workdir / "src", pattern=settings.tag_pattern, log=say,
                                   expected_commit=expected_commit)
        report.revision = checkout.commit
        if settings.prepare_context is not None:
            settings.prepare_context(checkout.path, say)
        local = build_index(tools, checkout, platforms, workdir=workdir, dockerfile=settings.dockerfile,
                            context=settings.context, title=settings.title, log=say, tls_verify=settings.tls_verify,
                            min_free_mb=settings.min_free_mb, timeout=settings.build_timeout_seconds,
                            registry_host=registry.ref.host, network=settings.build_network,
                            build_args=dict(settings.build_args))
        report.index_digest = local.index_digest
        report.platforms = {p: img.digest for p, img in local.platforms.items()}
        report.size_bytes = {p: img.size_bytes for p, img in local.platforms.items()}
        report.labels = dict(local.labels)
        report.base_image_digests = dict(local.base_image_digests)
        report.base_images = base_image_refs(local.base_image_digests)
        report.build_seconds = local.build_seconds
        say(f"built {local.index_digest} for {', '.join(platforms)} in {local.build_seconds:.1f} s")
        tags = release_tags(checkout.commit, checkout.version)
        if held and local.index_digest != held.digest:
            raise ImmutableTagError(
                f"{registry.repository}:{tags[0]} is {held.digest}, built from {checkout.commit[:12]}, but lacks its "
                f"{', '.join(held.missing)}; this rebuild gave {local.index_digest} (its base images changed?), so "
                f"they cannot be made for {held.digest}: nothing pushed")
        # The version tag (a non-release build: its sha- tag) is immutable: refused here, before the
        # checks, and again at the push (a compare-and-swap). A release's sha- tag follows it.
        registry.check_tag_free(tags[0], local.index_digest)
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
        for suffix, producer in producers:
            if held and suffix and suffix not in held.missing:
                continue  # present: the one in the registry stays (it describes the first build)
            made = list(producer(local, checkout))
            wrong = [a.suffix for a in made if suffix and a.suffix != suffix]
            if wrong:
                raise AcciOpsError(f"the artifact producer for '{suffix}' made '{wrong[0]}'; nothing pushed")
            produced += made
        registry.upload(tools, str(local.oci_dir), local.index_digest, log=say)
        # Artifacts before tags: a version is never public without its SBOM and provenance, and a
        # failed attach leaves no tag, so the next run builds again instead of finding "nothing to do".
        for artifact in produced:
            name, digest = registry.attach(local.index_digest, artifact.suffix, artifact.payload,
                                           artifact.media_type, artifact.annotations)
            report.artifacts[name] = digest
            report.artifact_metadata.update(artifact.metadata)
            if held:
                report.completed.append(name)
        if held:
            report.artifacts = {**held.artifacts, **report.artifacts}
        _point_tags(registry, settings, local.index_digest, checkout.commit, checkout.version, report, lock_dir, say,
                    completing=held is not None)
        report.pushed = True
        if held:
            report.message = (f"completed {registry.repository}@{local.index_digest} ({', '.join(sorted(report.tags))}"
                              f"): added {', '.join(report.completed)}")
        else:
            report.message = (f"pushed {registry.repository}@{local.index_digest} as "
                              f"{', '.join(sorted(report.tags))}")
        say(report.message)
        report.total_seconds = round(time.monotonic() - started, 3)
        return report
    finally:
        if own_workdir and not keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _point_tags(registry: Registry, settings: ImageSettings, digest: str, commit: str, version: str | None,
                report: BuildReport, lock_dir: Path, say: LineSink, *, completing: bool) -> None:
    """Point the tags at ``digest``, each a compare-and-swap (``Registry.point_tag``):

    - the version tag (a non-release build: its ``sha-`` tag) is immutable;
    - a release's ``sha-<commit>`` follows the release: it moves off a branch build of the same
      commit (or an older release of it). That is safe because a ``sha-`` tag names a commit, not
      a release: every image under it is built from that commit, and the release is the image of
      it that was checked and published; what must never move is the version tag;
    - ``latest`` (``ACCI_IMAGE_LATEST_TAG``): releases only, and only forward: when this version
      is greater than the one latest names now (its version label).

    ``report.tags`` gets the tags that serve ``digest``; ``report.completed`` the ones this call
    added when ``completing`` (the image was already in the registry)."""
    tags = release_tags(commit, version)
    moving = tags[1:] + ([settings.latest_tag] if version and settings.latest_tag else [])
    for tag in [tags[0], *moving]:
        replace = None if tag == tags[0] else (lambda current: _is_older(registry, current, version))
        outcome = registry.point_tag(tag, digest, lock_dir=lock_dir, replace=replace)
        if outcome == "left":
            why = (f"it names a release at least as new as {version}" if version_order(version) is not None else
                   f"{version} is not a semver version, so it never moves a tag that names another image")
            say(f"{tag} left where it is: {why}")
            continue
        if outcome == "moved":
            say(f"{tag} moved to {digest} ({version})")
        report.tags[tag] = digest
        if completing and outcome != "kept":
            report.completed.append(tag)


def _is_older(registry: Registry, current: str, version: str | None) -> bool:
    """True when the image ``current`` is older than release ``version``: its version label is a
    smaller release version, or none at all (a branch build's ``sha-...``, an image of others)."""
    ours = version_order(version)
    if ours is None:
        return False
    theirs = version_order(registry.labels(current).get(VERSION_LABEL))
    return theirs is None or ours > theirs


def _held(registry: Registry, commit: str, version: str | None, suffixes: Sequence[str]) -> _Held | None:
    """What the registry serves under the version's tag (a non-release: its sha- tag) when it was
    built from ``commit``, with which of the declared artifacts it has; None otherwise."""
    digest = registry.tag_digest(release_tags(commit, version)[0])
    if digest is None:
        return None
    labels = registry.labels(digest)
    if labels.get(REVISION_LABEL) != commit:
        return None  # built from another commit: the build goes on and the tag check refuses it
    present, missing = {}, []
    for suffix in suffixes:
        found = registry.tag_digest(artifact_tag(digest, suffix))
        if found:
            present[artifact_tag(digest, suffix)] = found
        else:
            missing.append(suffix)
    return _Held(digest, labels, present, missing)


def _noop(registry: Registry, settings: ImageSettings, commit: str, version: str | None, held: _Held,
          report: BuildReport, lock_dir: Path, say: LineSink) -> None:
    """Fill the report of a version that is already built, completing the tags it lacks (a lost
    sha- tag, a latest that is behind): cheap, no build, listed in ``report.completed``."""
    _point_tags(registry, settings, held.digest, commit, version, report, lock_dir, say, completing=True)
    report.noop = True
    report.pushed = True
    report.index_digest = held.digest
    report.artifacts = dict(held.artifacts)
    report.platforms = registry.platform_digests(held.digest)
    report.labels = held.labels
    what = f"version {version}" if version else f"commit {commit[:12]}"
    done = f"completed {', '.join(report.completed)}" if report.completed else "nothing to do"
    report.message = f"{what} is already built from {commit}: {held.digest}; {done}"
    say(report.message)
