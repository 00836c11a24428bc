"""Finding complete backups in a store, deciding which of them acci_ops can trust, and copying one
to another store with verification.

Anyone who can write to the bucket can add keys that look like backups. Nothing here ranks a
backup by its key alone: a backup is *trusted* only when its key is not dated in the future, its
manifest parses strictly, carries a valid signature (lib/signing.py), and agrees with its key
(object key, environment, partition, database, and a start time within a few minutes of the
key's timestamp); trusted backups are then ranked by the manifest's snapshot time.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from acci_ops.lib.backup import signing
from acci_ops.lib.backup.layout import MANIFEST_SUFFIX, BackupKey, manifest_key_for, parse_dump_key
from acci_ops.lib.backup.manifest import MAX_MANIFEST_BYTES, BackupManifest
from acci_ops.lib.backup.retention import RetentionPlan, RetentionPolicy, complete_backups, plan_retention
from acci_ops.lib.backup.signing import Keyring
from acci_ops.lib.core.errors import BackupError
from acci_ops.lib.storage.objectstore import HashingReader, ObjectStore, sha256_of_stream

Log = Callable[[str], None]

# Clocks differ a little between the machine that writes a backup and the one that reads it.
CLOCK_SKEW = timedelta(minutes=10)
# The key's timestamp is the backup's start; the snapshot is exported seconds later. A manifest
# whose start or snapshot is further than this from its key does not describe that key.
KEY_TIME_TOLERANCE = timedelta(minutes=15)

TRUSTED = "trusted"
FUTURE = "future"
NO_KEY = "no key"
UNREADABLE = "unreadable"
UNTRUSTED = "untrusted"

REASONS = {
    FUTURE: "dated in the future — ignored, kept",
    NO_KEY: "no signing key — cannot authenticate, kept",
    signing.UNSIGNED: "unsigned — not acci_ops's, kept",
    signing.BADLY_SIGNED: "badly signed — not acci_ops's, kept",
}


def list_backups(store: ObjectStore, environment: str, day: date | None = None) -> list[BackupKey]:
    """Complete backups (dump + manifest) of an environment, oldest first; one day's if given."""
    prefix = f"{environment}/{day.isoformat()}/" if day else f"{environment}/"
    backups, _ = complete_backups((o.key for o in store.list(prefix)), environment)
    return backups


def read_manifest_bytes(store: ObjectStore, backup: BackupKey | str) -> tuple[bytes, BackupManifest]:
    """The manifest's stored bytes (at most MAX_MANIFEST_BYTES) and their strict parse."""
    key = backup.key if isinstance(backup, BackupKey) else backup
    where = store.uri_for(manifest_key_for(key))
    data = store.get_bytes(manifest_key_for(key), max_bytes=MAX_MANIFEST_BYTES)
    return data, BackupManifest.from_json(data, where=where)


def read_manifest(store: ObjectStore, backup: BackupKey | str) -> BackupManifest:
    """Read (bounded) and strictly parse a backup's manifest; one-line BackupError otherwise."""
    return read_manifest_bytes(store, backup)[1]


def is_future(backup: BackupKey, now: datetime) -> bool:
    """A key dated after now (beyond clock skew) cannot be a backup that has happened: ignore it.
    The partition day may be one day ahead of the UTC time in zones east of UTC."""
    ahead = now + CLOCK_SKEW
    return backup.taken_at > ahead or backup.day > ahead.date() + timedelta(days=1)


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)


