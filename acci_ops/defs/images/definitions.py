"""Images: ACCI Framework's container image per version, its build job and the tag sensor."""

from __future__ import annotations

import dagster as dg

from acci_ops.defs._shared import resource_key
from acci_ops.defs.images.assets import ASSET_KEY, build_image_asset
from acci_ops.defs.images.resources import RESOURCE_KEY, images_resource
from acci_ops.defs.images.sensors import build_source_tag_sensor
from acci_ops.settings import Settings


def build_defs(settings: Settings) -> dg.Definitions:
    """Nothing unless ACCI_SOURCE_REPO and ACCI_IMAGE_REPOSITORY are both set."""
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
        tags={"acci/operation": "image_build"},
        executor_def=dg.in_process_executor,
    )
    # The smoke test's throwaway database and Redis: the first environment's scratch server and drill Redis.
    scratch = next((e.name for e in settings.environments if e.validates), None)
    drill = next((e.name for e in settings.environments if e.dr and e.dr.drill_redis_url_env), None)
    asset = build_image_asset(resource_key("validation", scratch) if scratch else None,
                              resource_key("dr", drill) if drill else None)
    return dg.Definitions(
        assets=[asset],
        jobs=[job],
        sensors=[build_source_tag_sensor(spec, job)],
        resources={RESOURCE_KEY: images_resource(spec)},
    )
