"""The acci_ops image: acci_ops's own code-location image, a second image source built, checked and
pushed by the pipeline ACCI Framework's images go through (``build_ops_image``)."""

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
from pydantic import Field

from acci_ops.defs._shared import engine_errors, k8s_run_tags, resource_from_spec, spec_resource
from acci_ops.defs.images.resources import ImageBuilder, images_resource
from acci_ops.lib.core.errors import ConfigError
from acci_ops.lib.core.steps import human_bytes, human_duration
from acci_ops.lib.images.gate import GateConfig, standard_gate
from acci_ops.lib.images.outcome import CheckOutcome
from acci_ops.lib.images.pipeline import BuildReport, ImageSettings, build_version
from acci_ops.lib.images.policy import PolicyConfig
from acci_ops.lib.images.policy import image_policy as run_image_policy
from acci_ops.lib.images.source import public_url
from acci_ops.lib.ops_image.context import CONTAINERFILE, OpsContext, check_wheel_dirs, prepare_context
from acci_ops.lib.ops_image.smoke import ops_smoke
from acci_ops.settings import OpsImageSpec, Settings

ASSET_KEY = dg.AssetKey("acci_ops_image")
RESOURCE_KEY = "acci_ops_images"
POOL = "acci_image_build"  # the pool of ACCI Framework's builds: one build at a time on a build host
REF = re.compile(r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._/+-]{0,199}$")
CHECKS = {
    "elf_architecture": "Every ELF binary in each platform's image is built for that platform.",
    "ops_image_smoke": "The image runs its selfcheck with no network and no secrets: PostgreSQL 15+ client tools, "
                       "zstd and helm present, a non-root user, and `dagster definitions validate` loads acci_ops.",
    "image_policy": "This image's policy: a shell and dpkg are allowed (pg_dump, helm and Dagster's subprocesses "
                    "need them); non-root user, no setuid/setgid files, OCI labels, ACCI_OPS_IMAGE_MAX_MB, no "
                    "secrets in config/environment/history, Containerfile lint.",
    "vulnerability_scan": "ACCI_IMAGE_SCAN_COMMAND's findings at or above ACCI_IMAGE_SCAN_FAIL_ON fail the build; "
                          "without a scanner this check fails with WARN severity.",
}


class OpsImageBuilder(spec_resource(OpsImageSpec, "OpsImageBuilderFields")):
    """acci_ops's own image; registry credentials, build storage and engine are the images section's."""

    images: ImageBuilder

    def image_settings(self) -> ImageSettings:
        if not self.source_repo or not self.image_repository:
            raise ConfigError("the acci_ops image needs ACCI_OPS_SOURCE_REPO and ACCI_OPS_IMAGE_REPOSITORY")
        wheel_dirs = tuple(Path(d) for d in self.wheelhouse)
        check_wheel_dirs(wheel_dirs)
        context = OpsContext(wheel_dirs=wheel_dirs, offline=self.offline, helm=self.helm or None)
        images = self.images
        return ImageSettings(
            source_repo=self.source_repo, repository=self.image_repository, tag_pattern=self.source_tag_pattern,
            username=images.registry_username or None, password=images.registry_password or None,
            tls_verify=images.registry_tls_verify, platforms=tuple(self.platforms), dockerfile=CONTAINERFILE,
            context=".", engine=images.container_engine, storage_dir=images.storage_path(), title="acci-ops",
            build_timeout_seconds=images.build_timeout_seconds, build_network=self.build_network,
            build_args=(("BASE_IMAGE", self.base_image),),
            prepare_context=lambda root, log: prepare_context(root, context, log))

    def policy_config(self) -> PolicyConfig:
        return PolicyConfig(max_mb=self.max_mb, allow_shell=True, allow_package_manager=True,
                            size_setting="ACCI_OPS_IMAGE_MAX_MB")


class BuildOpsImageConfig(dg.Config):
    ref: str = Field(default="main", description=(
        "What to build from ACCI_OPS_SOURCE_REPO: a release tag (v0.2.0, pushed as 0.2.0 and sha-<commit>), a "
        "branch or a commit (pushed as sha-<commit> only)."))
    force: bool = Field(default=False, description=(
        "Rebuild even when the registry already holds this ref built from the same commit."))


def _check_result(outcome: CheckOutcome) -> dg.AssetCheckResult:
    severity = dg.AssetCheckSeverity.WARN if outcome.severity == "WARN" else dg.AssetCheckSeverity.ERROR
    metadata = {k: v if isinstance(v, str | int | float | bool) else str(v) for k, v in outcome.metadata.items()}
    return dg.AssetCheckResult(asset_key=ASSET_KEY, check_name=outcome.name, passed=outcome.passed,
                               severity=severity, description=outcome.description, metadata=metadata)


def _metadata(report: BuildReport) -> dict[str, object]:
    meta: dict[str, object] = {
        "image_ref": report.image_ref or "", "image_digest": report.index_digest or "",
        "revision": report.revision, "source_tag": report.source_tag or "(non-release build)",
        "tags": ", ".join(sorted(report.tags)), "build_seconds": dg.MetadataValue.float(float(report.build_seconds)),
        "base_image_digests": ", ".join(report.base_images),
    }
    for platform, size in sorted(report.size_bytes.items()):
        meta[f"size_bytes {platform}"] = dg.MetadataValue.int(size)
        meta[f"size {platform}"] = human_bytes(size)
    for tag, digest in sorted(report.artifacts.items()):
        meta[f"artifact {tag}"] = digest
    return meta


