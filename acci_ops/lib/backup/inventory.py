"""Finding complete backups in a store, deciding which of them acci_ops can trust, and copying one
to another store with verification.

Anyone who can write to the bucket can add keys that look like backups. Nothing here ranks a
backup by its key alone: a backup is *trusted* only when its key is not dated in the future, its
manifest parses strictly, carries a valid signature (lib/backup/signing.py), and agrees with its key
(object key, environment, partition, database, and a start time within a few minutes of the
key's timestamp); trusted backups are then ranked by the manifest's snapshot time.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from acci_ops.lib.backup import signing
from acci_ops.lib.backup.layout import BackupKey, complete_backups, manifest_key_for
from acci_ops.lib.backup.manifest import MAX_MANIFEST_BYTES, BackupManifest
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
