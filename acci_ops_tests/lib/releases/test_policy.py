"""The promotion gate against a real ledger on a directory store: the promotion order, release requests
(environment, operator, typed confirmation), verification on the previous environment with its
override, soak time, and promotion windows (rollbacks never held, automatic promotions wait, manual
ones refused unless overridden). Every refusal is checked word for word."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from acci_ops.lib.backup.signing import Keyring
from acci_ops.lib.core.errors import AcciOpsError, ConfigError
from acci_ops.lib.releases.ledger import ReleaseLedger, ReleaseRecord
from acci_ops.lib.releases.policy import (
    GO,
    WAIT,
    ReleaseRefused,
    check_promotion,
    check_promotion_order,
    check_release_request,
    check_window,
    soak_satisfied,
)
from acci_ops.lib.releases.windows import PromotionWindows
from acci_ops.lib.storage.objectstore import FileStore
from acci_ops_tests.fixtures.backups import TEST_SIGNING_KEY

T0 = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
DECLARED = ("dev", "staging", "production")
ORDER = ("dev", "staging", "production")
PRODUCTION = ("production",)


def ref(version: str, build: str = "") -> str:
    return f"registry.example.com/acci/app@sha256:{hashlib.sha256((version + build).encode()).hexdigest()}"


def rec(environment: str, version: str, verdict: str | None, minutes: int, *, kind: str = "release",
        reason: str = "", **extra) -> ReleaseRecord:
    finished = T0 + timedelta(minutes=minutes)
    return ReleaseRecord(environment=environment, version=version, image_ref=ref(version), kind=kind,
                         strategy="rolling", verdict=verdict, reason=reason, started_at=finished - timedelta(minutes=5),
                         finished_at=finished, operator="ana", **extra)


@pytest.fixture
def ledger(tmp_path: Path) -> ReleaseLedger:
    return ReleaseLedger(FileStore(f"file://{tmp_path}/backups"), Keyring.from_secret(TEST_SIGNING_KEY))


def refusal(call, *args, **kwargs) -> str:
    with pytest.raises(ReleaseRefused) as failure:
        call(*args, **kwargs)
    return str(failure.value)


def config_error(call, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as failure:
        call(*args, **kwargs)
    return str(failure.value)


# --- promotion order ---------------------------------------------------------------------------------

def test_the_promotion_order_names_declared_environments_once():
    """A valid order comes back as a tuple; no order means every environment stands alone."""
    assert check_promotion_order(["staging", "production"], DECLARED) == ("staging", "production")
    assert check_promotion_order(None, DECLARED) == ()
    assert config_error(check_promotion_order, ["staging", "prod"], DECLARED) == (
        "promotion_order names 'prod', which is not a declared environment (declared: dev, production, staging)")
    assert config_error(check_promotion_order, ["staging", "production", "staging"], DECLARED) == (
        "promotion_order lists 'staging' twice; each environment has one place in the order")
    assert config_error(check_promotion_order, "staging,production", DECLARED) == (
        "promotion_order must be a list of environment names, not str")


# --- release requests --------------------------------------------------------------------------------

def test_a_well_formed_request_passes_and_production_needs_its_name_typed():
    assert check_release_request("staging", "1.4.0", "ana", None, DECLARED, PRODUCTION).confirmed is False
    request = check_release_request("production", "1.4.0", " ana ", "production", DECLARED, PRODUCTION)
    assert (request.environment, request.version, request.operator, request.confirmed) == (
        "production", "1.4.0", "ana", True)
    assert check_release_request("production", None, "ana", "production", DECLARED, PRODUCTION,
                                 action="rolling back").version is None


@pytest.mark.parametrize(("args", "message"), [
    (("prod", "1.4.0", "ana", "prod"), "unknown environment 'prod'; declared: dev, production, staging"),
    (("staging", "1.4.0", "  ", None), "operator is empty: say who is releasing (your name, or the automation's); "
                                       "the release ledger records it"),
    (("staging", "1.4.0", None, None), "operator is empty: say who is releasing (your name, or the automation's); "
                                       "the release ledger records it"),
    (("production", "1.4.0", "ana", None), "releasing to production needs confirmation: set confirm: production "
                                           "(type the environment's name)"),
    (("production", "1.4.0", "ana", " "), "releasing to production needs confirmation: set confirm: production "
                                          "(type the environment's name)"),
    (("production", "1.4.0", "ana", "yes"), "confirm 'yes' does not match the environment: releasing to production, "
                                            "set confirm: production"),
    (("staging", "1.4.0", "ana", "production"), "confirm 'production' does not match the environment: releasing to "
                                                "staging, set confirm: staging"),
    (("production", "1.4.0", "ana", True), "confirm must be the environment's name as text, not bool"),
    (("staging", "latest please", "ana", None), "version 'latest please' must be 1-128 letters, digits and . _ + - "
                                                "starting with a letter or digit"),
])
def test_malformed_release_requests_are_refused_before_anything_happens(args, message):
    """Each refusal says what is wrong and what to type."""
    assert config_error(check_release_request, *args, DECLARED, PRODUCTION) == message


def test_a_rollback_request_says_rolling_back():
    assert config_error(check_release_request, "production", None, "ana", None, DECLARED, PRODUCTION,
                        action="rolling back") == ("rolling back production needs confirmation: set confirm: "
                                                   "production (type the environment's name)")


# --- verification on the previous environment ----------------------------------------------------

def test_environments_outside_the_order_or_first_in_it_need_nothing(ledger):
    assert check_promotion(ledger, ("staging", "production"), "dev", "1.4.0", False).reason == (
        "dev is not in promotion_order: nothing to verify first")
    decision = check_promotion(ledger, ORDER, "dev", "1.4.0", False)
    assert decision.previous_environment is None and not decision.unverified
    assert decision.reason == "dev is first in promotion_order: nothing to verify first"


def test_a_version_verified_on_the_previous_environment_is_promoted(ledger):
    ledger.record(rec("staging", "1.4.0", "passed", 0))
    decision = check_promotion(ledger, ORDER, "production", "1.4.0", False, image_ref=ref("1.4.0"))
    assert (decision.previous_environment, decision.unverified) == ("staging", False)
    assert decision.verification.image_ref == ref("1.4.0")
    assert decision.reason == "version 1.4.0 is verified on staging: it passed analysis there at 2026-12-02T10:00:00Z"


def test_a_version_whose_last_analysis_failed_there_is_refused_naming_the_analysis(ledger):
    """It passed once, then a re-verification failed: the refusal quotes that failure."""
    ledger.record(rec("staging", "1.4.0", "passed", -60))
    ledger.record(rec("staging", "1.4.0", "failed", 0, kind="reverification", reason="error_ratio 0.13 > 0.01"))
    assert refusal(check_promotion, ledger, ORDER, "production", "1.4.0", False) == (
        "version 1.4.0 is not verified on staging: its last analysis there failed at 2026-12-02T10:00:00Z "
        "(error_ratio 0.13 > 0.01); release it there first, or set allow_unverified: true")


@pytest.mark.parametrize(("records", "clause"), [
    ([], "it has never been analysed there"),
    ([rec("staging", "1.4.0", None, 0)], "it has never been analysed there"),
    ([rec("dev", "1.4.0", "passed", 0)], "it has never been analysed there"),
    ([rec("staging", "1.4.0", "inconclusive", 0, reason="error_ratio: no requests")],
     "its last analysis there was inconclusive at 2026-12-02T10:00:00Z (error_ratio: no requests)"),
    ([rec("staging", "1.3.0", "passed", -10),
      rec("staging", "1.4.0", "failed", 0, reason="health failed 3 of 3 measurements", previous_version="1.3.0",
          rolled_back=True)],
     "its last analysis there failed at 2026-12-02T10:00:00Z (health failed 3 of 3 measurements); "
     "it was rolled back"),
    ([rec("staging", "1.4.0", "passed", -10),
      rec("staging", "1.3.0", None, 0, kind="rollback", previous_version="1.4.0", reason="checkout broken")],
     "it was rolled back there at 2026-12-02T10:00:00Z (to 1.3.0 by ana: checkout broken)"),
])
def test_every_reason_for_not_being_verified_is_named(ledger, records, clause):
    """Never analysed there (or only elsewhere), inconclusive, failed and rolled back, rolled back by hand."""
    for record in records:
        ledger.record(record)
    assert refusal(check_promotion, ledger, ORDER, "production", "1.4.0", False) == (
        f"version 1.4.0 is not verified on staging: {clause}; release it there first, or set allow_unverified: true")


def test_allow_unverified_lets_it_through_flagged(ledger):
    """The override does not refuse, and says loudly that the caller must record and alert."""
    ledger.record(rec("staging", "1.4.0", "failed", 0, reason="error_ratio 0.13 > 0.01"))
    decision = check_promotion(ledger, ORDER, "production", "1.4.0", True)
    assert decision.unverified and decision.verification is None and decision.previous_environment == "staging"
    assert decision.reason == ("allow_unverified: version 1.4.0 is not verified on staging: its last analysis there "
                               "failed at 2026-12-02T10:00:00Z (error_ratio 0.13 > 0.01); releasing anyway "
                               "(recorded and alerted)")


def test_only_the_image_that_passed_is_promoted(ledger):
    """The same version rebuilt (another digest) is not the verified artifact."""
    ledger.record(rec("staging", "1.4.0", "passed", 0))
    rebuilt = ref("1.4.0", "rebuild")
    assert refusal(check_promotion, ledger, ORDER, "production", "1.4.0", False, image_ref=rebuilt) == (
        f"version 1.4.0 passed on staging as {ref('1.4.0')}, but production would get {rebuilt}; "
        "promote the image that passed, or set allow_unverified: true")
    assert check_promotion(ledger, ORDER, "production", "1.4.0", True, image_ref=rebuilt).unverified
    assert config_error(check_promotion, ledger, ORDER, "production", "1.4.0", False, image_ref="app:1.4.0") == (
        "image_ref 'app:1.4.0' is not a digest reference (repository@sha256:<64 hex digits>); releases deploy by "
        "digest, never by tag")


def test_a_refusal_is_a_runtime_refusal_not_a_config_error(ledger):
    with pytest.raises(AcciOpsError) as failure:
        check_promotion(ledger, ORDER, "staging", "1.4.0", False)
    assert type(failure.value) is ReleaseRefused


# --- soak time ---------------------------------------------------------------------------------------

def test_soak_time_counts_from_the_unbroken_run_of_passes(ledger):
    """Verified at 10:00 and confirmed at 10:30: after 75 minutes it has soaked 60; a failure at
    11:00 and a pass at 11:10 restart the clock."""
    assert soak_satisfied(ledger, "staging", "1.4.0", 0, T0) == (True, "no soak time required")
    assert soak_satisfied(ledger, "staging", "1.4.0", 60, T0) == (
        False, "version 1.4.0 is not verified on staging: it has never been analysed there")
    ledger.record(rec("staging", "1.4.0", "passed", 0))
    ledger.record(rec("staging", "1.4.0", "passed", 30, kind="reverification"))
    assert soak_satisfied(ledger, "staging", "1.4.0", 60, T0 + timedelta(minutes=12)) == (
        False, "version 1.4.0 has soaked on staging for 12 of the 60 minutes required (verified since "
               "2026-12-02T10:00:00Z); it may be promoted from 2026-12-02T11:00:00Z")
    assert soak_satisfied(ledger, "staging", "1.4.0", 60, T0 + timedelta(minutes=75)) == (
        True, "version 1.4.0 has been verified on staging for 75 minutes (since 2026-12-02T10:00:00Z; 60 required)")
    ledger.record(rec("staging", "1.4.0", "failed", 60, kind="reverification", reason="p95 0.9 > 0.5"))
    assert soak_satisfied(ledger, "staging", "1.4.0", 60, T0 + timedelta(minutes=65)) == (
        False, "version 1.4.0 is not verified on staging: its last analysis there failed at 2026-12-02T11:00:00Z "
               "(p95 0.9 > 0.5)")
    ledger.record(rec("staging", "1.4.0", "passed", 70, kind="reverification"))
    assert soak_satisfied(ledger, "staging", "1.4.0", 60, T0 + timedelta(minutes=75))[0] is False
    assert soak_satisfied(ledger, "staging", "1.4.0", 60, T0 + timedelta(minutes=130))[0] is True


def test_bad_soak_input_is_refused(ledger):
    assert config_error(soak_satisfied, ledger, "staging", "1.4.0", -5, T0) == (
        "soak_minutes must be a whole number >= 0, not -5")
    assert config_error(soak_satisfied, ledger, "staging", "1.4.0", 60, datetime(2026, 12, 2, 10)) == (
        "the soak check needs a timezone-aware time, not a naive one")


# --- promotion windows -------------------------------------------------------------------------------

MADRID_WINDOWS = PromotionWindows.parse(["mon-fri 09:00-17:00"], ["fri 18:00-mon 06:00"], "Europe/Madrid",
                                        "environment 'production'")
SATURDAY = datetime(2026, 12, 12, 11, 0, tzinfo=UTC)  # 12:00 in Madrid
WEDNESDAY = datetime(2026, 12, 9, 10, 0, tzinfo=UTC)  # 11:00 in Madrid
MONDAY_9 = datetime(2026, 12, 14, 8, 0, tzinfo=UTC)
CLOSED = "inside deny window 'fri 18:00-mon 06:00' (Europe/Madrid) until Mon 06:00; opens Mon 09:00"


def test_rollbacks_are_never_held_by_windows():
    gate = check_window(MADRID_WINDOWS, SATURDAY, automatic=False, override_window=False, is_rollback=True)
    assert (gate.action, gate.overridden, gate.next_open) == (GO, False, None)
    assert gate.reason == f"rollbacks are never held by promotion windows (the window is closed: {CLOSED})"
    automatic = check_window(MADRID_WINDOWS, SATURDAY, automatic=True, override_window=False, is_rollback=True)
    assert automatic.action == GO


def test_inside_the_window_everything_goes():
    gate = check_window(MADRID_WINDOWS, WEDNESDAY, automatic=True, override_window=False, is_rollback=False)
    assert gate == type(gate)(GO, "inside allow window 'mon-fri 09:00-17:00' (Europe/Madrid) until Wed 17:00", None)
    assert check_window(None, SATURDAY, automatic=True, override_window=False, is_rollback=False).action == GO


def test_automatic_promotions_wait_for_the_window_to_open():
    gate = check_window(MADRID_WINDOWS, SATURDAY, automatic=True, override_window=False, is_rollback=False)
    assert (gate.action, gate.next_open, gate.overridden) == (WAIT, MONDAY_9, False)
    assert gate.reason == f"environment 'production' is closed for promotions: {CLOSED}; waiting"


def test_manual_releases_outside_the_window_are_refused_unless_overridden():
    """Refused naming the window and the override; with the override it goes, flagged for the record."""
    assert refusal(check_window, MADRID_WINDOWS, SATURDAY, automatic=False, override_window=False,
                   is_rollback=False) == (f"environment 'production' is closed for releases: {CLOSED}; release then, "
                                          "or set override_window: true (it is recorded)")
    evening = datetime(2026, 12, 9, 19, 0, tzinfo=UTC)  # Wednesday 20:00: outside allow, no deny window
    assert refusal(check_window, MADRID_WINDOWS, evening, automatic=False, override_window=False,
                   is_rollback=False) == ("environment 'production' is closed for releases: outside the allow window "
                                          "'mon-fri 09:00-17:00' (Europe/Madrid); opens Thu 09:00; release then, or "
                                          "set override_window: true (it is recorded)")
    gate = check_window(MADRID_WINDOWS, SATURDAY, automatic=False, override_window=True, is_rollback=False)
    assert (gate.action, gate.overridden) == (GO, True)
    assert gate.reason == f"override_window: releasing although {CLOSED} (recorded)"


def test_automation_cannot_override_a_window():
    assert config_error(check_window, MADRID_WINDOWS, WEDNESDAY, automatic=True, override_window=True,
                        is_rollback=False) == ("override_window is for manual releases; an automatic promotion waits "
                                               "for its window")
