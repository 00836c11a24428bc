"""``acci_image``: one multi-platform image per version of ACCI Framework, checked before it is pushed.

The build, its checks and the push are one step on purpose: the tags are pushed only after every
blocking check passed, so the checks cannot be separate steps that run after the image is public.
Each check's outcome is reported as an asset check of ``acci_image`` (blocking: a failed check
stops anything downstream, i.e. releases); a version that fails one is never pushed under its tags
and the step fails with the check's one-line cause.

What is checked and stored with the image is ``lib/images/gate.standard_gate``'s, the same for a
caller without Dagster; this module only turns the resource into its inputs and the build's report
into asset check results and a materialization.
"""

from collections.abc import Iterator

import dagster as dg
from pydantic import Field

from acci_ops.defs._shared import engine_errors
from acci_ops.defs.images.partitions import ACCI_VERSIONS, check_partition_key
from acci_ops.defs.images.resources import RESOURCE_KEY, ImageBuilder
from acci_ops.lib.core.steps import human_bytes, human_duration
from acci_ops.lib.images.gate import GateConfig, standard_gate
from acci_ops.lib.images.outcome import CheckOutcome
from acci_ops.lib.images.pipeline import BuildReport, build_version
from acci_ops.lib.images.source import public_url

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
            gate = standard_gate(settings, GateConfig(
                smoke=images.smoke_config(), policy=images.policy_config(None), scan_command=images.scan_command,
                scan_fail_on=images.scan_fail_on, docker_host=images.docker_host or None),
                tools=tools, run_id=context.run_id, log=context.log.info)
        # The commit source_tag_sensor saw: the run builds exactly that, or stops (a tag moved since).
        expected = context.run.tags.get(REVISION_TAG) or None
        context.log.info(f"building {key} from {public_url(settings.source_repo)} for {', '.join(settings.platforms)}"
                         + (f" (commit {expected[:12]}, as the sensor saw it)" if expected else ""))
        with engine_errors():
            report = build_version(settings, key, tools=tools, checks=gate.checks, artifacts=gate.artifacts,
                                   log=context.log.info, force=config.force, expected_commit=expected)
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
