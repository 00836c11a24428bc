"""Grandfather-father-son retention, planned as a pure function so it can be tested on any calendar.

For each tier (daily, weekly, monthly) the newest backup of each of the most recent N periods
*that have backups* is kept (restic's ``--keep-daily`` semantics): a gap in the calendar does not
eat into what is kept. The newest backup, and any protected one (for example the newest
validated), are always kept, whatever the policy says.

Only backups acci_ops trusts take part in the ranking (lib/backups.py decides, from signed
manifests); everything else is passed in as ``untrusted`` and always kept, with its reason, so
keys a bucket writer adds (future-dated, unsigned) can neither push real backups out of the
policy's window nor be deleted by it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

from acci_ops.lib.backup.layout import BackupKey, manifest_key_for, parse_dump_key
from acci_ops.lib.core.errors import ConfigError


@dataclass(frozen=True)
class RetentionPolicy:
    daily: int = 7
    weekly: int = 4
    monthly: int = 12

    def __post_init__(self) -> None:
        for tier in ("daily", "weekly", "monthly"):
            value = getattr(self, tier)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"retention {tier} must be a whole number >= 0, got {value!r}")


@dataclass
class RetentionPlan:
    keep: dict[str, list[str]] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"keep {len(self.keep)}, delete {len(self.delete)}"


_TIERS: list[tuple[str, Callable[[date], object]]] = [
    ("daily", lambda d: d),
    ("weekly", lambda d: d.isocalendar()[:2]),
    ("monthly", lambda d: (d.year, d.month)),
]


def plan_retention(backups: Sequence[BackupKey], policy: RetentionPolicy, protect: Collection[str] = (), *,
                   snapshot_at: Mapping[str, datetime] | None = None,
                   untrusted: Mapping[str, str] | None = None) -> RetentionPlan:
    """Decide which backups to keep (with the reasons) and which to delete.

    ``backups`` are ranked newest first by ``snapshot_at`` (the manifest's snapshot time) where
    given, else by the key's time; ``untrusted`` maps keys that must not be ranked to the reason
    they are kept."""
    snapshot_at = snapshot_at or {}
    ordered = sorted(backups, key=lambda b: (snapshot_at.get(b.key, b.taken_at), b.key), reverse=True)
    plan = RetentionPlan()
    for key, reason in sorted((untrusted or {}).items()):
        plan.keep.setdefault(key, []).append(reason)
    if not ordered:
        return plan

    def keep(backup: BackupKey, reason: str) -> None:
        plan.keep.setdefault(backup.key, []).append(reason)

    keep(ordered[0], "newest")
    for backup in ordered:
        if backup.key in protect:
            keep(backup, "protected")
    for tier, period_of in _TIERS:
        limit = getattr(policy, tier)
        seen: set[object] = set()
        for backup in ordered:
            if len(seen) >= limit:
                break
            period = period_of(backup.day)
            if period not in seen:
                seen.add(period)
                keep(backup, tier)
    plan.delete = [b.key for b in ordered if b.key not in plan.keep]
    return plan


def untrusted_count(plan: RetentionPlan, trusted_reasons: Collection[str] = ("newest", "protected", "daily",
                                                                              "weekly", "monthly")) -> int:
    """How many kept backups were kept because they are not trusted (for the UI)."""
    return sum(1 for reasons in plan.keep.values() if not set(reasons) & set(trusted_reasons))


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
        if k.endswith(".manifest.json") and parse_dump_key(k.removesuffix(".manifest.json"))
        and k.removesuffix(".manifest.json") not in key_set
        and k.startswith(f"{environment}/")
    )
    return sorted(complete), orphans
