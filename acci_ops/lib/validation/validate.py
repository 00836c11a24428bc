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
from typing import Any

import psycopg
import yaml

from acci_ops.lib.backup import signing
from acci_ops.lib.backup.inventory import KEY_TIME_TOLERANCE, Trust, inspect_backup, read_manifest
from acci_ops.lib.backup.layout import BackupKey, parse_dump_key
from acci_ops.lib.backup.manifest import MAX_ROWS, BackupManifest, Fields, check_shape, parse_json
from acci_ops.lib.backup.restore import fetch_archive, first_error, pg_restore_run
from acci_ops.lib.backup.signing import Keyring
from acci_ops.lib.core.commands import PG_ENV, child_env, find_pg_tool
from acci_ops.lib.core.errors import BackupError, ConfigError
from acci_ops.lib.core.steps import StepFailed, StepRecorder, StepResult, steps_markdown
from acci_ops.lib.postgres import catalog
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
    # The sha256 of the object that was validated (from its manifest): binds the record to that
    # backup, so a record copied next to another backup does not vouch for it.
    backup_sha256: str = ""
    signature: str | None = None  # HMAC over the other fields (lib/signing.py); None: unsigned

    def payload(self) -> dict[str, Any]:
        """Every field but the signature: what is signed."""
        doc = asdict(self)
        doc.pop("signature")
        return doc

    def document(self) -> dict[str, Any]:
        doc = self.payload()
        if self.signature is not None:
            doc["signature"] = self.signature
        return doc

    def to_json(self) -> bytes:
        return json.dumps(self.document(), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, *, where: str = "validation record") -> ValidationReport:
        """Parse a stored record strictly (it comes from the bucket: ``"ok": "false"`` is not a
        boolean, a list is not a record); any violation is one line naming ``where``."""
        known = set(cls.__dataclass_fields__)
        raw = check_shape(parse_json(data, where), where, REPORT_FORMAT, 1, known,
                          {"environment", "backup_key", "ok"}, "validation record")
        f = Fields(raw, where)
        steps = raw.get("steps", [])
        if not isinstance(steps, list) or len(steps) > 100 or not all(
                isinstance(s, dict) and set(s) <= {"name", "status", "seconds", "detail"}
                and isinstance(s.get("name"), str) and s.get("status") in ("passed", "failed", "skipped")
                and type(s.get("seconds", 0.0)) in (int, float) and isinstance(s.get("detail", ""), str)
                for s in steps):
            raise f.fail("steps", "a list of {name, status, seconds, detail} with status passed, failed or skipped")
        present = lambda name, check: check(name) if name in raw else cls.__dataclass_fields__[name].default  # noqa: E731
        report = cls(
            environment=f.string("environment", max_len=63), backup_key=f.string("backup_key"),
            backup_uri=present("backup_uri", lambda n: f.string(n, empty=True, max_len=2048)),
            ok=f.boolean("ok"), failure=f.optional_string("failure"),
            database=present("database", lambda n: f.string(n, empty=True, max_len=128)),
            snapshot_at=present("snapshot_at", lambda n: f.timestamp(n, empty=True)),
            mode=present("mode", lambda n: f.string(n, empty=True, max_len=20)),
            scratch_database=present("scratch_database", lambda n: f.string(n, empty=True, max_len=128)),
            started_at=present("started_at", lambda n: f.timestamp(n, empty=True)),
            finished_at=present("finished_at", lambda n: f.timestamp(n, empty=True)),
            restore_seconds=present("restore_seconds", f.number),
            validation_seconds=present("validation_seconds", f.number),
            tables=present("tables", lambda n: f.integer(n, MAX_ROWS)),
            total_rows=present("total_rows", lambda n: f.integer(n, MAX_ROWS)),
            steps=[StepResult(**s) for s in steps],
            backup_sha256=present("backup_sha256", lambda n: f.sha256(n, empty=True)),
            signature=f.optional_string("signature", max_len=200),
        )
        if report.ok and (report.failure is not None or not report.snapshot_at):
            raise BackupError(f"{where}: a passed record must have no failure and a snapshot_at")
        return report

    def step(self, name: str) -> StepResult | None:
        return next((s for s in self.steps if s.name == name), None)

    def markdown(self) -> str:
        head = f"**{'PASSED' if self.ok else 'FAILED'}** `{self.backup_key}`"
        if self.failure:
            head += f"\n\n{self.failure}"
        return head + "\n\n" + steps_markdown(self.steps)