def consistency_problem(manifest: BackupManifest, backup: BackupKey, now: datetime) -> str | None:
    """Why a (signed) manifest does not describe the key it sits beside, or None."""
    if manifest.object_key != backup.key:
        return f"the manifest describes {manifest.object_key[:200]}"
    if manifest.environment != backup.environment:
        return f"the manifest is for environment {manifest.environment!r}"
    if manifest.partition != backup.day.isoformat():
        return f"the manifest's partition is {manifest.partition}"
    if re.sub(r"[^A-Za-z0-9_.-]", "_", manifest.database) != backup.database:
        return f"the manifest is for database {manifest.database!r}"
    started, snapshot = _parse_time(manifest.started_at), _parse_time(manifest.snapshot_at)
    if abs(started - backup.taken_at) > KEY_TIME_TOLERANCE:
        return f"the key says {backup.taken_at.isoformat()} but the manifest started {manifest.started_at}"
    if not started - CLOCK_SKEW <= snapshot <= started + KEY_TIME_TOLERANCE:
        return f"snapshot {manifest.snapshot_at} is not within minutes of the start {manifest.started_at}"
    if snapshot > now + CLOCK_SKEW:
        return f"snapshot {manifest.snapshot_at} is in the future"
    return None


@dataclass(frozen=True)
class Trust:
    """What acci_ops may conclude about one backup; only TRUSTED ones are ranked, deleted or chosen."""

    backup: BackupKey
    status: str
    reason: str = ""
    manifest: BackupManifest | None = field(default=None, repr=False)

    @property
    def trusted(self) -> bool:
        return self.status == TRUSTED

    @property
    def signed(self) -> bool:
        return self.status in (TRUSTED, UNTRUSTED)  # UNTRUSTED: signed, but not about this key

    @property
    def snapshot_at(self) -> datetime:
        return _parse_time(self.manifest.snapshot_at) if self.manifest else self.backup.taken_at

    def describe(self) -> str:
        """For refusals: 'unsigned (not written by this acci_ops)' and the like."""
        return {
            FUTURE: "dated in the future",
            NO_KEY: "not authenticated (no signing key configured)",
            UNREADABLE: f"unreadable: {self.reason.removeprefix('unreadable manifest (').removesuffix(')')}",
            signing.UNSIGNED: "unsigned (not written by this acci_ops)",
            signing.BADLY_SIGNED: "badly signed (not written by this acci_ops, or signed with another key)",
        }.get(self.status, self.reason)


def inspect_backup(store: ObjectStore, backup: BackupKey, keyring: Keyring | None, *,
                   now: datetime | None = None) -> Trust:
    """Decide whether a complete backup is acci_ops's own (one bounded manifest read)."""
    now = now or datetime.now(UTC)
    if is_future(backup, now):
        return Trust(backup, FUTURE, REASONS[FUTURE])
    if keyring is None:
        return Trust(backup, NO_KEY, REASONS[NO_KEY])
    try:
        data, manifest = read_manifest_bytes(store, backup)
    except BackupError as exc:
        return Trust(backup, UNREADABLE, f"unreadable manifest ({exc})")
    del data
    status = keyring.verify(manifest.document())
    if status != signing.SIGNED:
        return Trust(backup, status, REASONS[status], manifest)
    problem = consistency_problem(manifest, backup, now)
    if problem:
        return Trust(backup, UNTRUSTED, f"untrusted ({problem})", manifest)
    return Trust(backup, TRUSTED, "", manifest)


def newest_trusted_manifest(store: ObjectStore, environment: str, keyring: Keyring | None, *,
                            now: datetime | None = None) -> Trust | None:
    """The trusted backup with the newest snapshot (reads manifests newest key first and stops
    once no older key can hold a newer snapshot)."""
    now = now or datetime.now(UTC)
    best: Trust | None = None
    for backup in reversed(list_backups(store, environment)):
        if best and backup.taken_at < best.snapshot_at - 2 * KEY_TIME_TOLERANCE:
            break
        trust = inspect_backup(store, backup, keyring, now=now)
        if trust.trusted and (best is None or trust.snapshot_at > best.snapshot_at):
            best = trust
    return best


