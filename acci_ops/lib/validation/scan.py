"""Finding the backups the validation sensor should validate: one bounded pass per tick.

Lives with validation because it answers validation's question (which complete backups have no
signed validation record yet); it only reads the store (listing, the record sidecars).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from acci_ops.lib.backup import signing
from acci_ops.lib.backup.layout import MANIFEST_SUFFIX, BackupKey, parse_dump_key
from acci_ops.lib.backup.records import MAX_RECORD_BYTES, ValidationReport
from acci_ops.lib.backup.signing import Keyring
from acci_ops.lib.core.errors import BackupError
from acci_ops.lib.storage.objectstore import ObjectStore


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
            record = ValidationReport.from_json(store.get_bytes(sidecar, max_bytes=MAX_RECORD_BYTES),
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
