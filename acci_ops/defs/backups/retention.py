"""Scheduled grandfather-father-son retention of backups, with a dry-run mode."""


import dagster as dg
from pydantic import Field

from acci_ops.defs.backups.assets import keyring_or_warn
from acci_ops.defs.resources import AcciEnvironment, resource_key
from acci_ops.lib.backup.inventory import delete_backup, plan_store_retention
from acci_ops.lib.backup.retention import RetentionPlan, RetentionPolicy, untrusted_count
from acci_ops.lib.backup.signing import Keyring
from acci_ops.lib.core.errors import AcciOpsError
from acci_ops.lib.storage.objectstore import ObjectStore
from acci_ops.settings import Settings


class RetentionConfig(dg.Config):
    dry_run: bool = Field(default=False, description="List what would be deleted and delete nothing.")


def apply_retention(store: ObjectStore, environment: str, policy: RetentionPolicy, *, dry_run: bool,
                    log, keyring: Keyring | None) -> tuple[RetentionPlan, list[str]]:  # noqa: ANN001
    """Plan and (unless dry-run) delete for one store; returns the plan and orphans removed.
    Only backups signed by this acci_ops are ranked and deleted (lib/backups.plan_store_retention)."""
    plan, orphans = plan_store_retention(store, environment, policy, keyring)
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
            keyring = keyring_or_warn(context, env)
            stores = [("primary", env.store())]
            if env.offsite_url:
                stores.append(("offsite", env.offsite_store()))
            for label, store in stores:
                try:
                    plan, orphans = apply_retention(store, spec.name, spec.retention, dry_run=config.dry_run,
                                                    log=context.log.info, keyring=keyring)
                except AcciOpsError as exc:
                    raise dg.Failure(description=f"retention of {spec.name} {label}: {exc}") from None
                context.log.info(f"{spec.name} {label} ({store.url}): {plan.summary()}")
                untrusted = untrusted_count(plan)
                if untrusted and keyring is not None:
                    context.log.warning(
                        f"{untrusted} backup(s) in {store.url} are not signed by this acci_ops (unsigned, badly "
                        "signed, inconsistent or dated in the future): kept, never ranked or chosen by DR; see the "
                        "plan's reasons")
                metadata[f"{spec.name}_{label}_kept"] = len(plan.keep)
                metadata[f"{spec.name}_{label}_deleted"] = len(plan.delete)
                metadata[f"{spec.name}_{label}_untrusted"] = untrusted
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
            "12 monthly) from the primary and offsite stores. Only backups whose manifest is signed with "
            "ACCI_BACKUP_SIGNING_KEY are ranked (by snapshot time) and deleted; unsigned, future-dated or "
            "inconsistent ones are kept and listed. Never deletes the newest or newest validated backup; without "
            "a signing key it deletes nothing. Launch with dry_run: true to only list what it would delete."
        ),
        tags={"acci/operation": "retention"},
    )
    def backup_retention() -> None:
        apply_backup_retention()

    return backup_retention
