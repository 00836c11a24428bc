"""The validation record: the signed sidecar (``<dump>.validation.json``) that says a backup restored.

It sits beside the manifest in the bucket and is read by everyone who must know which backups
are proven: retention (never delete the newest validated one), the validation sensor (skip what
already has a record), DR's choice of backup, and the RPO. Validation only writes it. So it lives
here, in the backup layer, with the manifest whose strict parsing and signing it shares, and
nothing in lib/backup has to reach up into lib/validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from acci_ops.lib.backup import signing
from acci_ops.lib.backup.inventory import KEY_TIME_TOLERANCE, Trust, inspect_backup
from acci_ops.lib.backup.layout import BackupKey, parse_dump_key
from acci_ops.lib.backup.manifest import MAX_ROWS, Fields, SignedDocument, check_shape, parse_json
from acci_ops.lib.backup.signing import Keyring
from acci_ops.lib.core.errors import BackupError
from acci_ops.lib.core.steps import StepResult, steps_markdown
from acci_ops.lib.storage.objectstore import ObjectStore

REPORT_FORMAT = "acci-ops/pg-backup-validation"
VALIDATION_SUFFIX = ".validation.json"
MAX_RECORD_BYTES = 1024 * 1024  # a record is a few KiB; anything larger is not ours


def validation_key_for(key: str) -> str:
    """The record sits beside its dump, like the manifest."""
    return key + VALIDATION_SUFFIX


@dataclass
class ValidationReport(SignedDocument):
    """What one validation found, step by step; stored (signed) as the backup's validation record."""

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
    signature: str | None = None  # HMAC over the other fields (lib/backup/signing.py); None: unsigned

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


def rpo_seconds(snapshot_at: str | datetime, now: datetime) -> float:
    """The recovery point: how much data a restore of the backup taken at ``snapshot_at`` loses
    if disaster strikes at ``now``. One definition for the validated asset, the restore check's
    metadata, drills and recovery (each rounds it for display as it needs)."""
    snapshot = datetime.fromisoformat(snapshot_at) if isinstance(snapshot_at, str) else snapshot_at
    return (now - snapshot).total_seconds()


def validated_rpo_seconds(store: ObjectStore, environment: str, keyring: Keyring | None, *,
                          now: datetime | None = None) -> float | None:
    """The environment's RPO right now: the age of the newest backup known to restore (signed,
    with a signed passing record), the number that matters when disaster strikes. None when there
    is none, or no key to authenticate one."""
    now = now or datetime.now(UTC)
    found = newest_validated(store, environment, keyring, now=now)
    return rpo_seconds(found[1].snapshot_at, now) if found else None
