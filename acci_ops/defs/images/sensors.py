"""Turns new release tags of ACCI Framework into partitions of ``acci_versions`` and image builds."""

from __future__ import annotations

import json

import dagster as dg

from acci_ops.defs.images.partitions import ACCI_VERSIONS, check_release_version
from acci_ops.lib.core.errors import AcciOpsError
from acci_ops.lib.images.source import SourceTag, list_release_tags
from acci_ops.settings import ImagesSpec

SENSOR_INTERVAL_SECONDS = 120


def tag_problems(tags: list[SourceTag]) -> dict[str, str]:
    """version -> why it is not built, for every version the tags name that cannot be a partition
    and an image tag, or that two tags name."""
    names: dict[str, list[str]] = {}
    for t in tags:
        names.setdefault(t.version, []).append(t.tag)
    problems: dict[str, str] = {}
    for version, tag_names in names.items():
        problem = check_release_version(version)
        if not problem and len(tag_names) > 1:
            problem = (f"version {version} is named by {len(tag_names)} tags ({', '.join(sorted(tag_names))}): "
                       "delete all but one")
        if problem:
            problems[version] = problem
    return problems


def plan_tick(tags: list[SourceTag], seen: dict[str, str], known: set[str], first_tick: bool,
              limit: int, initial: int = 1) -> tuple[list[SourceTag], list[str], dict[str, str]]:
    """(tags to build now, warnings, new cursor). Oldest new version first, at most ``limit``. On
    the very first tick (empty cursor) every existing tag becomes a partition but only the newest
    ``initial`` are built (oldest of them first): a fresh install must not queue years of history,
    yet its first release needs an earlier good version to roll back to. A tag that moved to another commit
    is reported, never rebuilt: versions are immutable. A tag whose version cannot be a partition
    and an image tag (``v1.²``, ``v1.2.0+build.5``), or two tags naming one version (``v1.2.0`` and
    ``1.2.0`` under the pattern ``*``), is skipped with a warning: one bad tag never stops a tick."""
    warnings: list[str] = []
    fresh = [t for t in tags if t.version not in seen and t.version not in known]
    for t in tags:
        if t.version in seen and seen[t.version] != t.commit:
            warnings.append(f"tag {t.tag} moved from {seen[t.version][:12]} to {t.commit[:12]}; version "
                            f"{t.version} is not rebuilt (tags are immutable: publish a new version)")
    problems = tag_problems(tags)
    bad = [t for t in fresh if t.version in problems]
    warnings += [f"tag {t.tag} skipped: {problems[t.version]}" for t in bad]
    fresh = [t for t in fresh if t not in bad]
    if first_tick and len(fresh) > initial:
        build = fresh[-initial:]
    else:
        build = fresh[:limit]
    cursor = dict(seen)
    # Bad tags are remembered too, so each is reported once, not on every tick.
    done = {t.version for t in build} | {t.version for t in bad} | ({t.version for t in fresh} if first_tick else set())
    for t in tags:
        if t.version in done or t.version in known:
            cursor.setdefault(t.version, t.commit)
    return build, warnings, cursor


def build_source_tag_sensor(spec: ImagesSpec, job: dg.UnresolvedAssetJobDefinition) -> dg.SensorDefinition:
    @dg.sensor(
        name="source_tag_sensor",
        job=job,
        minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Every {SENSOR_INTERVAL_SECONDS // 60} min, lists the release tags ({spec.source_tag_pattern}) of "
            "ACCI_SOURCE_REPO. Each new tag becomes a partition of acci_versions (version = tag without its "
            f"leading v) and a build_image run, oldest first, at most {spec.tags_per_tick} per tick. On its first "
            "tick it adds every existing tag but builds only the newest "
            f"{spec.initial_builds} (ACCI_SOURCE_INITIAL_BUILDS). A tag that moves to another commit is "
            "reported and never rebuilt."
        ),
    )
    def source_tag_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        try:
            seen = json.loads(context.cursor) if context.cursor else {}
        except ValueError:
            seen = {}
        if not isinstance(seen, dict):
            seen = {}
        try:
            tags = list_release_tags(spec.source_repo or "", spec.source_tag_pattern)
        except AcciOpsError as exc:
            context.log.error(f"cannot list release tags: {exc}")
            return dg.SkipReason(f"cannot list release tags: {exc}")
        known = set(context.instance.get_dynamic_partitions(ACCI_VERSIONS.name))
        build, warnings, cursor = plan_tick(tags, seen, known, not context.cursor, spec.tags_per_tick,
                                            spec.initial_builds)
        for warning in warnings:
            context.log.warning(warning)
        unusable = set(tag_problems(tags))
        new_keys = sorted({v for v in cursor if v not in known} - unusable)
        requests = [dg.RunRequest(run_key=f"build:{t.version}@{t.commit}", partition_key=t.version,
                                  tags={"acci/source_tag": t.tag, "acci/revision": t.commit})
                    for t in build]
        summary = (f"{len(tags)} release tags; {len(new_keys)} new partitions; {len(requests)} builds requested"
                   + (f"; {len(warnings)} warnings" if warnings else ""))
        context.log.info(summary)
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[ACCI_VERSIONS.build_add_request(new_keys)] if new_keys else [],
            cursor=json.dumps(cursor, sort_keys=True),
            skip_reason=None if requests else summary,
        )

    return source_tag_sensor
