"""Where backups live inside a store, and how to recognise the ones acci_ops wrote.

Keys sort by environment, then day, then time, so a cursor (``StartAfter``) walks new backups
in order and retention can ignore anything that does not match this shape.

    <environment>/<YYYY-MM-DD>/<database>-<YYYYMMDDTHHMMSSZ>.pgdump.zst
    <environment>/<YYYY-MM-DD>/<database>-<YYYYMMDDTHHMMSSZ>.pgdump.zst.manifest.json
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime

DUMP_SUFFIX = ".pgdump.zst"
MANIFEST_SUFFIX = ".manifest.json"
_NAME = re.compile(
    r"^(?P<env>[a-z0-9][a-z0-9_-]*)/(?P<day>\d{4}-\d{2}-\d{2})/"
    r"(?P<db>[A-Za-z0-9_.-]+)-(?P<ts>\d{8}T\d{6}Z)\.pgdump\.zst$"
)


@dataclass(frozen=True, order=True)
class BackupKey:
    """A parsed dump key; ordering is chronological within an environment."""

    taken_at: datetime
    environment: str
    day: date
    database: str
    key: str

    @property
    def manifest_key(self) -> str:
        return manifest_key_for(self.key)


def dump_key(environment: str, day: date, database: str, taken_at: datetime) -> str:
    """The key a new dump is written under."""
    safe_db = re.sub(r"[^A-Za-z0-9_.-]", "_", database)
    stamp = taken_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{environment}/{day.isoformat()}/{safe_db}-{stamp}{DUMP_SUFFIX}"


def manifest_key_for(key: str) -> str:
    """The manifest sits beside its dump; it is written last and marks the backup complete."""
    return key + MANIFEST_SUFFIX


def parse_dump_key(key: str) -> BackupKey | None:
    """Return the parsed key, or None for anything acci_ops did not write."""
    match = _NAME.match(key)
    if not match:
        return None
    try:
        day = date.fromisoformat(match["day"])
        taken = datetime.strptime(match["ts"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None
    return BackupKey(taken, match["env"], day, match["db"], key)


def complete_backups(keys: Iterable[str], environment: str) -> tuple[list[BackupKey], list[str]]:
    """From a listing, the backups acci_ops wrote for ``environment`` that have their manifest,
    and manifests left without a dump (an interrupted deletion). Everything else is ignored."""
    key_set = set(keys)
    complete: list[BackupKey] = []
    for key in key_set:
        parsed = parse_dump_key(key)
        if parsed and parsed.environment == environment and manifest_key_for(key) in key_set:
            complete.append(parsed)
    orphans = sorted(
        k for k in key_set
        if k.endswith(MANIFEST_SUFFIX) and parse_dump_key(k.removesuffix(MANIFEST_SUFFIX))
        and k.removesuffix(MANIFEST_SUFFIX) not in key_set
        and k.startswith(f"{environment}/")
    )
    return sorted(complete), orphans
