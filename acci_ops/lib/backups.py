"""Finding complete backups in a store, and copying one to another store with verification."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

from acci_ops.lib.errors import BackupError
from acci_ops.lib.layout import BackupKey, manifest_key_for
from acci_ops.lib.manifest import BackupManifest
from acci_ops.lib.objectstore import HashingReader, ObjectStore, sha256_of_stream
from acci_ops.lib.retention import complete_backups

Log = Callable[[str], None]


def list_backups(store: ObjectStore, environment: str, day: date | None = None) -> list[BackupKey]:
    """Complete backups (dump + manifest) of an environment, oldest first; one day's if given."""
    prefix = f"{environment}/{day.isoformat()}/" if day else f"{environment}/"
    backups, _ = complete_backups((o.key for o in store.list(prefix)), environment)
    return backups


def read_manifest(store: ObjectStore, backup: BackupKey | str) -> BackupManifest:
    key = backup.key if isinstance(backup, BackupKey) else backup
    where = store.uri_for(manifest_key_for(key))
    return BackupManifest.from_json(store.get_bytes(manifest_key_for(key)), where=where)


@dataclass(frozen=True)
class CopyResult:
    source_uri: str
    destination_uri: str
    bytes: int
    sha256: str
    seconds: float


def copy_backup(source: ObjectStore, destination: ObjectStore, backup: BackupKey, log: Log = print) -> CopyResult:
    """Stream a backup to another store, re-read it there and compare sha256 with the manifest.

    The manifest is copied last, so the destination holds a complete backup or none: a copy that
    does not verify is deleted and the step fails.
    """
    started = time.monotonic()
    manifest = read_manifest(source, backup)
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
    destination.put_bytes(manifest_key_for(backup.key), manifest.to_json())
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
    """New complete backups seen after a cursor, and where the next scan starts."""

    new_backups: list[BackupKey]
    cursor: str | None
    examined: int


def scan_new_backups(store: ObjectStore, environment: str, start_after: str, *, max_objects: int = 1000,
                     max_backups: int = 20, skip_if_suffix: str | None = None) -> Scan:
    """Walk keys after ``start_after`` (S3 ``StartAfter``), so the cost follows the number of new
    objects, not the size of the bucket. A backup counts once its manifest (the commit marker) is
    seen; with ``skip_if_suffix`` a backup whose sidecar with that suffix is already there is skipped."""
    import re

    from acci_ops.lib.layout import MANIFEST_SUFFIX, parse_dump_key

    dated = re.compile(re.escape(environment) + r"/\d{4}-\d{2}-\d{2}/")
    found: list[BackupKey] = []
    seen: set[str] = set()
    cursor, examined = start_after, 0
    for item in store.list(f"{environment}/", start_after=start_after):
        examined += 1
        seen.add(item.key)
        if item.key.endswith(MANIFEST_SUFFIX):
            parsed = parse_dump_key(item.key.removesuffix(MANIFEST_SUFFIX))
            if parsed and parsed.environment == environment:
                if len(found) >= max_backups:
                    break  # resume from here next tick
                found.append(parsed)
        if dated.match(item.key):
            # Only day folders move the cursor: a stray key such as <env>/notes.txt sorts after
            # every date and would otherwise hide all later backups from the next ticks.
            cursor = item.key
        if examined >= max_objects:
            break
    if skip_if_suffix:
        found = [b for b in found if b.key + skip_if_suffix not in seen and not store.exists(b.key + skip_if_suffix)]
    return Scan(found, cursor, examined)
