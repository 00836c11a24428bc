"""The backup manifest: the commit marker and the facts a restore is checked against.

Modelled on pgBackRest's manifest: written after the dump, beside it, it records what the
object must hash to and what the database held at the dump's snapshot (exact row counts and the
set of objects), so a restore can be proven rather than assumed.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from typing import Any

from acci_ops.lib.core.errors import BackupError

FORMAT = "acci-ops/pg-backup"
FORMAT_VERSION = 1
# Bounded reads: a manifest of a database with tens of thousands of tables is well under 8 MiB;
# anything larger is not ours and is refused before it is parsed.
MAX_MANIFEST_BYTES = 8 * 1024 * 1024
# Sanity bound for byte counts (1 PiB): larger values are nonsense that would size disk checks.
MAX_BYTES = 2**50
MAX_ROWS = 2**63 - 1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ENVIRONMENT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class Fields:
    """Strict checks of one parsed JSON object; every violation is one line naming the object.

    JSON from a bucket is untrusted input: ``"false"`` is not false, ``true`` is not 1, and a
    negative or absurd size is refused rather than acted upon."""

    def __init__(self, raw: dict[str, Any], where: str) -> None:
        self.raw, self.where = raw, where

    def fail(self, name: str, what: str) -> BackupError:
        return BackupError(f"{self.where}: {name} must be {what}")

    def string(self, name: str, *, empty: bool = False, max_len: int = 1024) -> str:
        value = self.raw.get(name)
        if not isinstance(value, str) or (not value and not empty) or len(value) > max_len:
            raise self.fail(name, f"a {'' if empty else 'non-empty '}string of at most {max_len} characters")
        return value

    def optional_string(self, name: str, max_len: int = 4096) -> str | None:
        value = self.raw.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > max_len):
            raise self.fail(name, "a string or null")
        return value

    def integer(self, name: str, maximum: int) -> int:
        value = self.raw.get(name)
        if type(value) is not int or not 0 <= value <= maximum:
            raise self.fail(name, f"a whole number from 0 to {maximum}")
        return value

    def number(self, name: str, maximum: float = 10**9) -> float:
        value = self.raw.get(name)
        if type(value) not in (int, float) or not 0 <= value <= maximum:
            raise self.fail(name, f"a number >= 0 (at most {maximum})")
        return value

    def boolean(self, name: str) -> bool:
        value = self.raw.get(name)
        if type(value) is not bool:
            raise self.fail(name, "true or false")
        return value

    def timestamp(self, name: str, *, empty: bool = False) -> str:
        value = self.raw.get(name)
        if empty and value == "":
            return value
        if isinstance(value, str) and len(value) <= 64:
            try:
                if datetime.fromisoformat(value).tzinfo is not None:
                    return value
            except ValueError:
                pass
        raise self.fail(name, "an ISO-8601 time with a timezone (2026-11-27T02:00:00+00:00)")

    def day(self, name: str) -> str:
        value = self.raw.get(name)
        if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            try:
                date.fromisoformat(value)
                return value
            except ValueError:
                pass
        raise self.fail(name, "a date like 2026-11-26")

    def sha256(self, name: str, *, empty: bool = False) -> str:
        value = self.raw.get(name)
        if (empty and value == "") or (isinstance(value, str) and _SHA256.match(value)):
            return value
        raise self.fail(name, "64 lowercase hex digits (a sha256)")

    def exact(self, name: str, expected: str) -> str:
        if self.raw.get(name) != expected:
            raise self.fail(name, repr(expected))
        return expected


def check_shape(raw: object, where: str, fmt: str, version: int, known: set[str], required: set[str],
                what: str) -> dict[str, Any]:
    """The common envelope: a JSON object of our format and version with exactly the known fields."""
    if not isinstance(raw, dict) or raw.get("format") != fmt:
        raise BackupError(f"{where} is not an acci_ops {what}")
    got = raw.get("format_version")
    if type(got) is not int or got != version:
        raise BackupError(f"{where} has format version {got!r}, this acci_ops reads version {version}")
    unknown = sorted(str(k)[:40] for k in set(raw) - known)
    if unknown:
        raise BackupError(f"{where} has unknown fields: {', '.join(unknown[:5])}")
    missing = sorted(required - set(raw))
    if missing:
        raise BackupError(f"{where} lacks fields: {', '.join(missing)}")
    return raw


def parse_json(data: bytes, where: str) -> object:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise BackupError(f"{where} is not valid JSON: {reason}") from None


class SignedDocument:
    """What manifests and validation records share: a dataclass with a ``signature`` field that
    covers every other field (see lib/backup/signing.py)."""

    signature: str | None

    def payload(self) -> dict[str, Any]:
        """Every field but the signature: what is signed."""
        doc = asdict(self)  # type: ignore[call-overload]  # subclasses are dataclasses
        doc.pop("signature")
        return doc

    def document(self) -> dict[str, Any]:
        doc = self.payload()
        if self.signature is not None:
            doc["signature"] = self.signature
        return doc

    def to_json(self) -> bytes:
        return json.dumps(self.document(), indent=2, sort_keys=True).encode()


@dataclass
class BackupManifest(SignedDocument):
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
    signature: str | None = None  # HMAC over the other fields (lib/backup/signing.py); None: unsigned
    # Row counts are read from the archive as it streams (lib/backup/archive_counts.py). When that
    # fails the backup still stands, row_counts is empty and this says why (validation reports it).
    row_counts_unavailable: str | None = None
    large_objects: int | None = None  # large objects in the archive (not rows of any table)

    # Written only when set, so manifests without them read the same as before these fields existed.
    _OMIT_WHEN_NONE = ("row_counts_unavailable", "large_objects")

    def payload(self) -> dict[str, Any]:
        doc = super().payload()
        for name in self._OMIT_WHEN_NONE:
            if doc.get(name) is None:
                doc.pop(name, None)
        return doc

    @classmethod
    def from_json(cls, data: bytes, *, where: str = "manifest") -> BackupManifest:
        """Parse and check a manifest strictly; a foreign or damaged one gives a one-line reason
        naming ``where``. The signature is carried, not checked (see lib/backup/signing.py)."""
        known = set(cls.__dataclass_fields__)
        optional = {"objects", "compression", "dump_format", "signature", "row_counts_unavailable", "large_objects"}
        raw = check_shape(parse_json(data, where), where, FORMAT, FORMAT_VERSION, known, known - optional,
                          "backup manifest")
        f = Fields(raw, where)
        environment = f.string("environment", max_len=63)
        if not _ENVIRONMENT.match(environment):
            raise f.fail("environment", "an environment name (lowercase letters, digits, _ or -)")
        row_counts = raw.get("row_counts")
        if not isinstance(row_counts, dict) or not all(
                isinstance(k, str) and type(v) is int and 0 <= v <= MAX_ROWS for k, v in row_counts.items()):
            raise BackupError(f"{where}: row_counts must map table names to whole numbers >= 0")
        objects = raw.get("objects", {})
        if not isinstance(objects, dict) or not all(
                isinstance(k, str) and isinstance(v, list) and all(isinstance(n, str) for n in v)
                for k, v in objects.items()):
            raise BackupError(f"{where}: objects must map kinds to lists of names")
        signature = f.optional_string("signature", max_len=200)
        return cls(
            environment=environment, database=f.string("database", max_len=128),
            partition=f.day("partition"), object_key=f.string("object_key"),
            started_at=f.timestamp("started_at"), finished_at=f.timestamp("finished_at"),
            snapshot_at=f.timestamp("snapshot_at"), server_version=f.string("server_version", max_len=200),
            pg_dump_version=f.string("pg_dump_version", max_len=200),
            dump_bytes=f.integer("dump_bytes", MAX_BYTES), stored_bytes=f.integer("stored_bytes", MAX_BYTES),
            sha256=f.sha256("sha256"), row_counts=dict(row_counts), objects=dict(objects),
            compression=f.exact("compression", "zstd") if "compression" in raw else "zstd",
            dump_format=f.exact("dump_format", "pg_dump-custom") if "dump_format" in raw else "pg_dump-custom",
            signature=signature,
            row_counts_unavailable=f.optional_string("row_counts_unavailable", max_len=1000),
            large_objects=f.integer("large_objects", MAX_ROWS) if raw.get("large_objects") is not None else None,
        )

    @property
    def total_rows(self) -> int:
        return sum(self.row_counts.values())
