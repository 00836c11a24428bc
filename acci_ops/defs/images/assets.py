"""``acci_image``: one multi-platform image per version of ACCI Framework, checked before it is pushed.

The build, its checks and the push are one step on purpose: the tags are pushed only after every
blocking check passed, so the checks cannot be separate steps that run after the image is public.
Each check's outcome is reported as an asset check of ``acci_image`` (blocking: a failed check
stops anything downstream, i.e. releases); a version that fails one is never pushed under its tags
and the step fails with the check's one-line cause.
"""


import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from acci_ops.defs._shared import engine_errors
from acci_ops.defs.images.partitions import ACCI_VERSIONS, check_partition_key
from acci_ops.defs.images.resources import RESOURCE_KEY, ImageBuilder
from acci_ops.lib.core.errors import AcciOpsError
from acci_ops.lib.core.steps import human_bytes, human_duration
from acci_ops.lib.images.build import LocalIndex
from acci_ops.lib.images.outcome import Artifact, CheckOutcome
from acci_ops.lib.images.pipeline import BuildReport, build_version
from acci_ops.lib.images.policy import image_policy
from acci_ops.lib.images.sandbox import private_services
from acci_ops.lib.images.sbom import provenance_statement, sbom_artifact
from acci_ops.lib.images.scan import vulnerability_scan
from acci_ops.lib.images.smoke import CHECK_NAME as SMOKE_CHECK
from acci_ops.lib.images.smoke import smoke_test
from acci_ops.lib.images.source import Checkout, public_url

ASSET_KEY = dg.AssetKey("acci_image")
# Set by source_tag_sensor on each run it requests: the commit the release tag named at that tick.
REVISION_TAG = "acci/revision"
# One image build at a time (instance pools default to a limit of 1, dagster.yaml): two runs of one
# version must not race for its tag; the registry push is a compare-and-swap on top of that.
POOL = "acci_image_build"
GROUP = "images"
CHECKS = {
    "elf_architecture": "Every ELF binary in each platform's image is built for that platform (an amd64 binary "
                        "in the arm64 image fails).",
    "smoke_test": "The host-platform image starts with the container engine, /health answers 2xx and /metrics "
                  "parses with the required metrics; the container is always removed.",
    "image_policy": "Distroless (no shell, no package manager), non-root user, OCI labels, size limit, no "
                    "secrets in config/environment/history, Dockerfile lint (hadolint errors fail).",
    "vulnerability_scan": "ACCI_IMAGE_SCAN_COMMAND's findings at or above ACCI_IMAGE_SCAN_FAIL_ON fail the build; "
                          "without a scanner this check fails with WARN severity (never a silent pass).",
}


class BuildImageConfig(dg.Config):
    force: bool = Field(
        default=False,
        description=("Rebuild even when the registry already holds this version built from the same commit. "
                     "The build is reproducible, so the digest must come out equal; a tag is never moved."))


def _metadata(report: BuildReport) -> dict[str, object]:
    meta: dict[str, object] = {
        "image_digest": report.index_digest or "",
        "image_ref": report.image_ref or "",
        "platforms": ", ".join(sorted(report.platforms)),
        "revision": report.revision,
        "source_tag": report.source_tag or "(non-release build)",
        "release": report.release,
        "tags": ", ".join(sorted(report.tags)),
        "build_seconds": dg.MetadataValue.float(float(report.build_seconds)),
        "base_image_digests": ", ".join(report.base_images) or "(FROM scratch only)",
    }
    for platform, digest in sorted(report.platforms.items()):
        meta[f"digest {platform}"] = digest
    for platform, size in sorted(report.size_bytes.items()):
        meta[f"size_bytes {platform}"] = dg.MetadataValue.int(size)
        meta[f"size {platform}"] = human_bytes(size)
    for name, value in report.artifact_metadata.items():
        meta[name] = value if isinstance(value, str | int | float | bool) else str(value)
    for tag, digest in sorted(report.artifacts.items()):
        meta[f"artifact {tag}"] = digest
    if report.completed:
        meta["completed"] = ", ".join(report.completed)
    return meta


