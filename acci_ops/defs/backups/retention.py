"""Scheduled grandfather-father-son retention of backups, with a dry-run mode."""


from datetime import timedelta

import dagster as dg
from pydantic import Field

from acci_ops.defs._shared import engine_errors, resource_keys, section_resource
from acci_ops.defs.backups.jobs import nightly_max_runtime_seconds
from acci_ops.defs.backups.resources import AcciEnvironment
from acci_ops.lib.backup.retention import apply_retention
from acci_ops.settings import Settings


class RetentionConfig(dg.Config):
    dry_run: bool = Field(default=False, description=("List what would be deleted (and the incomplete uploads "
                                                      "that would be aborted) and change nothing."))


def abort_uploads_after(settings: Settings) -> timedelta:
    """Incomplete uploads older than this have no live owner: every upload of ours happens in a
    nightly_backup run, which is stopped at its max runtime (ACCI_BACKUP_MAX_RUNTIME_SECONDS plus the
    offsite margin); one more minute covers clock skew between this machine and the store."""
    return timedelta(seconds=nightly_max_runtime_seconds(settings) + 60)


def build_retention_job(settings: Settings) -> dg.JobDefinition:
    older_than = abort_uploads_after(settings)

    @dg.op(required_resource_keys=resource_keys(settings.environments, "backup"),
           description="Apply the GFS policy to every environment's stores.")
    def apply_backup_retention(context: dg.OpExecutionContext, config: RetentionConfig) -> dg.Output:
        rows, metadata = [], {}
        for spec in settings.environments:
            env: AcciEnvironment = section_resource(context, "backup", spec.name)
            keyring = env.keyring_or_warn(context)
            stores = [("primary", env.store())]
            if env.offsite is not None:
                stores.append(("offsite", env.offsite_store()))
            for label, store in stores:
                with engine_errors(f"retention of {spec.name} {label}: "):
                    result = apply_retention(store, spec.name, spec.backup.retention, keyring,
                                             dry_run=config.dry_run, log=context.log.info,
                                             abort_uploads_older_than=older_than)
                plan = result.plan
                context.log.info(f"{spec.name} {label} ({store.url}): {plan.summary()}")
                if result.untrusted and keyring is not None:
                    context.log.warning(
                        f"{result.untrusted} backup(s) in {store.url} are not signed by this acci_ops (unsigned, "
                        "badly signed, inconsistent or dated in the future): kept, never ranked or chosen by DR; "
                        "see the plan's reasons")
                metadata[f"{spec.name}_{label}_kept"] = len(plan.keep)
                metadata[f"{spec.name}_{label}_deleted"] = len(plan.delete)
                metadata[f"{spec.name}_{label}_untrusted"] = result.untrusted
                metadata[f"{spec.name}_{label}_aborted_uploads"] = len(result.aborted_uploads)
                if result.upload_error:
                    context.log.warning(f"{spec.name} {label}: {result.upload_error}")
                rows += [f"| {spec.name} | {label} | delete | `{k}` |" for k in plan.delete]
                rows += [f"| {spec.name} | {label} | keep ({', '.join(r)}) | `{k}` |" for k, r in plan.keep.items()]
                rows += [f"| {spec.name} | {label} | abort incomplete upload (started "
                         f"{u.initiated.isoformat(timespec='seconds')}) | `{u.key}` |" for u in result.aborted_uploads]
                if result.young_uploads:
                    rows.append(f"| {spec.name} | {label} | keep {result.young_uploads} incomplete upload(s) "
                                f"younger than {older_than} (may be running) | |")
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
            "a signing key it deletes no backup. Also aborts the environment's incomplete uploads (left by a "
            "killed run) older than the backup run's maximum runtime plus a minute. Launch with dry_run: true "
            "to only list what it would delete or abort."
        ),
        tags={"acci/operation": "retention"},
    )
    def backup_retention() -> None:
        apply_backup_retention()

    return backup_retention
