"""The release ledger: what was deployed where, what analysis said about it, and what it rolled back to.

Promotion and rollback decide on this history ("is 1.4.0 verified on staging?", "what did production
run before?"), so it lives where it survives the cluster, the Dagster instance and its database: the
backup object store, one signed JSON object per record under ``releases/<environment>/``. Records are
signed with the backup signing key (``Keyring``) over their canonical JSON, including the record's own
key, and verified on every read: a record that is unsigned, badly signed, copied to another key or
another environment is ignored with a warning, never trusted. A bucket writer without the key can
still delete records; the rules below then err towards "not verified", which refuses a promotion
rather than allowing one.

Keys are ``releases/<env>/<inverted ms>-<UTC time>-<version>-<kind>-<random>.json``: the inverted
millisecond count makes the store's ascending listing newest first, so reading the latest records
costs one listing page however long the history grows; the UTC time keeps keys readable in a bucket
browser.

Verification rules (what ``verified`` means):

- a version is verified in an environment only by a passing analysis there (any record of that
  version whose verdict is ``passed`` and that was not rolled back);
- the newest record that judges the version decides: a later failed or inconclusive analysis (a
  re-verification, or a release of the same version that failed) withdraws the verification, and so
  does rolling it back (a release of it with ``rolled_back``, or a ``rollback`` away from it): someone
  or something judged it bad there;
- records without a verdict (a rollback that ran no analysis) judge nothing about their version;
- only the newest ``SCAN_LIMIT`` records are read: a version judged longer ago counts as unverified.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from acci_ops.lib.backup.signing import SIGNED, Keyring
from acci_ops.lib.core.errors import AcciOpsError, ConfigError
from acci_ops.lib.storage.objectstore import ObjectStore

PREFIX = "releases"
FORMAT = "acci-ops/release-record/1"
KINDS = ("release", "rollback", "reverification")
VERDICTS = ("passed", "failed", "inconclusive")
MAX_MEASUREMENTS = 60  # the newest ones are kept: they show how the analysis ended
MAX_TEXT = 500  # characters of one string inside a measurement, or of a reason
MAX_RECORD_BYTES = 256 * 1024
DEFAULT_LIMIT = 50
SCAN_LIMIT = 200  # records read (at most) to decide verification and rollback targets
MAX_IGNORED = 50  # untrusted keys skipped (beyond the limit) before a read stops

ENVIRONMENT = re.compile(r"^[a-z][a-z0-9_]{0,39}$")  # as settings declares environment names
VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REF = re.compile(rf"^(?:[A-Za-z0-9][A-Za-z0-9.-]*(?::[0-9]{{1,5}})?/)?{_COMPONENT}(?:/{_COMPONENT})*"
                       r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?@sha256:[0-9a-f]{64}$")
_KEY_VERSION = re.compile(r"[^A-Za-z0-9._-]")
_MAX_MS = 9_999_999_999_999

Warn = Callable[[str], None]


def check_image_ref(ref: object, what: str = "image_ref") -> str:
    """A digest reference (``repository@sha256:<64 hex>``): releases deploy and record by digest,
    because a tag can be moved after the analysis passed."""
    if not isinstance(ref, str) or not IMAGE_REF.match(ref):
        raise ConfigError(f"{what} {ref!r} is not a digest reference (repository@sha256:<64 hex digits>); "
                          "releases deploy by digest, never by tag")
    return ref


def check_version(version: object, what: str = "version") -> str:
    if not isinstance(version, str) or not VERSION.match(version):
        raise ConfigError(f"{what} {version!r} must be 1-128 letters, digits and . _ + - starting with a letter "
                          "or digit")
    return version


def check_environment(name: object) -> str:
    if not isinstance(name, str) or not ENVIRONMENT.match(name):
        raise ConfigError(f"environment name {name!r} must be lowercase letters, digits and _ starting with a letter")
    return name


def iso(moment: datetime) -> str:
    """UTC, second precision, with Z: how times appear in reasons."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stored_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(value: object, what: str) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"{what} {value!r} is not an ISO 8601 time") from None
    else:
        raise ConfigError(f"{what} must be a time, not {type(value).__name__}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ConfigError(f"{what} {value!r} has no time zone; give it in UTC")
    return moment.astimezone(UTC)


def _plain(value: object, depth: int = 0) -> object:
    """A JSON value that signs (no NaN or infinity: canonical JSON refuses them) and stays small."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # "inf": a latency beyond the last bucket
    if isinstance(value, str):
        return value if len(value) <= MAX_TEXT else value[:MAX_TEXT - 1] + "…"
    if depth < 3 and isinstance(value, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in list(value.items())[:40]}
    if depth < 3 and isinstance(value, list | tuple):
        return [_plain(v, depth + 1) for v in value[:40]]
    return _plain(str(value), depth)


@dataclass(frozen=True)
class ReleaseRecord:
    """One release, rollback or re-verification of one environment.

    ``version``/``image_ref`` is what the record deployed or analysed; ``previous_version`` /
    ``previous_image_ref`` is what a rollback of it returns to (for a release or rollback: what ran
    before it; for a re-verification: the rollback target it would use). ``rolled_back`` means the
    environment runs the previous version after this record. ``verdict`` is the analysis verdict
    (None: no analysis ran). ``key`` is set on records read from the ledger."""

    environment: str
    version: str
    image_ref: str
    kind: str
    strategy: str
    verdict: str | None
    reason: str
    started_at: datetime
    finished_at: datetime
    operator: str
    previous_version: str | None = None
    previous_image_ref: str | None = None
    measurements: tuple[dict[str, Any], ...] = ()
    measurements_omitted: int = 0
    rolled_back: bool = False
    duration_seconds: float | None = None
    helm_revision: int | None = None
    backup_key: str | None = None
    allow_unverified: bool = False
    override_window: bool = False
    key: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        check_environment(self.environment)
        where = f"release record of {self.environment} {self.version!r}"
        check_version(self.version, f"{where}: version")
        check_image_ref(self.image_ref, f"{where}: image_ref")
        if self.kind not in KINDS:
            raise ConfigError(f"{where}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.verdict is not None and self.verdict not in VERDICTS:
            raise ConfigError(f"{where}: verdict {self.verdict!r} is not one of {', '.join(VERDICTS)} (or none)")
        for name in ("strategy", "operator"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{where}: {name} must be a non-empty string")
        if not isinstance(self.reason, str):
            raise ConfigError(f"{where}: reason must be a string")
        started = _parse_time(self.started_at, f"{where}: started_at")
        finished = _parse_time(self.finished_at, f"{where}: finished_at")
        if finished < started:
            raise ConfigError(f"{where}: finished_at {iso(finished)} is before started_at {iso(started)}")
        if self.previous_version is not None:
            check_version(self.previous_version, f"{where}: previous_version")
        if self.previous_image_ref is not None:
            check_image_ref(self.previous_image_ref, f"{where}: previous_image_ref")
        if self.rolled_back and self.previous_version is None:
            raise ConfigError(f"{where}: rolled_back needs previous_version (what it was rolled back to)")
        if self.helm_revision is not None and (isinstance(self.helm_revision, bool)
                                               or not isinstance(self.helm_revision, int) or self.helm_revision < 0):
            raise ConfigError(f"{where}: helm_revision must be a whole number >= 0, not {self.helm_revision!r}")
        if self.backup_key is not None and not isinstance(self.backup_key, str):
            raise ConfigError(f"{where}: backup_key must be a string")
        for name in ("rolled_back", "allow_unverified", "override_window"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{where}: {name} must be true or false")
        duration = self.duration_seconds
        if duration is None:
            duration = (finished - started).total_seconds()
        if isinstance(duration, bool) or not isinstance(duration, int | float) or not math.isfinite(duration) \
                or duration < 0:
            raise ConfigError(f"{where}: duration_seconds must be a number >= 0, not {duration!r}")
        items = list(self.measurements)
        if not all(isinstance(m, Mapping) for m in items):
            raise ConfigError(f"{where}: measurements must be a list of mappings")
        kept = items[-MAX_MEASUREMENTS:]
        omitted = self.measurements_omitted
        if isinstance(omitted, bool) or not isinstance(omitted, int) or omitted < 0:
            raise ConfigError(f"{where}: measurements_omitted must be a whole number >= 0")
        for name, value in (("started_at", started), ("finished_at", finished), ("duration_seconds", float(duration)),
                            ("measurements", tuple(_plain(m) for m in kept)),
                            ("measurements_omitted", omitted + len(items) - len(kept)),
                            ("reason", _plain(self.reason))):
            object.__setattr__(self, name, value)

    @property
    def deployed_version(self) -> str | None:
        """What the environment runs after this record."""
        return self.previous_version if self.rolled_back else self.version

    @property
    def deployed_image_ref(self) -> str | None:
        return self.previous_image_ref if self.rolled_back else self.image_ref

    def to_doc(self) -> dict[str, Any]:
        """The JSON document stored (without key and signature, which ``ReleaseLedger.record`` adds)."""
        doc = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "key"}
        doc.update(format=FORMAT, started_at=_stored_time(self.started_at), finished_at=_stored_time(self.finished_at),
                   measurements=[dict(m) for m in self.measurements])
        return doc

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any], key: str | None = None) -> ReleaseRecord:
        if doc.get("format") != FORMAT:
            raise ConfigError(f"format {doc.get('format')!r} is not {FORMAT}")
        names = {f.name for f in fields(cls)} - {"key"}
        missing = sorted(n for n in ("environment", "version", "image_ref", "kind", "strategy", "verdict", "reason",
                                     "started_at", "finished_at", "operator") if n not in doc)
        if missing:
            raise ConfigError(f"field {missing[0]!r} is missing")
        measurements = doc.get("measurements", [])
        if not isinstance(measurements, list):
            raise ConfigError("measurements must be a list")
        values = {k: v for k, v in doc.items() if k in names}
        return cls(**{**values, "measurements": tuple(measurements)}, key=key)


@dataclass(frozen=True)
class Verification:
    """A version verified in an environment: by which record, when last confirmed (``verified_at``)
    and since when it has passed without interruption (``since``: what soak time counts from)."""

    environment: str
    version: str
    image_ref: str
    verified_at: datetime
    since: datetime
    record: ReleaseRecord


@dataclass(frozen=True)
class Judgement:
    """The newest record that judges a version in an environment, and what it concluded, as the
    clause a refusal quotes ("its last analysis there failed at ... (...)")."""

    environment: str
    version: str
    verified: bool
    outcome: str  # passed, failed, inconclusive, rolled back
    record: ReleaseRecord
    summary: str


@dataclass(frozen=True)
class Deployed:
    """What an environment runs according to its newest record."""

    environment: str
    version: str
    image_ref: str | None
    record: ReleaseRecord


def _outcome(record: ReleaseRecord, version: str) -> str | None:
    if record.version == version:
        if record.verdict in ("failed", "inconclusive"):
            return record.verdict
        return "rolled back" if record.rolled_back else record.verdict
    if record.kind == "rollback" and record.previous_version == version:
        return "rolled back"
    return None


def _summary(outcome: str, record: ReleaseRecord, version: str) -> str:
    at = iso(record.finished_at)
    why = f" ({record.reason})" if record.reason.strip() else ""
    if outcome == "passed":
        return f"it passed analysis there at {at}{why}"
    if outcome == "failed":
        rolled = "; it was rolled back" if record.rolled_back else ""
        return f"its last analysis there failed at {at}{why}{rolled}"
    if outcome == "inconclusive":
        rolled = "; it was rolled back" if record.rolled_back else ""
        return f"its last analysis there was inconclusive at {at}{why}{rolled}"
    if record.version != version:
        detail = f": {record.reason}" if why else ""
        return f"it was rolled back there at {at} (to {record.version} by {record.operator}{detail})"
    return f"it was rolled back there at {at}{why}"


def judge(history: Iterable[ReleaseRecord], version: str) -> Judgement | None:
    """The newest judgement of ``version`` in ``history`` (newest first)."""
    for record in history:
        outcome = _outcome(record, version)
        if outcome is not None:
            return Judgement(record.environment, version, outcome == "passed", outcome, record,
                             _summary(outcome, record, version))
    return None


def verification(history: Iterable[ReleaseRecord], version: str) -> Verification | None:
    """The verification ``history`` (newest first) gives ``version``, or None."""
    newest: ReleaseRecord | None = None
    since = None
    for record in history:
        outcome = _outcome(record, version)
        if outcome is None:
            continue
        if outcome != "passed":
            break
        newest = newest or record
        since = record.finished_at
    if newest is None or since is None:
        return None
    return Verification(newest.environment, version, newest.image_ref, newest.finished_at, since, newest)


class _Lazy:
    """Records read only as far as someone iterates, and read once however often they iterate."""

    def __init__(self, source: Iterator[ReleaseRecord]) -> None:
        self._source = source
        self._read: list[ReleaseRecord] = []

    def __iter__(self) -> Iterator[ReleaseRecord]:
        index = 0
        while True:
            if index == len(self._read):
                following = next(self._source, None)
                if following is None:
                    return
                self._read.append(following)
            yield self._read[index]
            index += 1


class ReleaseLedger:
    """Signed release records in the backup object store (see the module docstring for the rules).

    Records that cannot be trusted are skipped; each skip is one line in ``warnings`` and is passed to
    ``warn`` (a Dagster op passes ``context.log.warning``). Records are immutable, so each one is read
    from the store once per ledger; listings are always fresh."""

    def __init__(self, store: ObjectStore, keyring: Keyring | None, *, warn: Warn | None = None) -> None:
        if keyring is None:
            raise ConfigError("the release ledger needs ACCI_BACKUP_SIGNING_KEY: its records are signed so that "
                              "nobody with bucket access can mark a version verified")
        self.store = store
        self.keyring = keyring
        self.warn = warn
        self.warnings: list[str] = []
        self._cache: dict[str, ReleaseRecord | None] = {}

    def _warn(self, line: str) -> None:
        if line not in self.warnings:
            self.warnings.append(line)
            if self.warn is not None:
                self.warn(line)

    @staticmethod
    def prefix(environment: str) -> str:
        return f"{PREFIX}/{check_environment(environment)}/"

    @classmethod
    def key_for(cls, record: ReleaseRecord) -> str:
        """Sortable newest first (inverted milliseconds), readable (the UTC time, version and kind)."""
        millis = round(record.finished_at.timestamp() * 1000)
        stamp = record.finished_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        version = _KEY_VERSION.sub("_", record.version)
        return (f"{cls.prefix(record.environment)}{_MAX_MS - millis:013d}-{stamp}-{version}-{record.kind}-"
                f"{secrets.token_hex(3)}.json")

    def record(self, record: ReleaseRecord) -> str:
        """Store one record, signed (over its key too); returns the key."""
        key = self.key_for(record)
        doc = self.keyring.sign({**record.to_doc(), "key": key})
        data = json.dumps(doc, sort_keys=True, indent=1, allow_nan=False).encode()
        if len(data) > MAX_RECORD_BYTES:
            raise AcciOpsError(f"release record of {record.environment} {record.version} is {len(data)} bytes, "
                               f"more than {MAX_RECORD_BYTES}; shorten its reason or measurements")
        self.store.put_bytes(key, data, "application/json")
        return key

    def _read(self, environment: str, key: str) -> ReleaseRecord | None:
        if key in self._cache:
            return self._cache[key]
        uri = self.store.uri_for(key)
        try:
            raw = self.store.get_bytes(key, max_bytes=MAX_RECORD_BYTES)
        except AcciOpsError as exc:
            self._warn(f"ignoring release record {uri}: {exc}")
            return None  # not cached: a store error may pass
        record, problem = self._trusted(environment, key, raw)
        if problem:
            self._warn(f"ignoring release record {uri}: {problem}")
        self._cache[key] = record
        return record

    def _trusted(self, environment: str, key: str, raw: bytes) -> tuple[ReleaseRecord | None, str | None]:
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return None, "not JSON"
        if not isinstance(doc, dict):
            return None, "not a JSON object"
        status = self.keyring.verify(doc)
        if status != SIGNED:
            return None, f"{status}; acci_ops did not write it with this signing key"
        if doc.get("key") != key:
            return None, f"it was signed for key {doc.get('key')!r}, so it was copied here"
        if doc.get("environment") != environment:
            return None, f"it is about environment {doc.get('environment')!r}"
        try:
            return ReleaseRecord.from_doc(doc, key), None
        except (ConfigError, TypeError) as exc:
            return None, str(exc)

    def _records(self, environment: str, limit: int) -> Iterator[ReleaseRecord]:
        """Trusted records newest first: at most ``limit`` of them, reading at most ``limit`` +
        ``MAX_IGNORED`` keys (one listing page for the usual limits)."""
        found = read = 0
        for info in self.store.list(self.prefix(environment)):
            if found >= limit or read >= limit + MAX_IGNORED:
                return
            if not info.key.endswith(".json"):
                continue
            read += 1
            record = self._read(environment, info.key)
            if record is not None:
                found += 1
                yield record

    def history(self, environment: str, limit: int = DEFAULT_LIMIT) -> list[ReleaseRecord]:
        """The newest ``limit`` trusted records, newest first; untrusted ones are skipped with a warning."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"history limit must be a whole number >= 1, not {limit!r}")
        return list(self._records(environment, limit))

    def _scan(self, environment: str) -> _Lazy:
        return _Lazy(self._records(environment, SCAN_LIMIT))

    def judgement(self, environment: str, version: str) -> Judgement | None:
        """The newest record that judges ``version`` there (None: never judged there)."""
        return judge(self._scan(environment), version)

    def verified(self, environment: str, version: str) -> Verification | None:
        """The verification of ``version`` in ``environment``, or None when it is not verified there now."""
        return verification(self._scan(environment), version)

    def verified_since(self, environment: str, version: str) -> datetime | None:
        """Since when ``version`` has been verified there without interruption (soak time counts from it)."""
        found = self.verified(environment, version)
        return found.since if found else None

    def last_verified(self, environment: str, exclude_version: str | None = None) -> ReleaseRecord | None:
        """The passing record of the newest version that is verified there now, other than
        ``exclude_version``: the default rollback target, "the previous version that passed analysis
        there". Rolled-back and later-failed versions are skipped."""
        history = self._scan(environment)
        seen = set()
        for record in history:
            if record.version in seen or record.version == exclude_version:
                continue
            seen.add(record.version)
            found = verification(history, record.version)
            if found:
                return found.record
        return None

    def current(self, environment: str) -> Deployed | None:
        """What the environment runs according to its newest trusted record (a rolled-back release means
        its previous version); None when the ledger has no record of it."""
        newest = next(self._records(environment, 1), None)
        if newest is None or newest.deployed_version is None:
            return None
        return Deployed(environment, newest.deployed_version, newest.deployed_image_ref, newest)