def build_ops_image_asset(spec: OpsImageSpec) -> dg.AssetsDefinition:
    @dg.multi_asset(
        name="build_acci_ops_image",
        specs=[dg.AssetSpec(ASSET_KEY, group_name="images", kinds={"oci", "buildah"}, description=(
            "acci_ops's own code-location image (deploy/dagster/Containerfile: dagster api grpc with pg_dump, "
            "zstd and helm), built from ACCI_OPS_SOURCE_REPO at the job's ref for ACCI_OPS_IMAGE_PLATFORMS, FROM "
            "ACCI_OPS_IMAGE_BASE, checked, pushed to ACCI_OPS_IMAGE_REPOSITORY by digest with an SBOM and a "
            "provenance statement. Deploy it by the image_ref in its metadata (repo@sha256:...)."))],
        check_specs=[dg.AssetCheckSpec(name, asset=ASSET_KEY, blocking=True, description=text)
                     for name, text in CHECKS.items()],
        pool=POOL,
        can_subset=True,
        required_resource_keys={RESOURCE_KEY},
    )
    def build_acci_ops_image(context: dg.AssetExecutionContext, config: BuildOpsImageConfig) -> Iterator[object]:
        if not REF.fullmatch(config.ref):
            raise dg.Failure(description=f"ref {config.ref!r} is not a tag, branch or commit name (letters, digits, "
                                         ". _ - + /; no ..)")
        builder: OpsImageBuilder = getattr(context.resources, RESOURCE_KEY)
        with engine_errors():
            settings = builder.image_settings()
            tools = builder.images.tools()
            gate = standard_gate(settings, GateConfig(scan_command=builder.images.scan_command,
                                                      scan_fail_on=builder.images.scan_fail_on),
                                 tools=tools, run_id=context.run_id, log=context.log.info)
            engine = builder.images.engine(tools)
        policy = builder.policy_config()

        def image_policy(local, checkout) -> CheckOutcome:  # noqa: ANN001 - the pipeline's Check signature
            cfg = dataclasses.replace(policy, dockerfile=checkout.path / CONTAINERFILE)
            return run_image_policy(local.oci_dir, cfg, log=context.log.info)

        def ops_image_smoke(local, checkout) -> CheckOutcome:  # noqa: ANN001
            return ops_smoke(engine, local.oci_dir, timeout=spec.smoke_timeout_seconds, log=context.log.info)

        scan = gate.checks[2]
        context.log.info(f"building acci_ops {config.ref} from {public_url(settings.source_repo)} for "
                         f"{', '.join(settings.platforms)} FROM {builder.base_image}")
        with engine_errors():
            report = build_version(settings, config.ref, tools=tools, checks=(ops_image_smoke, image_policy, scan),
                                   artifacts=gate.artifacts, log=context.log.info, force=config.force)
        if report.noop and not report.completed:
            context.log.info(f"{report.message} (no new materialization; force: true rebuilds)")
            return
        reported = {k.name for k in context.selected_asset_check_keys}
        for outcome in report.outcomes:
            if outcome.name in reported:
                yield _check_result(outcome)
        if report.blocking:
            raise dg.Failure(description=f"acci_ops {config.ref}: {report.message}",
                             metadata={"image_digest": report.index_digest or "", "revision": report.revision})
        context.log.info(f"{report.message}; built in {human_duration(report.build_seconds)}")
        yield dg.MaterializeResult(asset_key=ASSET_KEY, metadata=_metadata(report))

    return build_acci_ops_image


def build_ops_image_defs(settings: Settings) -> dg.Definitions:
    """Nothing unless ACCI_OPS_SOURCE_REPO and ACCI_OPS_IMAGE_REPOSITORY are both set."""
    spec = settings.ops_image
    if not spec.enabled:
        return dg.Definitions()
    max_runtime = int(settings.images.build_timeout_seconds + spec.smoke_timeout_seconds + 1800)
    job = dg.define_asset_job(
        name="build_ops_image",
        selection=dg.AssetSelection.assets(ASSET_KEY),
        description=(
            "Builds, checks and pushes acci_ops's own code-location image from ACCI_OPS_SOURCE_REPO (config ref: a "
            "release tag, branch or commit; default main). Deploy the pushed digest (image_ref) to the Docker or "
            "Kubernetes code server and run launcher: docs/running-in-production.md."),
        tags={"acci/operation": "image_build", "dagster/max_runtime": str(max_runtime),
              **k8s_run_tags(settings, "image_build", max_runtime)},
        executor_def=dg.in_process_executor,
    )
    resource = resource_from_spec(OpsImageBuilder, spec, images=images_resource(settings.images))
    return dg.Definitions(assets=[build_ops_image_asset(spec)], jobs=[job], resources={RESOURCE_KEY: resource})
