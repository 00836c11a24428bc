"""Disaster recovery: the monthly drill (with its asset and schedule) and the on-call recovery job.
Present for the environments with a DR platform; drills also need validation's scratch server.

DR is built after the other domains: ``acci_ops/definitions.py`` hands it their resources, which
the disaster_recovery job binds, with DR's own, as fixed copies (``fixed_resources``: its Launchpad
offers no resource config). DR therefore knows no other domain, and a new one changes nothing here."""

from collections.abc import Mapping

import dagster as dg

from acci_ops.defs._shared import fixed_resources, resource_key
from acci_ops.defs.dr.jobs import build_drill_asset, build_drill_job, build_drill_schedule, build_recovery_job
from acci_ops.defs.dr.resources import dr_resource
from acci_ops.settings import Settings


def build_defs(settings: Settings, resources: Mapping[str, object]) -> dg.Definitions:
    """``resources``: every other domain's resources by key (the merged Definitions' resources)."""
    specs = [spec for spec in settings.environments if spec.dr]
    if not specs:
        return dg.Definitions()
    own = {resource_key("dr", spec.name): dr_resource(spec) for spec in specs}
    jobs = [build_recovery_job(specs, settings, fixed_resources({**resources, **own}))]
    schedules, assets = [], []
    drilled = [spec for spec in specs if spec.validates]
    if drilled:
        assets = [build_drill_asset(drilled, settings)]
        drill = build_drill_job(assets[0], settings)
        jobs.append(drill)
        schedules.append(build_drill_schedule(drill, settings))
    return dg.Definitions(assets=assets, jobs=jobs, schedules=schedules, resources=own)