def plan_store_retention(store: ObjectStore, environment: str, policy: RetentionPolicy, keyring: Keyring | None,
                         *, now: datetime | None = None, protect: Collection[str] = ()
                         ) -> tuple[RetentionPlan, list[str]]:
    """Plan retention for one store: only trusted backups are ranked (by snapshot time) and may be
    deleted; the newest validated one is protected; everything else is kept with its reason.

    Cost: one listing of the environment, one bounded manifest read per complete backup, plus the
    validation records newest_validated reads. Returns the plan and the orphan manifests (manifest
    without dump, acci_ops-signed) that may be removed."""
    from acci_ops.lib.validation.validate import newest_validated  # validation imports this module

    now = now or datetime.now(UTC)
    keys = [o.key for o in store.list(f"{environment}/")]
    backups, orphans = complete_backups(keys, environment)
    inspected = [inspect_backup(store, backup, keyring, now=now) for backup in backups]
    trusted = [t for t in inspected if t.trusted]
    untrusted = {t.backup.key: t.reason for t in inspected if not t.trusted}
    protected = set(protect)
    if keyring is not None:
        validated = newest_validated(store, environment, keyring, now=now)
        if validated:
            # The newest backup known to restore is what DR would use: never delete it.
            protected.add(validated[0].key)
    plan = plan_retention([t.backup for t in trusted], policy, protected,
                          snapshot_at={t.backup.key: t.snapshot_at for t in trusted}, untrusted=untrusted)
    removable = []
    for orphan in orphans if keyring is not None else []:
        try:
            manifest = BackupManifest.from_json(store.get_bytes(orphan, max_bytes=MAX_MANIFEST_BYTES),
                                                where=store.uri_for(orphan))
        except BackupError:
            continue
        if keyring.verify(manifest.document()) == signing.SIGNED:
            removable.append(orphan)
    return plan, removable


@dataclass(frozen=True)
class CopyResult:
    source_uri: str
    destination_uri: str
    bytes: int
    sha256: str
    seconds: float


def copy_backup(source: ObjectStore, destination: ObjectStore, backup: BackupKey, log: Log = print) -> CopyResult:
    """Stream a backup to another store, re-read it there and compare sha256 with the manifest.

    The manifest is copied last and byte for byte (its signature travels with it), so the
    destination holds a complete backup or none: a copy that does not verify is deleted and the
    step fails.
    """
    started = time.monotonic()
    manifest_bytes, manifest = read_manifest_bytes(source, backup)
    with source.open_read(backup.key) as body:
        hashed = HashingReader(body)
        destination.upload_stream(backup.key, hashed)
    if hashed.sha256.hexdigest() != manifest.sha256:
        destination.delete(backup.key)
        raise BackupError(f"{source.uri_for(backup.key)} does not match its manifest's sha256; not copied offsite")
    with destination.open_read(backup.key) as copied:
        digest, size = sha256_of_stream(copied)
    if digest != manifest.sha256 or size != manifest.stored_bytes:
        destination.delete(backup.key)
        raise BackupError(f"offsite copy {destination.uri_for(backup.key)} failed verification "
                          f"(sha256 {digest[:12]}… != {manifest.sha256[:12]}…); copy removed")
    destination.put_bytes(manifest_key_for(backup.key), manifest_bytes)
    seconds = time.monotonic() - started
    log(f"copied and verified {destination.uri_for(backup.key)} ({size} bytes, {seconds:.1f} s)")
    return CopyResult(source.uri_for(backup.key), destination.uri_for(backup.key), size, digest, seconds)


def delete_backup(store: ObjectStore, backup_key: str) -> None:
    """Remove a dump, its sidecars, then its manifest: an interruption leaves at worst a manifest
    without a dump, which retention recognises and removes on its next run."""
    store.delete(backup_key)
    manifest = manifest_key_for(backup_key)
    for item in store.list(backup_key + "."):
        if item.key != manifest:
            store.delete(item.key)
    store.delete(manifest)


@dataclass(frozen=True)
class Scan:
    """Backups to validate found by one sensor tick, where the next tick starts, and what was skipped."""

    new_backups: list[BackupKey]
    cursor: str | None
    examined: int
    skipped: list[str] = field(default_factory=list)  # one-line warnings (today's/future/too-old days)


