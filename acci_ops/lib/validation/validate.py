"""Proving a backup restores: checksum, table of contents, a real restore, contents, integrity.

pgBackRest's ``verify`` stops at checksums; this restores every backup into a throwaway
database and compares what came back with the manifest taken at dump time. Every step is timed
and recorded, the scratch database and the local file are removed whatever happens, and the
outcome is one report (stored beside the manifest) with one readable line when it failed.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import yaml

from acci_ops.lib.backup.inventory import read_manifest
from acci_ops.lib.backup.manifest import BackupManifest
from acci_ops.lib.backup.records import ValidationReport
from acci_ops.lib.backup.restore import (
    Archive,
    choose_mode,
    compare_contents,
    fetch_for_restore,
    find_pg_restore,
    first_error,
    read_contents,
)
from acci_ops.lib.core.commands import PG_ENV, child_env, find_pg_tool
from acci_ops.lib.core.errors import BackupError, ConfigError
from acci_ops.lib.core.steps import StepFailed, StepRecorder, StepResult, human_bytes
from acci_ops.lib.postgres.connect import explain_pg_error
from acci_ops.lib.postgres.scratch import (
    create_scratch_database,
    drop_scratch_database,
    new_scratch_name,
    refuse_same_database,
)
from acci_ops.lib.postgres.urls import DatabaseTarget
from acci_ops.lib.storage.objectstore import MiB, ObjectStore

Log = Callable[[str], None]
STEPS = ("manifest", "toc", "restore", "contents", "amcheck", "assertions", "cleanup")


@dataclass(frozen=True)
class ValidationSettings:
    mode: str = "auto"  # auto: parallel restore from a local file when it fits the disk, else stream
    jobs: int = 2
    work_dir: str | None = None
    reserve_bytes: int = 256 * MiB  # free space to leave on the disk after the local file
    amcheck: str = "auto"  # auto: run when pg_amcheck and the extension are usable; off; required
    assertions_file: str | None = None
    pg_bin_dir: str | None = None
    timeout_seconds: float = 6 * 3600
    # Restoring as a superuser (or a member of pg_execute_server_program & co.) lets a crafted
    # archive run shell commands on the scratch server: refused unless explicitly accepted.
    scratch_allow_superuser: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "parallel", "stream"):
            raise ConfigError(f"validation mode {self.mode!r} must be auto, parallel or stream")
        if self.amcheck not in ("auto", "off", "required"):
            raise ConfigError(f"amcheck setting {self.amcheck!r} must be auto, off or required")
        if self.jobs < 1:
            raise ConfigError("validation restore jobs must be at least 1")


def load_assertions(path: str) -> list[tuple[str, str]]:
    """``[{name, sql}]`` from YAML; each query must return one true value."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"assertions file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"assertions file {path} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(doc, list) or not all(isinstance(i, dict) and {"name", "sql"} <= set(i) for i in doc):
        raise ConfigError(f"assertions file {path} must be a list of {{name, sql}} entries")
    return [(str(i["name"]), str(i["sql"])) for i in doc]


def validate_backup(*, store: ObjectStore, backup_key: str, scratch: DatabaseTarget, environment: str,
                    source: DatabaseTarget | None = None, settings: ValidationSettings | None = None,
                    log: Log = print) -> ValidationReport:
    """Validate one backup end to end; never raises for a bad backup, returns a failed report."""
    settings = settings or ValidationSettings()
    report = ValidationReport(environment, backup_key, store.uri_for(backup_key),
                              started_at=datetime.now(UTC).isoformat())
    run = StepRecorder(report.steps, log, "validation step")
    t0 = time.monotonic()
    archive: Archive | None = None
    scratch_name: str | None = None
    try:
        with run.step("manifest") as step:
            refuse_same_database(scratch, source)
            pg_restore = find_pg_restore(settings.pg_bin_dir)
            try:
                manifest = read_manifest(store, backup_key)
            except BackupError as exc:
                if "does not exist" in str(exc):
                    raise BackupError(f"manifest {store.uri_for(backup_key)}.manifest.json is missing; "
                                      "the backup never completed") from None
                raise
            report.database, report.snapshot_at = manifest.database, manifest.snapshot_at
            report.backup_sha256 = manifest.sha256
            report.mode, work_dir = choose_mode(settings.mode, manifest, settings.work_dir, settings.reserve_bytes)
            archive = fetch_for_restore(store, backup_key, manifest, mode=report.mode, work_dir=work_dir)
            archive.verify()
            step.detail = f"sha256 and size match ({human_bytes(archive.fetched.size)}); restore mode {report.mode}"

        remaining = lambda: max(1.0, settings.timeout_seconds - (time.monotonic() - t0))  # noqa: E731

        with run.step("toc") as step:
            rc, lines = archive.run([pg_restore, "--list"], {}, timeout=remaining(), log=log)
            if rc != 0:
                raise BackupError(f"the archive's table of contents does not read: {first_error(lines)}")
            dbname = next((m.group(1) for line in lines if (m := re.match(r";\s+dbname:\s+(\S+)", line))), None)
            entries = sum(1 for line in lines if line and not line.startswith(";"))
            if dbname != manifest.database:
                raise BackupError(f"the archive is a dump of database {dbname!r}, but the manifest is for "
                                  f"{manifest.database!r}")
            step.detail = f"{entries} entries, database {dbname}"

        with run.step("restore") as step:
            started = time.monotonic()
            name = new_scratch_name()
            create_scratch_database(scratch, name, allow_superuser=settings.scratch_allow_superuser)
            scratch_name = report.scratch_database = name  # from here on, cleanup drops it
            rc, lines = archive.restore_into(pg_restore, scratch.with_dbname(scratch_name), jobs=settings.jobs,
                                             timeout=remaining(), log=log)
            if rc != 0:
                raise BackupError(f"pg_restore stopped at the first error: {first_error(lines)}")
            report.restore_seconds = round(time.monotonic() - started, 3)
            how = f"-j {settings.jobs}" if report.mode == "parallel" else "stdin"
            step.detail = f"into {scratch_name} ({how})"

        target = scratch.with_dbname(scratch_name)
        with run.step("contents") as step:
            counts, objects = read_contents(target)
            compare_contents(manifest, counts, objects)
            report.tables, report.total_rows = len(counts), sum(counts.values())
            step.detail = f"{len(counts)} tables, {report.total_rows} rows and all objects match the manifest"

        with run.step("amcheck") as step:
            _amcheck(step, settings, target, remaining())

        with run.step("assertions") as step:
            if not settings.assertions_file:
                step.status, step.detail = "skipped", "no assertions file configured"
            else:
                _assertions(step, settings.assertions_file, target, manifest)
    except StepFailed:
        run.skip_rest([name for name in STEPS if name != "cleanup"], "an earlier step failed")
    finally:
        # Cleanup runs whatever happened; its own failure fails the validation but the first
        # failed step stays the reported cause.
        def clean(step: StepResult) -> None:
            notes = []
            if archive is not None and archive.local_file is not None:
                archive.remove()
                notes.append("local file removed")
            if scratch_name is not None:
                drop_scratch_database(scratch, scratch_name)
                notes.append(f"dropped {scratch_name}")
            step.detail = ", ".join(notes) or "nothing to clean"

        run.cleanup("cleanup", clean)
        report.failure = run.first_failure()
        report.ok = report.failure is None and all(report.step(name) for name in STEPS)
        report.validation_seconds = round(time.monotonic() - t0, 3)
        report.finished_at = datetime.now(UTC).isoformat()
    return report


