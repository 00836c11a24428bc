"""Proving a backup restores: checksum, table of contents, a real restore, contents, integrity.

pgBackRest's ``verify`` stops at checksums; this restores every backup into a throwaway
database and compares what came back with the manifest taken at dump time. Every step is timed
and recorded, the scratch database and the local file are removed whatever happens, and the
outcome is one report (stored beside the manifest) with one readable line when it failed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import yaml

from acci_ops.lib import catalog
from acci_ops.lib.backups import read_manifest
from acci_ops.lib.commands import child_env, find_pg_tool
from acci_ops.lib.dburl import DatabaseTarget
from acci_ops.lib.errors import AcciOpsError, BackupError, ConfigError
from acci_ops.lib.layout import BackupKey, parse_dump_key
from acci_ops.lib.manifest import BackupManifest
from acci_ops.lib.objectstore import MiB, ObjectStore
from acci_ops.lib.pgdump import explain_pg_error
from acci_ops.lib.restore import fetch_archive, last_error, pg_restore_run
from acci_ops.lib.scratch import (
    create_scratch_database,
    drop_scratch_database,
    new_scratch_name,
    refuse_same_database,
)
from acci_ops.lib.steps import StepFailed, StepRecorder, StepResult, steps_markdown

Log = Callable[[str], None]
REPORT_FORMAT = "acci-ops/pg-backup-validation"
VALIDATION_SUFFIX = ".validation.json"
STEPS = ("manifest", "toc", "restore", "contents", "amcheck", "assertions", "cleanup")
PG_TOOLS_HINT = "install postgresql-client-15 or set ACCI_PG_BIN"


def validation_key_for(key: str) -> str:
    return key + VALIDATION_SUFFIX


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

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "parallel", "stream"):
            raise ConfigError(f"validation mode {self.mode!r} must be auto, parallel or stream")
        if self.amcheck not in ("auto", "off", "required"):
            raise ConfigError(f"amcheck setting {self.amcheck!r} must be auto, off or required")
        if self.jobs < 1:
            raise ConfigError("validation restore jobs must be at least 1")


@dataclass
class ValidationReport:
    environment: str
    backup_key: str
    backup_uri: str
    ok: bool = False
    failure: str | None = None
    database: str = ""
    snapshot_at: str = ""
    mode: str = ""
    scratch_database: str = ""
    started_at: str = ""
    finished_at: str = ""
    restore_seconds: float = 0.0
    validation_seconds: float = 0.0
    tables: int = 0
    total_rows: int = 0
    steps: list[StepResult] = field(default_factory=list)
    format: str = REPORT_FORMAT
    format_version: int = 1

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ValidationReport:
        raw = json.loads(data)
        if raw.get("format") != REPORT_FORMAT:
            raise BackupError("not an acci_ops validation record")
        raw["steps"] = [StepResult(**s) for s in raw.get("steps", [])]
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})

    def step(self, name: str) -> StepResult | None:
        return next((s for s in self.steps if s.name == name), None)

    def markdown(self) -> str:
        head = f"**{'PASSED' if self.ok else 'FAILED'}** `{self.backup_key}`"
        if self.failure:
            head += f"\n\n{self.failure}"
        return head + "\n\n" + steps_markdown(self.steps)


def _compare_contents(manifest: BackupManifest, counts: dict[str, int], objects: dict[str, list[str]]) -> None:
    problems = []
    for kind, expected in sorted(manifest.objects.items()):
        got = set(objects.get(kind, []))
        missing, extra = sorted(set(expected) - got), sorted(got - set(expected))
        if missing:
            problems.append(f"missing {kind}: {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}")
        if extra:
            problems.append(f"unexpected {kind}: {', '.join(extra[:3])}{' …' if len(extra) > 3 else ''}")
    wrong = [f"{t} has {counts.get(t)} rows, manifest {n}" for t, n in sorted(manifest.row_counts.items())
             if counts.get(t) != n]
    if wrong:
        more = f" (+{len(wrong) - 3} more)" if len(wrong) > 3 else ""
        problems.append("row counts differ: " + "; ".join(wrong[:3]) + more)
    if problems:
        raise BackupError("; ".join(problems))


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
    local_file: Path | None = None
    scratch_name: str | None = None
    try:
        with run.step("manifest") as step:
            refuse_same_database(scratch, source)
            pg_restore = find_pg_tool("pg_restore", settings.pg_bin_dir, hint=PG_TOOLS_HINT)
            try:
                manifest = read_manifest(store, backup_key)
            except BackupError as exc:
                if "does not exist" in str(exc):
                    raise BackupError(f"manifest {store.uri_for(backup_key)}.manifest.json is missing; "
                                      "the backup never completed") from None
                raise
            report.database, report.snapshot_at = manifest.database, manifest.snapshot_at
            work_dir = settings.work_dir or tempfile.gettempdir()
            Path(work_dir).mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(work_dir).free
            need = manifest.dump_bytes + settings.reserve_bytes
            fits = free >= need
            if settings.mode == "parallel" and not fits:
                raise BackupError(f"not enough free disk in {work_dir} for a parallel restore: need "
                                  f"{need / 1e6:.0f} MB, {free / 1e6:.0f} MB free (or set the mode to stream)")
            report.mode = "parallel" if settings.mode == "parallel" or (settings.mode == "auto" and fits) else "stream"
            fetched = fetch_archive(store, backup_key, to_dir=work_dir if report.mode == "parallel" else None)
            local_file = fetched.local_file
            fetched.check(manifest)
            step.detail = f"sha256 and size match ({fetched.size} bytes); restore mode {report.mode}"

        remaining = lambda: max(1.0, settings.timeout_seconds - (time.monotonic() - t0))  # noqa: E731
        # Streaming mode feeds pg_restore the decompressed object on stdin; parallel mode names the file.
        from_store = dict(store=store, key=backup_key) if report.mode == "stream" else dict(store=None, key=None)
        archive = [str(local_file)] if report.mode == "parallel" else []

        with run.step("toc") as step:
            rc, lines = pg_restore_run([pg_restore, "--list", *archive], {}, timeout=remaining(), log=log, **from_store)
            if rc != 0:
                raise BackupError(f"the archive's table of contents does not read: {last_error(lines)}")
            dbname = next((m.group(1) for line in lines if (m := re.match(r";\s+dbname:\s+(\S+)", line))), None)
            entries = sum(1 for line in lines if line and not line.startswith(";"))
            if dbname != manifest.database:
                raise BackupError(f"the archive is a dump of database {dbname!r}, but the manifest is for "
                                  f"{manifest.database!r}")
            step.detail = f"{entries} entries, database {dbname}"

        with run.step("restore") as step:
            started = time.monotonic()
            name = new_scratch_name()
            create_scratch_database(scratch, name)
            scratch_name = report.scratch_database = name  # from here on, cleanup drops it
            argv = [pg_restore, "--exit-on-error", "--no-owner", "--no-privileges", "--dbname", scratch_name]
            if report.mode == "parallel":
                argv += ["--jobs", str(settings.jobs), *archive]
            rc, lines = pg_restore_run(argv, scratch.with_dbname(scratch_name).libpq_env(), timeout=remaining(),
                                    log=log, **from_store)
            if rc != 0:
                raise BackupError(f"pg_restore stopped at the first error: {last_error(lines)}")
            report.restore_seconds = round(time.monotonic() - started, 3)
            how = f"-j {settings.jobs}" if report.mode == "parallel" else "stdin"
            step.detail = f"into {scratch_name} ({how})"

        target = scratch.with_dbname(scratch_name)
        with run.step("contents") as step:
            try:
                with psycopg.connect(**target.connect_kwargs()) as conn:
                    counts = catalog.exact_row_counts(conn)
                    objects = catalog.list_objects(conn)
            except psycopg.Error as exc:
                raise BackupError(f"cannot read the restored database: {explain_pg_error(exc)}") from None
            _compare_contents(manifest, counts, objects)
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
            if local_file is not None:
                local_file.unlink(missing_ok=True)
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
    proc = subprocess.run(argv, env=child_env(target.libpq_env()), capture_output=True, text=True, timeout=timeout)
    output = (proc.stdout + proc.stderr).strip().splitlines()
    if proc.returncode == 0:
        step.detail = "heap and all indexes verified"
        return
    text = " ".join(output).lower()
    unusable = any(s in text for s in ("permission denied", "must be superuser", "could not open extension control"))
    if unusable and settings.amcheck == "auto":
        step.status, step.detail = "skipped", "amcheck extension not usable by the scratch role"
        return
    raise BackupError(f"pg_amcheck found problems: {output[-1] if output else 'exit code ' + str(proc.returncode)}")


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


def store_report(store: ObjectStore, report: ValidationReport) -> str:
    """Write the record beside the manifest; retention and the RPO read it from there."""
    key = validation_key_for(report.backup_key)
    store.put_bytes(key, report.to_json())
    return store.uri_for(key)


def newest_validated(store: ObjectStore, environment: str) -> tuple[BackupKey, ValidationReport] | None:
    """The newest backup whose stored validation passed (reads records newest first, stops at one)."""
    keys = {o.key for o in store.list(f"{environment}/")}
    candidates = sorted(
        (parsed for k in keys if k.endswith(VALIDATION_SUFFIX)
         and (parsed := parse_dump_key(k.removesuffix(VALIDATION_SUFFIX)))
         and parsed.key in keys and parsed.manifest_key in keys),
        reverse=True,
    )
    for backup in candidates:
        try:
            report = ValidationReport.from_json(store.get_bytes(validation_key_for(backup.key)))
        except (AcciOpsError, ValueError):
            continue
        if report.ok:
            return backup, report
    return None