def scan_new_backups(store: ObjectStore, environment: str, start_after: str, *, today: date | None = None,
                     first_day: date | None = None, window_days: int = 7, max_objects: int = 1000,
                     max_backups: int = 20, skip_if_suffix: str | None = None,
                     keyring: Keyring | None = None) -> Scan:
    """One bounded sensor pass: keys after the cursor (S3 ``StartAfter``) plus a re-examination
    of the last ``window_days`` day folders behind it, so backups that land late are still seen.

    Blinding-proof rules: the cursor only ever moves to keys that sort before today's day folder
    (``<env>/<today>/``), so a key dated today or in the future (a stray README, a clock-skewed
    backup) can never carry it past backups that have not landed yet; backups dated today or later,
    or before ``first_day``, have no partition and are skipped with a warning, never requested.
    At most ``max_objects`` keys are read (half reserved for the cursor's scan, so a window full of
    junk cannot stall it) and at most ``max_backups`` backups returned; the cursor stops before
    the first backup left for the next tick. With ``skip_if_suffix``, a backup whose sidecar of
    that suffix exists is skipped; with a ``keyring``, only a sidecar that parses and carries a
    valid signature counts (a planted record does not hide a backup)."""
    from acci_ops.lib.validation.validate import ValidationReport  # validation imports this module

    today = today or datetime.now(UTC).date()
    boundary = f"{environment}/{today.isoformat()}/"
    window_budget = max_objects // 2
    examined = 0
    window: list[str] = []
    for offset in range(window_days, 0, -1):
        day = today - timedelta(days=offset)
        prefix = f"{environment}/{day.isoformat()}/"
        if prefix > start_after or (first_day and day < first_day) or len(window) >= window_budget:
            continue  # ahead of the cursor: the main scan reads it
        for item in store.list(prefix):
            window.append(item.key)
            if len(window) >= window_budget:
                break
    main: list[str] = []
    for item in store.list(f"{environment}/", start_after=start_after):
        main.append(item.key)
        if len(main) >= max_objects - len(window):
            break
    examined = len(window) + len(main)
    seen = set(window) | set(main)
    skipped: list[str] = []
    warned: set[date] = set()

    def done(backup: BackupKey) -> bool:
        if not skip_if_suffix:
            return False
        sidecar = backup.key + skip_if_suffix
        if keyring is None:
            return sidecar in seen or store.exists(sidecar)
        if sidecar not in seen and not store.exists(sidecar):
            return False
        try:
            record = ValidationReport.from_json(store.get_bytes(sidecar, max_bytes=1024 * 1024),
                                                where=store.uri_for(sidecar))
        except BackupError:
            return False
        return keyring.verify(record.document()) == signing.SIGNED and record.backup_key == backup.key

    def candidate(key: str) -> BackupKey | None:
        if not key.endswith(MANIFEST_SUFFIX):
            return None
        parsed = parse_dump_key(key.removesuffix(MANIFEST_SUFFIX))
        if not parsed or parsed.environment != environment or (parsed.key not in seen and not store.exists(parsed.key)):
            return None
        if parsed.day >= today or (first_day and parsed.day < first_day):
            if parsed.day not in warned:
                warned.add(parsed.day)
                why = "today or later: no partition yet" if parsed.day >= today else f"before {first_day}"
                skipped.append(f"skipping backups dated {parsed.day.isoformat()} ({why}): {store.uri_for(key)}")
            return None
        return parsed

    found: list[BackupKey] = []
    taken: set[str] = set()
    for key in window:
        parsed = candidate(key)
        if parsed and len(found) < max_backups and parsed.key not in taken and not done(parsed):
            found.append(parsed)
            taken.add(parsed.key)
    cursor = start_after
    for key in main:
        if key >= boundary:
            candidate(key)  # only for the warning: today's and future folders never move the cursor
            continue
        parsed = candidate(key)
        if parsed and parsed.key not in taken and not done(parsed):
            if len(found) >= max_backups:
                break  # resume from here next tick
            found.append(parsed)
            taken.add(parsed.key)
        cursor = key
    return Scan(found, cursor, examined, skipped)
