"""The release ledger on a real directory store: records round-trip signed, history is newest first and
bounded, untrusted records (tampered, unsigned, another key's, copied) are ignored with a warning and
never make a version verified, and the verification rules hold: only a passing analysis verifies, a
later failure, inconclusive analysis or rollback withdraws it, soak time counts from the unbroken run
of passes, the rollback target skips rolled-back versions, and the current version follows rollbacks."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from acci_ops.lib.backup.signing import Keyring
from acci_ops.lib.core.errors import AcciOpsError, ConfigError
from acci_ops.lib.releases.ledger import (
    MAX_IGNORED,
    MAX_MEASUREMENTS,
    ReleaseLedger,
    ReleaseRecord,
)
from acci_ops.lib.storage.objectstore import FileStore
from acci_ops_tests.fixtures.backups import OTHER_SIGNING_KEY, TEST_SIGNING_KEY

T0 = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


def ref(version: str) -> str:
    return f"registry.example.com/acci/app@sha256:{hashlib.sha256(version.encode()).hexdigest()}"


def rec(version: str, verdict: str | None, minutes: int, *, environment: str = "staging", kind: str = "release",
        previous: str | None = None, **extra) -> ReleaseRecord:
    """A record finishing ``minutes`` after T0, whose analysis took five minutes."""
    finished = T0 + timedelta(minutes=minutes)
    return ReleaseRecord(environment=environment, version=version, image_ref=ref(version), kind=kind,
                         strategy="rolling", verdict=verdict, reason=extra.pop("reason", f"{verdict} analysis"),
                         started_at=finished - timedelta(minutes=5), finished_at=finished, operator="ana",
                         previous_version=previous, previous_image_ref=ref(previous) if previous else None, **extra)


class CountingStore(FileStore):
    """A real FileStore that counts the objects read, to show how much a query costs."""

    reads = 0

    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        self.reads += 1
        return super().get_bytes(key, max_bytes)


@pytest.fixture
def store(tmp_path: Path) -> CountingStore:
    return CountingStore(f"file://{tmp_path}/backups")


@pytest.fixture
def keyring() -> Keyring:
    return Keyring.from_secret(TEST_SIGNING_KEY)


@pytest.fixture
def ledger(store, keyring) -> ReleaseLedger:
    return ReleaseLedger(store, keyring)


def test_a_record_round_trips_signed_under_a_sortable_readable_key(ledger, store):
    """Every field comes back as written; the object is signed JSON that carries its own key."""
    record = rec("1.4.0", "failed", 0, previous="1.3.0", rolled_back=True, helm_revision=7,
                 backup_key="staging/2026-12-02/acci-20261202T095000Z.pgdump.zst", allow_unverified=True,
                 override_window=True, measurements=({"metric": "error_ratio", "value": 0.13},),
                 reason="error_ratio 0.13 > 0.01")
    key = ledger.record(record)
    assert key.startswith("releases/staging/") and "-20261202T100000Z-1.4.0-release-" in key and key.endswith(".json")
    (back,) = ledger.history("staging")
    assert back == record and back.key == key
    assert back.duration_seconds == 300.0 and back.started_at == T0 - timedelta(minutes=5)
    doc = json.loads(store.get_bytes(key))
    assert doc["key"] == key and doc["signature"].startswith("hmac-sha256:")
    assert doc["finished_at"] == "2026-12-02T10:00:00Z" and doc["format"] == "acci-ops/release-record/1"


def test_history_is_newest_first_whatever_the_order_of_writing_and_bounded(ledger, store):
    """Keys sort newest first, so ``limit`` records cost ``limit`` reads, not the whole history."""
    for minutes in (30, 10, 50, 20, 40):
        ledger.record(rec(f"1.{minutes}.0", "passed", minutes))
    assert [r.version for r in ledger.history("staging")] == ["1.50.0", "1.40.0", "1.30.0", "1.20.0", "1.10.0"]
    fresh = ReleaseLedger(store, ledger.keyring)
    store.reads = 0
    assert [r.version for r in fresh.history("staging", limit=2)] == ["1.50.0", "1.40.0"]
    assert store.reads == 2
    assert fresh.history("production") == []


def test_records_are_read_once_per_ledger(ledger, store):
    """Repeated queries list afresh but read each immutable record only once."""
    for minutes in range(3):
        ledger.record(rec(f"1.{minutes}.0", "passed", minutes))
    store.reads = 0
    ledger.verified("staging", "1.0.0")
    ledger.last_verified("staging")
    ledger.current("staging")
    assert store.reads == 3
    ledger.record(rec("1.9.0", "passed", 9))
    assert ledger.current("staging").version == "1.9.0"


def test_a_tampered_record_is_ignored_with_a_warning_and_never_verifies(store, keyring):
    """Changing 'failed' to 'passed' in the stored bytes breaks the signature: the record is skipped,
    the warning names it, and the version is not verified."""
    lines: list[str] = []
    ledger = ReleaseLedger(store, keyring, warn=lines.append)
    ledger.record(rec("1.3.0", "passed", 0))
    key = ledger.record(rec("1.4.0", "failed", 10))
    path = store.root / key
    path.write_text(path.read_text().replace('"verdict": "failed"', '"verdict": "passed"'))
    assert [r.version for r in ledger.history("staging")] == ["1.3.0"]
    assert ledger.verified("staging", "1.4.0") is None
    assert ledger.last_verified("staging").version == "1.3.0"
    expected = (f"ignoring release record {store.uri_for(key)}: badly signed; acci_ops did not write it with this "
                "signing key")
    assert lines == [expected] and ledger.warnings == [expected]


def test_unsigned_foreign_copied_and_malformed_records_are_ignored(store, keyring, ledger):
    """A bucket writer's unsigned record, one signed with another key, a genuine record copied to a
    newer key, garbage and an oversized object: none is trusted, each warns with its cause."""
    original = ledger.record(rec("1.0.0", "failed", 0))
    forged = rec("1.0.0", "passed", 60).to_doc()
    prefix = "releases/staging/"
    store.put_bytes(prefix + "0000000000001-unsigned.json", json.dumps({**forged, "key": "x"}).encode())
    other = Keyring.from_secret(OTHER_SIGNING_KEY)
    foreign_key = prefix + "0000000000002-foreign.json"
    store.put_bytes(foreign_key, json.dumps(other.sign({**forged, "key": foreign_key})).encode())
    store.put_bytes(prefix + "0000000000003-copied.json", store.get_bytes(original))
    elsewhere_key = prefix + "0000000000004-elsewhere.json"
    elsewhere = rec("1.0.0", "passed", 60, environment="production").to_doc()
    store.put_bytes(elsewhere_key, json.dumps(keyring.sign({**elsewhere, "key": elsewhere_key})).encode())
    store.put_bytes(prefix + "0000000000005-garbage.json", b"{not json")
    store.put_bytes(prefix + "0000000000006-big.json", b" " * (300 * 1024))
    store.put_bytes(prefix + "0000000000007-list.json", b"[]")
    store.put_bytes(prefix + "0000000000008-notes.txt", b"ignored: not a record name")
    assert [r.key for r in ledger.history("staging")] == [original]
    assert ledger.verified("staging", "1.0.0") is None
    uri = store.uri_for
    assert ledger.warnings == [
        f"ignoring release record {uri(prefix + '0000000000001-unsigned.json')}: unsigned; acci_ops did not write "
        "it with this signing key",
        f"ignoring release record {uri(foreign_key)}: badly signed; acci_ops did not write it with this signing key",
        f"ignoring release record {uri(prefix + '0000000000003-copied.json')}: it was signed for key "
        f"{original!r}, so it was copied here",
        f"ignoring release record {uri(elsewhere_key)}: it is about environment 'production'",
        f"ignoring release record {uri(prefix + '0000000000005-garbage.json')}: not JSON",
        f"ignoring release record {uri(prefix + '0000000000006-big.json')}: {uri(prefix + '0000000000006-big.json')} "
        "is larger than 262144 bytes; not reading it",
        f"ignoring release record {uri(prefix + '0000000000007-list.json')}: not a JSON object",
    ]


def test_a_flood_of_untrusted_records_bounds_the_reading(store, ledger):
    """Garbage at the newest positions costs at most ``limit + MAX_IGNORED`` reads, then the read
    stops: the answer errs towards "unknown", never towards trusting anything."""
    ledger.record(rec("1.0.0", "passed", 0))
    for i in range(MAX_IGNORED + 5):
        store.put_bytes(f"releases/staging/{i:013d}-junk.json", b"junk")
    store.reads = 0
    assert ledger.history("staging", limit=1) == []
    assert store.reads == 1 + MAX_IGNORED


def test_only_a_passing_analysis_verifies_and_a_later_failure_or_inconclusive_withdraws_it(ledger):
    """Passed verifies; a later failed re-verification withdraws; passing again verifies anew (soak
    restarts); a later inconclusive one withdraws again. Other environments are unaffected."""
    assert ledger.verified("staging", "1.4.0") is None
    ledger.record(rec("1.4.0", "passed", 0))
    ledger.record(rec("1.4.0", "passed", 30, kind="reverification"))
    verified = ledger.verified("staging", "1.4.0")
    assert verified.verified_at == T0 + timedelta(minutes=30) and verified.since == T0
    assert verified.image_ref == ref("1.4.0") and ledger.verified_since("staging", "1.4.0") == T0
    assert ledger.verified("production", "1.4.0") is None
    ledger.record(rec("1.4.0", "failed", 60, kind="reverification", reason="error_ratio 0.13 > 0.01"))
    assert ledger.verified("staging", "1.4.0") is None and ledger.verified_since("staging", "1.4.0") is None
    judged = ledger.judgement("staging", "1.4.0")
    assert not judged.verified and judged.outcome == "failed"
    assert judged.summary == "its last analysis there failed at 2026-12-02T11:00:00Z (error_ratio 0.13 > 0.01)"
    ledger.record(rec("1.4.0", "passed", 90, kind="reverification"))
    assert ledger.verified_since("staging", "1.4.0") == T0 + timedelta(minutes=90)
    ledger.record(rec("1.4.0", "inconclusive", 120, kind="reverification", reason="error_ratio: no traffic"))
    assert ledger.verified("staging", "1.4.0") is None
    assert ledger.judgement("staging", "1.4.0").summary == ("its last analysis there was inconclusive at "
                                                            "2026-12-02T12:00:00Z (error_ratio: no traffic)")


def test_records_of_other_versions_and_records_without_a_verdict_judge_nothing(ledger):
    """Releasing another version, or a record that ran no analysis, leaves a verification as it was."""
    ledger.record(rec("1.3.0", "passed", 0))
    ledger.record(rec("1.4.0", "failed", 10, previous="1.3.0", rolled_back=True))
    ledger.record(rec("1.3.0", None, 20, kind="reverification", reason="analysis skipped"))
    assert ledger.verified("staging", "1.3.0").verified_at == T0
    assert ledger.judgement("staging", "1.5.0") is None


def test_rolling_a_version_back_withdraws_its_verification(ledger):
    """A release rolled back after passing analysis, and a manual rollback away from a verified
    version, both mean someone judged it bad there."""
    ledger.record(rec("1.3.0", "passed", 0))
    ledger.record(rec("1.4.0", "passed", 10, previous="1.3.0", rolled_back=True, reason="smoke test failed"))
    assert ledger.verified("staging", "1.4.0") is None
    assert ledger.judgement("staging", "1.4.0").summary == ("it was rolled back there at 2026-12-02T10:10:00Z "
                                                            "(smoke test failed)")
    ledger.record(rec("1.5.0", "passed", 20, previous="1.3.0"))
    ledger.record(rec("1.3.0", None, 30, kind="rollback", previous="1.5.0", reason="customers report errors"))
    assert ledger.verified("staging", "1.5.0") is None
    assert ledger.judgement("staging", "1.5.0").summary == ("it was rolled back there at 2026-12-02T10:30:00Z "
                                                            "(to 1.3.0 by ana: customers report errors)")
    assert ledger.verified("staging", "1.3.0").verified_at == T0


def test_last_verified_is_the_newest_version_still_verified_and_skips_rolled_back_ones(ledger):
    """The default rollback target: 1.4.0 failed and was rolled back, so it is 1.3.0; excluding that
    (it is the one running) gives 1.2.0; after a rollback away from 1.3.0 it is 1.2.0 as well."""
    assert ledger.last_verified("staging") is None
    ledger.record(rec("1.2.0", "passed", 0))
    ledger.record(rec("1.3.0", "passed", 10, previous="1.2.0"))
    ledger.record(rec("1.4.0", "failed", 20, previous="1.3.0", rolled_back=True))
    target = ledger.last_verified("staging")
    assert (target.version, target.image_ref, target.finished_at) == ("1.3.0", ref("1.3.0"), T0 + timedelta(minutes=10))
    assert ledger.last_verified("staging", exclude_version="1.3.0").version == "1.2.0"
    ledger.record(rec("1.2.0", None, 30, kind="rollback", previous="1.3.0"))
    assert ledger.last_verified("staging").version == "1.2.0"
    assert ledger.last_verified("staging", exclude_version="1.2.0") is None


def test_current_follows_releases_and_rollbacks(ledger):
    """The newest record's version runs, unless it was rolled back (then its previous version runs);
    a rollback record runs its target."""
    assert ledger.current("staging") is None
    ledger.record(rec("1.3.0", "passed", 0))
    assert (ledger.current("staging").version, ledger.current("staging").image_ref) == ("1.3.0", ref("1.3.0"))
    ledger.record(rec("1.4.0", "failed", 10, previous="1.3.0", rolled_back=True))
    current = ledger.current("staging")
    assert (current.version, current.image_ref, current.record.version) == ("1.3.0", ref("1.3.0"), "1.4.0")
    ledger.record(rec("1.5.0", "passed", 20, previous="1.3.0"))
    ledger.record(rec("1.3.0", "passed", 30, kind="rollback", previous="1.5.0"))
    assert ledger.current("staging").version == "1.3.0"


def test_measurements_are_bounded_and_made_signable(ledger):
    """Only the newest measurements are kept (the count of the rest is recorded); infinities become
    text (canonical JSON refuses them) and long strings are cut, so the record still signs."""
    many = [{"metric": "latency_p95", "value": float(i), "detail": "x" * 2000} for i in range(MAX_MEASUREMENTS + 7)]
    many[-1]["value"] = float("inf")
    ledger.record(rec("1.0.0", "failed", 0, measurements=many))
    (back,) = ledger.history("staging")
    assert len(back.measurements) == MAX_MEASUREMENTS and back.measurements_omitted == 7
    assert back.measurements[0]["value"] == 7.0 and back.measurements[-1]["value"] == "inf"
    assert len(back.measurements[0]["detail"]) == 500


def test_a_ledger_without_a_signing_key_is_refused(store):
    with pytest.raises(ConfigError) as failure:
        ReleaseLedger(store, None)
    assert str(failure.value) == ("the release ledger needs ACCI_BACKUP_SIGNING_KEY: its records are signed so that "
                                  "nobody with bucket access can mark a version verified")


def test_an_oversized_record_is_refused_before_writing(ledger, store):
    """A record too large to read back later is refused at write time, and nothing is stored."""
    huge = [{f"k{i}": "y" * 500 for i in range(40)} for _ in range(MAX_MEASUREMENTS)]
    with pytest.raises(AcciOpsError, match=r"^release record of staging 1.0.0 is \d+ bytes, more than 262144; "
                                           r"shorten its reason or measurements$"):
        ledger.record(rec("1.0.0", "failed", 0, measurements=huge))
    assert list(store.list("releases/")) == []


BAD = "release record of staging '1.0.0'"


@pytest.mark.parametrize(("change", "message"), [
    ({"image_ref": "registry.example.com/acci/app:1.0.0"},
     f"{BAD}: image_ref 'registry.example.com/acci/app:1.0.0' is not a digest reference "
     "(repository@sha256:<64 hex digits>); releases deploy by digest, never by tag"),
    ({"image_ref": "app@sha256:abc"}, f"{BAD}: image_ref 'app@sha256:abc' is not a digest reference "
     "(repository@sha256:<64 hex digits>); releases deploy by digest, never by tag"),
    ({"previous_version": "1.0.0", "previous_image_ref": "app:old"}, f"{BAD}: previous_image_ref 'app:old' is not a "
     "digest reference (repository@sha256:<64 hex digits>); releases deploy by digest, never by tag"),
    ({"version": "1.0 beta"}, "release record of staging '1.0 beta': version '1.0 beta' must be 1-128 letters, "
     "digits and . _ + - starting with a letter or digit"),
    ({"environment": "Prod"}, "environment name 'Prod' must be lowercase letters, digits and _ starting with a letter"),
    ({"kind": "deploy"}, f"{BAD}: kind 'deploy' is not one of release, rollback, reverification"),
    ({"verdict": "ok"}, f"{BAD}: verdict 'ok' is not one of passed, failed, inconclusive (or none)"),
    ({"operator": " "}, f"{BAD}: operator must be a non-empty string"),
    ({"strategy": ""}, f"{BAD}: strategy must be a non-empty string"),
    ({"started_at": datetime(2026, 12, 2, 9, 55)}, f"{BAD}: started_at datetime.datetime(2026, 12, 2, 9, 55) has no "
     "time zone; give it in UTC"),
    ({"finished_at": "yesterday"}, f"{BAD}: finished_at 'yesterday' is not an ISO 8601 time"),
    ({"finished_at": T0 - timedelta(hours=1)}, f"{BAD}: finished_at 2026-12-02T09:00:00Z is before started_at "
     "2026-12-02T09:55:00Z"),
    ({"rolled_back": True}, f"{BAD}: rolled_back needs previous_version (what it was rolled back to)"),
    ({"helm_revision": -1}, f"{BAD}: helm_revision must be a whole number >= 0, not -1"),
    ({"duration_seconds": float("nan")}, f"{BAD}: duration_seconds must be a number >= 0, not nan"),
    ({"allow_unverified": "yes"}, f"{BAD}: allow_unverified must be true or false"),
    ({"measurements": ("fast",)}, f"{BAD}: measurements must be a list of mappings"),
])
def test_malformed_records_are_refused_with_one_line(change, message):
    """Each bad field is named, with what it must be."""
    fields = {"environment": "staging", "version": "1.0.0", "image_ref": ref("1.0.0"), "kind": "release",
              "strategy": "rolling", "verdict": "passed", "reason": "", "started_at": T0 - timedelta(minutes=5),
              "finished_at": T0, "operator": "ana", **change}
    with pytest.raises(ConfigError) as failure:
        ReleaseRecord(**fields)
    assert str(failure.value) == message


def test_digest_references_with_registry_ports_and_tags_are_accepted():
    """Registry host with port, nested repositories and a tag alongside the digest are all digests."""
    for image in ("localhost:5000/acci/app", "app", "ghcr.io/org/team/app:1.0.0", "10.0.0.1:443/a_b/c-d"):
        digest_ref = f"{image}@sha256:{'0' * 64}"
        record = ReleaseRecord(environment="staging", version="1.0.0", image_ref=digest_ref, kind="release",
                               strategy="rolling", verdict=None, reason="", started_at=T0, finished_at=T0,
                               operator="ana")
        assert record.image_ref == digest_ref
