"""``image_cleanup``: what killed image builds left behind, removed even when no build follows.

The next build removes the same leftovers first (``pipeline.build_version``), but a SIGKILLed run's
auth file holds the registry password and its smoke container the image under test: they must
not wait for the next release tag.
"""


import dagster as dg

from acci_ops.defs._shared import engine_errors
from acci_ops.defs.images.resources import RESOURCE_KEY, ImageBuilder
from acci_ops.lib.images.cleanup import remove_stale


def build_image_cleanup_job(stale_after_seconds: int) -> dg.JobDefinition:
    """``stale_after_seconds``: older than the longest a build run may take (its max runtime), so a
    build still running is never touched (cleanup also skips anything whose owner process lives)."""

    @dg.op(required_resource_keys={RESOURCE_KEY},
           description="Remove build directories, auth files, smoke containers and processes of killed builds.")
    def remove_stale_builds(context: dg.OpExecutionContext) -> dg.Output:
        images: ImageBuilder = getattr(context.resources, RESOURCE_KEY)
        with engine_errors("image cleanup: "):
            removed = remove_stale(images.tools(), stale_after_seconds, log=context.log.info)
        if not removed:
            context.log.info("nothing left behind by earlier image builds")
        return dg.Output(None, metadata={"removed": len(removed), "what": "; ".join(removed)[:2000] or "none"})

    @dg.job(
        name="image_cleanup",
        description=(
            "Removes what killed image builds left under ACCI_IMAGE_STORAGE_DIR: their processes, build "
            "directories, registry auth files and smoke-test containers, once older than a build's max runtime. "
            "Never touches anything acci_ops did not create, nor anything whose build still runs."),
        tags={"acci/operation": "image_cleanup"},
    )
    def image_cleanup() -> None:
        remove_stale_builds()

    return image_cleanup


def build_image_cleanup_schedule(job: dg.JobDefinition, timezone: str) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="image_cleanup_schedule", job=job, cron_schedule="15 5 * * *", execution_timezone=timezone,
        description="Every day at 05:15, remove what killed image builds left behind (credentials included).",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
