"""Scheduled grandfather-father-son retention of backups, with a dry-run mode."""


import dagster as dg
from pydantic import Field

from acci_ops.defs.resources import AcciEnvironment, resource_key
from acci_ops.lib.backups import delete_backup
from acci_ops.lib.errors import AcciOpsError
from acci_ops.lib.objectstore import ObjectStore
from acci_ops.lib.retention import RetentionPlan, RetentionPolicy, complete_backups, plan_retention
from acci_ops.lib.validation import newest_validated
from acci_ops.settings import Settings


class RetentionConfig(dg.Config):
    dry_run: bool = Field(default=False, description="List what would be deleted and delete nothing.")


def apply_retention(store: ObjectStore, environment: str, policy: RetentionPolicy, *, dry_run: bool,
                    log, protect: frozenset[str] = frozenset()) -> tuple[RetentionPlan, list[str]]:  # noqa: ANN001
    """Plan and (unless dry-run) delete for one store; returns the plan and orphans removed."""
    backups, orphans = complete_backups((o.key for o in store.list(f"{environment}/")), environment)
    validated = newest_validated(store, environment)
    if validated:
        # The newest backup known to restore is what DR would use: never delete it.
        protect = protect | {validated[0].key}
    plan = plan_retention(backups, policy, protect)
    verb = "would delete" if dry_run else "deleting"
    for key in plan.delete:
        log(f"{verb} {store.uri_for(key)}")
        if not dry_run:
            delete_backup(store, key)
    for orphan in orphans:
        log(f"{verb} manifest without dump {store.uri_for(orphan)}")
        if not dry_run:
            store.delete(orphan)
    return plan, orphans


def build_retention_job(settings: Settings) -> dg.JobDefinition:
    keys = {resource_key(spec.name) for spec in settings.environments}

    @dg.op(required_resource_keys=keys, description="Apply the GFS policy to every environment's stores.")
    def apply_backup_retention(context: dg.OpExecutionContext, config: RetentionConfig) -> dg.Output:
        rows, metadata = [], {}
        for spec in settings.environments:
            env: AcciEnvironment = getattr(context.resources, resource_key(spec.name))
            stores = [("primary", env.store())]
            if env.offsite_url:
                stores.append(("offsite", env.offsite_store()))
            for label, store in stores:
                try:
                    plan, orphans = apply_retention(store, spec.name, spec.retention, dry_run=config.dry_run,
                                                    log=context.log.info)
                except AcciOpsError as exc:
                    raise dg.Failure(description=f"retention of {spec.name} {label}: {exc}") from None
                context.log.info(f"{spec.name} {label} ({store.url}): {plan.summary()}")
                metadata[f"{spec.name}_{label}_kept"] = len(plan.keep)
                metadata[f"{spec.name}_{label}_deleted"] = len(plan.delete)
                rows += [f"| {spec.name} | {label} | delete | `{k}` |" for k in plan.delete]
                rows += [f"| {spec.name} | {label} | keep ({', '.join(r)}) | `{k}` |" for k, r in plan.keep.items()]
        table = "| environment | store | decision | backup |\n|---|---|---|---|\n" + "\n".join(rows)
        metadata["dry_run"] = config.dry_run
        metadata["plan"] = dg.MetadataValue.md(table)
        return dg.Output(None, metadata=metadata)

    @dg.job(
        name="backup_retention",
        description=(
            "Deletes old backups by grandfather-father-son (per environment; default 7 daily, 4 weekly, "
            "12 monthly) from the primary and offsite stores. Never deletes the newest backup and ignores "
            "objects acci_ops did not write. Launch with dry_run: true to only list what it would delete."
        ),
        tags={"acci/operation": "retention"},
    )
    def backup_retention() -> None:
        apply_backup_retention()

    return backup_retention
