"""Images: ACCI Framework's container image per version, its build job and the tag sensor; and
acci_ops's own code-location image (``ops_image``)."""

from __future__ import annotations

import dagster as dg

from acci_ops.defs._shared import k8s_run_tags
from acci_ops.defs.images.assets import ASSET_KEY, build_image_asset
from acci_ops.defs.images.jobs import build_image_cleanup_job, build_image_cleanup_schedule
from acci_ops.defs.images.ops_image import build_ops_image_defs
from acci_ops.defs.images.resources import RESOURCE_KEY, images_resource
from acci_ops.defs.images.sensors import build_source_tag_sensor
from acci_ops.settings import ImagesSpec, Settings


def max_runtime_seconds(spec: ImagesSpec) -> int:
    """The longest a build_image run may take before Dagster stops it: a run stuck past every
    timeout of its own (a hung push, a check that never returns) must not hold the pool forever."""
    return int(spec.build_timeout_seconds + spec.smoke_timeout_seconds + 1800)


def build_defs(settings: Settings) -> dg.Definitions:
    """ACCI Framework's images when ACCI_SOURCE_REPO and ACCI_IMAGE_REPOSITORY are set; acci_ops's own
    when ACCI_OPS_SOURCE_REPO and ACCI_OPS_IMAGE_REPOSITORY are."""
    return dg.Definitions.merge(_framework_defs(settings), build_ops_image_defs(settings))


def _framework_defs(settings: Settings) -> dg.Definitions:
    spec = settings.images
    if not spec.enabled:
        return dg.Definitions()
    job = dg.define_asset_job(
        name="build_image",
        selection=dg.AssetSelection.assets(ASSET_KEY),
        description=(
            "Builds, checks and pushes ACCI Framework's image for one version (pick the partition). For a "
            "non-release build of a branch or commit, add a partition named after it in the Launchpad: it is "
            "pushed as sha-<commit> only and never released. A version already built from the same commit is a "
            "no-op (config force: true rebuilds and must reproduce the same digest)."),
        # Run monitoring stops a run past dagster/max_runtime (dagster.yaml run_monitoring): the build
        # has its own timeout, the smoke test its deadline; clone, other checks and push get 30 min.
        tags={"acci/operation": "image_build", "dagster/max_runtime": str(max_runtime_seconds(spec)),
              **k8s_run_tags(settings, "image_build", max_runtime_seconds(spec))},
        executor_def=dg.in_process_executor,
    )
    # The smoke test brings its own private database and Redis (lib/images/sandbox.py): never the
    # validation scratch server or a drill's Redis, which hold restored production data.
    cleanup = build_image_cleanup_job(max_runtime_seconds(spec))
    return dg.Definitions(
        assets=[build_image_asset()],
        jobs=[job, cleanup],
        schedules=[build_image_cleanup_schedule(cleanup, settings.timezone)],
        sensors=[build_source_tag_sensor(spec, job)],
        resources={RESOURCE_KEY: images_resource(spec)},
    )
