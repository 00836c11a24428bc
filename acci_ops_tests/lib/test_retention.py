"""The GFS planner on calendars with gaps, and what it refuses to touch."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from acci_ops.lib.backup.layout import complete_backups, dump_key, parse_dump_key
from acci_ops.lib.backup.retention import RetentionPolicy, plan_retention
from acci_ops.lib.core.errors import ConfigError


def backups_on(days: list[date], env: str = "production", per_day: int = 1):
    keys = []
    for day in days:
        for i in range(per_day):
            taken = datetime(day.year, day.month, day.day, 2, i, tzinfo=UTC) + timedelta(days=1)
            keys.append(parse_dump_key(dump_key(env, day, "acci", taken)))
    return keys


def days_kept(plan, backups) -> list[str]:
    by_key = {b.key: b for b in backups}
    return sorted({by_key[k].day.isoformat() for k in plan.keep})


def test_daily_tier_counts_days_with_backups_not_calendar_days():
    # Backups on 10 days with a gap of 5 days in the middle.
    days = [date(2026, 11, d) for d in (1, 2, 3, 4, 5, 11, 12, 13, 14, 15)]
    backups = backups_on(days)
    plan = plan_retention(backups, RetentionPolicy(daily=7, weekly=0, monthly=0))
    # The 7 newest days *with backups* span the gap: 4, 5, 11..15 (not just 9..15 of the calendar).
    assert days_kept(plan, backups) == [f"2026-11-{d:02d}" for d in (4, 5, 11, 12, 13, 14, 15)]
    assert len(plan.delete) == 3


def test_weekly_and_monthly_keep_newest_of_each_period():
    start = date(2026, 1, 1)
    days = [start + timedelta(days=i) for i in range(0, 120, 3)]  # every third day for four months
    backups = backups_on(days)
    plan = plan_retention(backups, RetentionPolicy(daily=2, weekly=3, monthly=4))
    kept = days_kept(plan, backups)
    # daily: the two newest; weekly: newest of the 3 newest ISO weeks; monthly: newest of 4 months.
    newest = max(days)
    assert newest.isoformat() in kept
    months = {d[:7] for d in kept}
    assert months == {"2026-01", "2026-02", "2026-03", "2026-04"}
    assert all(reasons for reasons in plan.keep.values())
    assert len(kept) <= 2 + 3 + 4
    assert "2026-01-31" in kept  # the newest backup of January (every third day from Jan 1)


def test_several_backups_a_day_keep_the_newest_of_the_day():
    backups = backups_on([date(2026, 11, 20), date(2026, 11, 21)], per_day=3)
    plan = plan_retention(backups, RetentionPolicy(daily=2, weekly=0, monthly=0))
    assert sorted(plan.keep) == sorted([backups[2].key, backups[5].key])
    assert len(plan.delete) == 4


def test_newest_and_protected_are_never_deleted_even_with_zero_policy():
    backups = backups_on([date(2026, 11, d) for d in range(1, 6)])
    plan = plan_retention(backups, RetentionPolicy(0, 0, 0), protect={backups[1].key})
    assert plan.keep == {backups[-1].key: ["newest"], backups[1].key: ["protected"]}
    assert sorted(plan.delete) == sorted(b.key for b in backups if b.key not in plan.keep)


def test_empty_listing_plans_nothing():
    plan = plan_retention([], RetentionPolicy())
    assert plan.keep == {} and plan.delete == []


def test_policy_rejects_nonsense():
    with pytest.raises(ConfigError, match="retention weekly must be a whole number >= 0, got -1"):
        RetentionPolicy(weekly=-1)


def test_only_complete_backups_of_the_environment_are_considered():
    ours = dump_key("production", date(2026, 11, 1), "acci", datetime(2026, 11, 2, 2, tzinfo=UTC))
    no_manifest = dump_key("production", date(2026, 11, 2), "acci", datetime(2026, 11, 3, 2, tzinfo=UTC))
    orphan_manifest = dump_key("production", date(2026, 11, 3), "acci",
                               datetime(2026, 11, 4, 2, tzinfo=UTC)) + ".manifest.json"
    staging = dump_key("staging", date(2026, 11, 1), "acci", datetime(2026, 11, 2, 2, tzinfo=UTC))
    keys = [ours, ours + ".manifest.json", no_manifest, orphan_manifest, staging, staging + ".manifest.json",
            "production/notes.txt", "production/2026-11-01/hand-made.sql.gz", "db-20261101.sql.gz"]
    complete, orphans = complete_backups(keys, "production")
    assert [b.key for b in complete] == [ours]
    assert orphans == [orphan_manifest]


def test_apply_retention_dry_run_lists_then_the_real_run_deletes(tmp_path):
    """The engine for one store: a dry run only logs; the real run deletes the planned backups
    (dump, sidecars, manifest) and the signed manifest left without its dump, and nothing else."""
    import json

    from acci_ops.lib.backup.retention import apply_retention
    from acci_ops.lib.backup.signing import Keyring
    from acci_ops.lib.storage.objectstore import open_store
    from acci_ops_tests.fixtures.backups import TEST_SIGNING_KEY, put_backup, put_record

    store = open_store(f"file://{tmp_path}/backups")
    now = datetime(2026, 11, 27, 12, tzinfo=UTC)
    keys = [put_backup(store, "production", date(2026, 11, d)) for d in (20, 21, 22, 23)]
    manifest = lambda key: json.loads(store.get_bytes(key + ".manifest.json"))  # noqa: E731
    put_record(store, keys[0], read_manifest=manifest)  # the only validated one: protected
    orphan = put_backup(store, "production", date(2026, 11, 19))
    store.delete(orphan)  # an interrupted deletion: its signed manifest is left
    unsigned = put_backup(store, "production", date(2026, 11, 18), signed=False)
    before = sorted(o.key for o in store.list("production/"))
    keyring = Keyring.from_secret(TEST_SIGNING_KEY)

    lines: list[str] = []
    dry = apply_retention(store, "production", RetentionPolicy(1, 0, 0), keyring, dry_run=True, log=lines.append,
                          now=now)
    assert sorted(dry.plan.delete) == sorted(keys[1:3]) and dry.orphans == [orphan + ".manifest.json"]
    assert dry.dry_run and dry.untrusted == 1 and dry.plan.keep[unsigned] == ["unsigned — not acci_ops's, kept"]
    assert lines == [f"would delete {store.uri_for(k)}" for k in dry.plan.delete] + [
        f"would delete manifest without dump {store.uri_for(orphan + '.manifest.json')}"]
    assert sorted(o.key for o in store.list("production/")) == before

    lines.clear()
    done = apply_retention(store, "production", RetentionPolicy(1, 0, 0), keyring, log=lines.append, now=now)
    assert done.plan.delete == dry.plan.delete and not done.dry_run
    assert lines[0].startswith("deleting ") and len(lines) == 3
    remaining = sorted(o.key for o in store.list("production/"))
    assert remaining == sorted([keys[0], keys[0] + ".manifest.json", keys[0] + ".validation.json",
                                keys[3], keys[3] + ".manifest.json", unsigned, unsigned + ".manifest.json"])
