"""Releases: one ``acci_release`` asset per environment deployed by helm or compose, the ``release``
and ``rollback_release`` jobs, and the sensors that release by themselves.

Present when image builds are on (a release deploys what a build pushed) and at least one
environment has a helm or compose DR platform (a release deploys as DR recovers). The resources
used are the other domains' (backup store and keys, DR platform, images registry, alert webhook),
reached by key through the code location, so this domain defines none of its own."""

from collections.abc import Mapping

import dagster as dg

from acci_ops.defs._shared import fixed_resources
from acci_ops.defs.releases.jobs import (
    build_expire_job,
    build_expire_schedule,
    build_release_job,
    build_rollback_job,
    release_assets,
)
from acci_ops.defs.releases.plans import check_strategy, previous_in_order, promotion_order, releasable
from acci_ops.defs.releases.sensors import build_first_release_sensor, build_promotion_sensor
from acci_ops.settings import Settings


def build_defs(settings: Settings, resources: Mapping[str, object]) -> dg.Definitions:
    """``resources``: every other domain's resources by key; the jobs bind them fixed (their
    Launchpad offers no resource config: a platform or URL cannot be switched there)."""
    specs = releasable(settings)
    if not specs or not settings.images.enabled:
        return dg.Definitions()
    for spec in specs:
        check_strategy(spec)
    by_name = {s.name: s for s in specs}
    order = promotion_order(settings, list(by_name))
    fixed = fixed_resources(resources)
    release = build_release_job(specs, settings, fixed)
    sensors = []
    for name in order:
        previous = previous_in_order(order, name)
        sensors.append(build_promotion_sensor(by_name[name], by_name[previous], release, settings) if previous
                       else build_first_release_sensor(by_name[name], release))
    jobs = [release, build_rollback_job(specs, settings, fixed)]
    schedules = []
    blue_green = [s for s in specs if s.releases.strategy == "blue_green"]
    if blue_green:
        expire = build_expire_job(blue_green, fixed)
        jobs.append(expire)
        schedules.append(build_expire_schedule(expire, settings))
    return dg.Definitions(assets=release_assets(specs, settings), jobs=jobs, sensors=sensors, schedules=schedules,
                          resources={})
