"""The backup manifest: the commit marker and the facts a restore is checked against.

Modelled on pgBackRest's manifest: written after the dump, beside it, it records what the
object must hash to and what the database held at the dump's snapshot (exact row counts and the
set of objects), so a restore can be proven rather than assumed.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field
from typing import Any

from acci_ops.lib.errors import BackupError

FORMAT = "acci-ops/pg-backup"
FORMAT_VERSION = 1


@dataclass
class BackupManifest:
    environment: str
    database: str
    partition: str
    object_key: str
    started_at: str
    finished_at: str
    snapshot_at: str
    server_version: str
    pg_dump_version: str
    dump_bytes: int
    stored_bytes: int
    sha256: str
    row_counts: dict[str, int]
    objects: dict[str, list[str]] = field(default_factory=dict)
    compression: str = "zstd"
    dump_format: str = "pg_dump-custom"
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, *, where: str = "manifest") -> BackupManifest:
        """Parse and check a manifest; a foreign or damaged one gives a one-line reason."""
        try:
            raw: dict[str, Any] = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BackupError(f"{where} is not valid JSON: {exc}") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise BackupError(f"{where} is not an acci_ops backup manifest")
        if raw.get("format_version") != FORMAT_VERSION:
            raise BackupError(f"{where} has format version {raw.get('format_version')}, "
                              f"this acci_ops reads version {FORMAT_VERSION}")
        known = set(cls.__dataclass_fields__)
        missing = [name for name, f in cls.__dataclass_fields__.items()
                   if name not in raw and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise BackupError(f"{where} lacks fields: {', '.join(sorted(missing))}")
        return cls(**{k: v for k, v in raw.items() if k in known})

    @property
    def total_rows(self) -> int:
        return sum(self.row_counts.values())