def _check_result(outcome: CheckOutcome) -> dg.AssetCheckResult:
    severity = dg.AssetCheckSeverity.WARN if outcome.severity == "WARN" else dg.AssetCheckSeverity.ERROR
    metadata = {k: v if isinstance(v, str | int | float | bool) else str(v) for k, v in outcome.metadata.items()}
    return dg.AssetCheckResult(asset_key=ASSET_KEY, check_name=outcome.name, passed=outcome.passed,
                               severity=severity, description=outcome.description, metadata=metadata)


@contextmanager
def throwaway_services(images: ImageBuilder, workdir: Path) -> Iterator[tuple[dict[str, Any], dict[str, str]]]:
    """(SmokeConfig fields, metadata) giving the smoke-tested image a database and a Redis that
    hold nothing and lead nowhere: by default a private PostgreSQL server and redis-server started
    for this smoke test alone under the build's ``workdir``, reached only through their unix
    sockets mounted into the container, deleted after whatever happens (``sandbox``). Never the
    validation scratch server nor a drill's Redis: the image under test is written by whoever can
    push a tag, and those hold restored production data. ACCI_IMAGE_SMOKE_DATABASE_URL /
    ACCI_IMAGE_SMOKE_REDIS_URL replace one or both (the operator's choice, handed over as given)."""
    database, redis = images.smoke_database_url or None, images.smoke_redis_url or None
    about: dict[str, str] = {}
    if database:
        about["throwaway_database"] = "ACCI_IMAGE_SMOKE_DATABASE_URL (the operator's; the container has no network)"
    if redis:
        about["throwaway_redis"] = "ACCI_IMAGE_SMOKE_REDIS_URL (the operator's; the container has no network)"
    if database and redis:
        yield {"database_url": database, "redis_url": redis}, about
        return
    with private_services(workdir, images.storage_path(), database=database is None,
                          redis=redis is None) as services:
        fields = {"database_url": database or services.database_url or None,
                  "redis_url": redis or services.redis_url or None, "mounts": services.mounts}
        yield fields, {**services.about, **about, "throwaway_services_seconds": f"{services.seconds:.2f}"}