def _amcheck(step: StepResult, settings: ValidationSettings, target: DatabaseTarget, timeout: float) -> None:
    """pg_amcheck --heapallindexed on the restored database.

    ``--install-missing`` creates the amcheck extension, which only a superuser may do in a fresh
    database, and the scratch role should not be one (see ``check_scratch_role``). So with the
    recommended role ``auto`` skips this step, and ``required`` fails with one line saying why."""
    if settings.amcheck == "off":
        step.status, step.detail = "skipped", "turned off"
        return
    try:
        tool = find_pg_tool("pg_amcheck", settings.pg_bin_dir)
    except ConfigError as exc:
        if settings.amcheck == "required":
            raise
        step.status, step.detail = "skipped", str(exc)
        return
    argv = [tool, "--heapallindexed", "--install-missing", "--jobs", str(settings.jobs), target.dbname]
    try:
        proc = subprocess.run(argv, env=child_env(target.libpq_env(), allow=PG_ENV), capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BackupError(f"pg_amcheck did not finish within {timeout:.0f} s and was stopped") from None
    output = (proc.stdout + proc.stderr).strip().splitlines()
    if proc.returncode == 0:
        step.detail = "heap and all indexes verified"
        return
    text = " ".join(output).lower()
    role = target.user or "(default)"
    if "could not open extension control" in text:
        why = "the amcheck extension is not installed on the scratch server (package postgresql-contrib)"
    elif any(s in text for s in ("permission denied", "must be superuser", "must have create privilege")):
        why = f"scratch role {role} cannot install the amcheck extension (only a superuser can)"
    else:
        last = output[-1] if output else f"exit code {proc.returncode}"
        raise BackupError(f"pg_amcheck found problems: {last}")
    if settings.amcheck == "auto":
        step.status, step.detail = "skipped", why
        return
    fix = ("set ACCI_VALIDATION_AMCHECK=auto, or use a superuser scratch role with ACCI_SCRATCH_ALLOW_SUPERUSER=true"
           if "cannot install" in why else "install it there, or set ACCI_VALIDATION_AMCHECK=auto")
    raise BackupError(f"ACCI_VALIDATION_AMCHECK=required, but {why}; {fix}")


def _assertions(step: StepResult, path: str, target: DatabaseTarget, manifest: BackupManifest) -> None:
    checks = load_assertions(path)
    params = {"snapshot_at": datetime.fromisoformat(manifest.snapshot_at),
              "backup_finished_at": datetime.fromisoformat(manifest.finished_at)}
    failed = []
    with psycopg.connect(**target.connect_kwargs()) as conn:
        for name, query in checks:
            try:
                rows = conn.execute(query, params if "%(" in query else None).fetchall()
            except psycopg.Error as exc:
                conn.rollback()
                failed.append(f"{name!r} raised {explain_pg_error(exc)}")
                continue
            if rows != [(True,)]:
                failed.append(f"{name!r} returned {rows[:1]}")
    if failed:
        raise BackupError("assertions failed: " + "; ".join(failed))
    step.detail = f"{len(checks)} assertions true"