def compare_contents(manifest: BackupManifest, counts: dict[str, int], objects: dict[str, list[str]]) -> None:
    """Raise one line naming what a restored database lacks against the manifest (shared by
    validation and DR, so both prove a restore the same way)."""
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
            report.backup_sha256 = manifest.sha256
            work_dir = settings.work_dir or tempfile.gettempdir()
            Path(work_dir).mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(work_dir).free
            need = manifest.dump_bytes + settings.reserve_bytes
            fits = free >= need
            if settings.mode == "parallel" and not fits:
                raise BackupError(f"not enough free disk in {work_dir} for a parallel restore: need "
                                  f"{need / 1e6:.0f} MB, {free / 1e6:.0f} MB free (or set the mode to stream)")
            report.mode = "parallel" if settings.mode == "parallel" or (settings.mode == "auto" and fits) else "stream"
            fetched = fetch_archive(store, backup_key, to_dir=work_dir if report.mode == "parallel" else None,
                                    max_output=manifest.dump_bytes, max_input=manifest.stored_bytes)
            local_file = fetched.local_file
            fetched.check(manifest)
            step.detail = f"sha256 and size match ({fetched.size} bytes); restore mode {report.mode}"

        remaining = lambda: max(1.0, settings.timeout_seconds - (time.monotonic() - t0))  # noqa: E731
        # Streaming mode feeds pg_restore the decompressed object on stdin; parallel mode names the file.
        from_store = (dict(store=store, key=backup_key, max_output=manifest.dump_bytes) if report.mode == "stream"
                      else dict(store=None, key=None))
        archive = [str(local_file)] if report.mode == "parallel" else []

        with run.step("toc") as step:
            rc, lines = pg_restore_run([pg_restore, "--list", *archive], {}, timeout=remaining(), log=log, **from_store)
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
            argv = [pg_restore, "--exit-on-error", "--no-owner", "--no-privileges", "--dbname", scratch_name]
            if report.mode == "parallel":
                argv += ["--jobs", str(settings.jobs), *archive]
            rc, lines = pg_restore_run(argv, scratch.with_dbname(scratch_name).libpq_env(), timeout=remaining(),
                                    log=log, **from_store)
            if rc != 0:
                raise BackupError(f"pg_restore stopped at the first error: {first_error(lines)}")
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


MAX_RECORD_BYTES = 1024 * 1024  # a record is a few KiB; anything larger is not ours


def store_report(store: ObjectStore, report: ValidationReport, keyring: Keyring | None = None) -> str:
    """Write the record beside the manifest (signed when a key is configured); retention, the RPO
    and DR's choice read it from there and trust only signed records."""
    if keyring is not None:
        report.signature = keyring.signature(report.payload())
    key = validation_key_for(report.backup_key)
    store.put_bytes(key, report.to_json())
    return store.uri_for(key)


def read_record(store: ObjectStore, backup_key: str) -> ValidationReport:
    """The stored record of a backup, read bounded and parsed strictly (one-line BackupError)."""
    key = validation_key_for(backup_key)
    return ValidationReport.from_json(store.get_bytes(key, max_bytes=MAX_RECORD_BYTES), where=store.uri_for(key))


def record_problem(record: ValidationReport, trust: Trust, keyring: Keyring) -> str | None:
    """Why a parsed record does not vouch for this trusted backup, or None. A record is acci_ops's
    only when signed, and it is about this backup only when its key, environment, sha256 and
    snapshot are the manifest's (a signed record copied next to another backup proves nothing)."""
    status = keyring.verify(record.document())
    if status != signing.SIGNED:
        return f"the record is {status}"
    manifest = trust.manifest
    if record.backup_key != trust.backup.key or record.environment != trust.backup.environment:
        return f"the record is about {record.backup_key[:200]}"
    if manifest is None or record.backup_sha256 != manifest.sha256 or (
            record.ok and record.snapshot_at != manifest.snapshot_at):
        return "the record describes another object than the manifest"
    return None


def newest_validated(store: ObjectStore, environment: str, keyring: Keyring | None = None, *,
                     now: datetime | None = None) -> tuple[BackupKey, ValidationReport] | None:
    """The trusted backup with the newest snapshot whose signed validation record passed.

    Without a signing key nothing can be authenticated, so nothing counts as validated. Reads
    records newest key first and stops once no older key can hold a newer snapshot; an
    unparsable, unsigned or mismatched record counts as "not validated", never as an error."""
    if keyring is None:
        return None
    now = now or datetime.now(UTC)
    keys = {o.key for o in store.list(f"{environment}/")}
    candidates = sorted(
        (parsed for k in keys if k.endswith(VALIDATION_SUFFIX)
         and (parsed := parse_dump_key(k.removesuffix(VALIDATION_SUFFIX)))
         and parsed.environment == environment and parsed.key in keys and parsed.manifest_key in keys),
        reverse=True,
    )
    best: tuple[Trust, ValidationReport] | None = None
    for backup in candidates:
        if best and backup.taken_at < best[0].snapshot_at - 2 * KEY_TIME_TOLERANCE:
            break
        trust = inspect_backup(store, backup, keyring, now=now)
        if not trust.trusted:
            continue
        try:
            record = read_record(store, backup.key)
        except BackupError:
            continue
        if record.ok and record_problem(record, trust, keyring) is None:
            if best is None or trust.snapshot_at > best[0].snapshot_at:
                best = (trust, record)
    return (best[0].backup, best[1]) if best else None