def build_image_asset() -> dg.AssetsDefinition:
    """The build asset; it needs only the image resource (the smoke test brings its own services)."""
    @dg.multi_asset(
        name="build_acci_image",
        specs=[dg.AssetSpec(
            ASSET_KEY, group_name=GROUP, partitions_def=ACCI_VERSIONS, kinds={"oci", "buildah"},
            description=(
                "ACCI Framework's container image for one version (partition = version, from a release tag; or a "
                "branch/commit added by hand for a non-release build). Built from a clean checkout of the tag's "
                "commit for every ACCI_IMAGE_PLATFORMS (one OCI index), reproducibly (timestamps from the "
                "commit), checked, then pushed to ACCI_IMAGE_REPOSITORY as <version> and sha-<commit> (non-release: "
                "sha-<commit> only) with an SBOM and a provenance statement. Tags never move; a version already "
                "built from the same commit is a no-op. Metadata: image_digest, image_ref, per-platform digests "
                "and sizes, revision."))],
        check_specs=[dg.AssetCheckSpec(name, asset=ASSET_KEY, blocking=True, description=text)
                     for name, text in CHECKS.items()],
        partitions_def=ACCI_VERSIONS,
        pool=POOL,
        can_subset=True,  # a no-op rebuild reports nothing new: no materialization, no check results
        required_resource_keys={RESOURCE_KEY},
    )
    def build_acci_image(context: dg.AssetExecutionContext, config: BuildImageConfig) -> Iterator[object]:
        key = context.partition_key
        problem = check_partition_key(key)
        if problem:
            raise dg.Failure(description=problem)
        if ASSET_KEY not in context.selected_asset_keys:
            # "Execute" on one check in the UI: the checks judge the staged image before its push,
            # so they run only with the build; never a push, or a check result, without the other.
            raise dg.Failure(description=(
                "the checks of acci_image run only as part of its build (they judge the image before it is "
                f"pushed): materialize acci_image for {key} or launch build_image; nothing was done"))
        reported = {k.name for k in context.selected_asset_check_keys}
        images: ImageBuilder = getattr(context.resources, RESOURCE_KEY)
        with engine_errors():
            settings = images.image_settings()
            tools = images.tools()
            smoke_cfg = images.smoke_config()
        log = context.log.info

        def smoke(local: LocalIndex, checkout: Checkout) -> CheckOutcome:
            try:
                with throwaway_services(images, Path(local.oci_dir).parent) as (fields, about):
                    outcome = smoke_test(images.engine(tools), local.oci_dir, dataclasses.replace(smoke_cfg, **fields),
                                         log=log)
            except AcciOpsError as exc:
                return CheckOutcome(SMOKE_CHECK, False, "ERROR",
                                    " ".join(f"could not start the smoke test's own database and Redis: {exc}".split()))
            return dataclasses.replace(outcome, metadata={**outcome.metadata, **about})

        def policy(local: LocalIndex, checkout: Checkout) -> CheckOutcome:
            dockerfile = checkout.path / settings.dockerfile
            return image_policy(local.oci_dir, images.policy_config(dockerfile), log=log)

        def scan(local: LocalIndex, checkout: Checkout) -> CheckOutcome:
            return vulnerability_scan(images.scan_command, oci_dir=local.oci_dir,
                                      image_ref=f"{settings.repository}@{local.index_digest}",
                                      fail_on=images.scan_fail_on, log=log)

        def sbom(local: LocalIndex, checkout: Checkout) -> list[Artifact]:
            # One document for every platform of the index (per-platform counts in its metadata).
            return [sbom_artifact(local.oci_dir, name=settings.repository, version=checkout.version or checkout.short,
                                  log=log)]

        def provenance(local: LocalIndex, checkout: Checkout) -> list[Artifact]:
            statement = provenance_statement(
                subject_name=settings.repository, index_digest=local.index_digest,
                source_repo=public_url(settings.source_repo),
                revision=checkout.commit, source_ref=checkout.ref,
                build_parameters={"platforms": list(settings.platforms), "dockerfile": settings.dockerfile,
                                  "context": settings.context, "source_date_epoch": checkout.commit_epoch},
                base_images=dict(local.base_image_digests),
                platform_digests={p: img.digest for p, img in local.platforms.items()},
                invocation_id=context.run_id)
            return [Artifact("att", statement, "application/vnd.in-toto+json",
                             metadata={"provenance": "in-toto v1, SLSA provenance v1"})]

        # The commit source_tag_sensor saw: the run builds exactly that, or stops (a tag moved since).
        expected = context.run.tags.get(REVISION_TAG) or None
        context.log.info(f"building {key} from {public_url(settings.source_repo)} for {', '.join(settings.platforms)}"
                         + (f" (commit {expected[:12]}, as the sensor saw it)" if expected else ""))
        with engine_errors():
            report = build_version(settings, key, tools=tools, checks=[smoke, policy, scan],
                                   artifacts={"sbom": sbom, "att": provenance}, log=log, force=config.force,
                                   expected_commit=expected)
        if report.noop and not report.completed:
            context.log.info(f"{report.message} (no new materialization; launch with force: true to rebuild)")
            return
        for outcome in report.outcomes:
            if outcome.name in reported:  # all checks always run and gate the push; a run without some
                yield _check_result(outcome)  # (e.g. "without checks") only does not report them
        if report.blocking:
            raise dg.Failure(description=f"{key}: {report.message}",
                             metadata={"image_digest": report.index_digest or "", "revision": report.revision})
        context.log.info(f"{report.message}; built in {human_duration(report.build_seconds)}")
        yield dg.MaterializeResult(asset_key=ASSET_KEY, metadata=_metadata(report))

    return build_acci_image
