"""A release from start to end (lib/releases/flow): real analysis against real caddy apps, the real
signed ledger on a directory store. The deploy target is a switchboard in this file that "runs" one
image by pointing at the caddy variant standing for it (healthy, sick, bare): the deployers
themselves are tested against helm and compose in test_helm_release/test_compose_release; what is
proved here is the order of the steps and what every outcome leaves in the ledger."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from acci_ops.lib.backup.signing import Keyring
from acci_ops.lib.releases.analysis import AnalysisSpec, LoadSpec, Target, default_metrics, run_analysis
from acci_ops.lib.releases.deployers import CurrentState, DeployFailed, DeployResult, ReleaseTarget, RollbackTarget
from acci_ops.lib.releases.flow import (
    HELD,
    ROLLBACK_FAILED,
    ROLLED_BACK,
    STRANDED,
    VERIFIED,
    ReleasePlan,
    RollbackPlan,
    run_release,
    run_rollback,
)
from acci_ops.lib.releases.ledger import ReleaseLedger
from acci_ops.lib.storage.objectstore import FileStore
from acci_ops_tests.fixtures.backups import TEST_SIGNING_KEY

HISTOGRAM = "caddy_http_request_duration_seconds"
SPEC = AnalysisSpec(interval_seconds=0.2, count=4,
                    metrics=default_metrics(0.5, error_metric=f"{HISTOGRAM}_count", latency_metric=HISTOGRAM),
                    load=LoadSpec(requests=40, rate=100, paths=("/", "/health")))
GOOD, GOOD2, SICK, BARE = (f"registry.test/acci/app@sha256:{c * 64}" for c in "abcd")


@dataclass
class Switchboard(ReleaseTarget):
    """Runs one image at a time; each image ref stands for one caddy variant."""

    apps: dict
    images: dict[str, str]
    running: str | None = None
    stuck: bool = False
    fail_deploy: bool = False
    calls: list[str] = field(default_factory=list)
    backend = "switchboard"

    def _result(self, image_ref: str, previous: str | None) -> DeployResult:
        return DeployResult(self.apps[self.images[image_ref]].url, None, previous, 0.0, image_ref)

    def deploy(self, image_ref, runtime, log):  # noqa: ANN001, ANN201
        self.calls.append(f"deploy {image_ref[-4:]}")
        previous, self.running = self.running, image_ref
        if self.fail_deploy:
            raise DeployFailed("app container exited with code 1", previous_image_ref=previous, rolled_back=False)
        return self._result(image_ref, previous)

    def rollback(self, to: RollbackTarget, log, *, runtime=None):  # noqa: ANN001, ANN201
        self.calls.append(f"rollback {to.image_ref[-4:]}")
        previous, self.running = self.running, to.image_ref
        return self._result(to.image_ref, previous)

    def recover_stuck(self, log, *, last_image_ref=None, runtime=None):  # noqa: ANN001, ANN201
        if not self.stuck:
            return None
        self.calls.append(f"recover {last_image_ref[-4:]}")
        self.stuck, self.running = False, last_image_ref
        return f"ran up again with {last_image_ref}"

    def current(self, log):  # noqa: ANN001, ANN201
        return CurrentState(self.running, None, "running" if self.running else "absent", self.stuck)


@pytest.fixture
def ledger(tmp_path) -> ReleaseLedger:
    return ReleaseLedger(FileStore(f"file://{tmp_path}/backups"), Keyring.from_secret(TEST_SIGNING_KEY))


@pytest.fixture
def board(caddy_apps) -> Switchboard:
    return Switchboard(caddy_apps, {GOOD: "healthy", GOOD2: "healthy", SICK: "sick", BARE: "bare"})


@pytest.fixture
def analyse(caddy_apps):
    """The real analysis; each variant's metrics are on a port of their own, looked up by app URL."""
    by_url = {app.url: app for app in caddy_apps.values()}

    def run(spec: AnalysisSpec, target: Target):
        app = by_url[target.app_url]
        return run_analysis(spec, Target(app.url, metrics_url=app.metrics_url), log=lambda line: None)
    return run


def plan(version: str, image_ref: str, **changes: object) -> ReleasePlan:
    return ReleasePlan(environment="staging", version=version, image_ref=image_ref, operator="alice",
                       strategy="rolling", analysis=SPEC, **changes)


def release(board, ledger, analyse, version, image_ref, **changes):  # noqa: ANN001, ANN201, ANN003
    return run_release(plan(version, image_ref, **changes), board, ledger, analyse, log=lambda line: None)


def test_a_good_version_is_verified_and_recorded(board, ledger, analyse):
    outcome = release(board, ledger, analyse, "2.0.0", GOOD)
    assert outcome.status == VERIFIED and outcome.ok, outcome.reason
    assert ledger.verified("staging", "2.0.0").image_ref == GOOD
    assert ledger.current("staging").version == "2.0.0"
    assert outcome.previous_version is None and set(outcome.steps) >= {"deploy", "analysis"}


def test_a_sick_version_is_rolled_back_by_itself_and_the_previous_one_serves_and_passes_again(board, ledger,
                                                                                               analyse):
    release(board, ledger, analyse, "2.0.0", GOOD)
    outcome = release(board, ledger, analyse, "2.2.0", SICK)
    assert outcome.status == ROLLED_BACK and not outcome.ok
    assert outcome.previous_version == "2.0.0" and board.running == GOOD
    assert board.calls == [f"deploy {GOOD[-4:]}", f"deploy {SICK[-4:]}", f"rollback {GOOD[-4:]}"]
    assert outcome.rollback_analysis.verdict == "passed"
    assert "health" in outcome.reason and "rolled back by itself to 2.0.0" in outcome.alert
    assert ledger.verified("staging", "2.2.0") is None
    assert ledger.verified("staging", "2.0.0") is not None
    assert ledger.current("staging").version == "2.0.0"
    history = ledger.history("staging")
    assert [(r.kind, r.version, r.verdict, r.rolled_back) for r in history[:2]] == [
        ("rollback", "2.0.0", "passed", False), ("release", "2.2.0", "failed", True)]


def test_inconclusive_is_never_passed_held_or_rolled_back_as_configured(board, ledger, analyse):
    release(board, ledger, analyse, "2.0.0", GOOD)
    held = release(board, ledger, analyse, "2.4.0", BARE)
    assert held.status == HELD and board.running == BARE and "inconclusive" in held.alert
    assert ledger.verified("staging", "2.4.0") is None
    rolled = release(board, ledger, analyse, "2.4.0", BARE, on_inconclusive="rollback")
    assert rolled.status == ROLLED_BACK and board.running == GOOD
    assert rolled.reason.startswith("inconclusive: ")


def test_a_deploy_that_never_became_healthy_is_rolled_back(board, ledger, analyse):
    release(board, ledger, analyse, "2.0.0", GOOD)
    board.fail_deploy = True
    outcome = release(board, ledger, analyse, "2.1.0", GOOD2)
    assert outcome.status == ROLLED_BACK and board.running == GOOD
    assert outcome.reason == "failed: the deploy did not become healthy: app container exited with code 1"


def test_a_first_release_that_fails_has_nothing_to_go_back_to_and_is_critical(board, ledger, analyse):
    outcome = release(board, ledger, analyse, "2.2.0", SICK)
    assert outcome.status == STRANDED and outcome.critical
    assert "no earlier version to roll back to" in outcome.alert


def test_a_breaking_version_is_not_rolled_back_by_image_and_points_at_its_backup(board, ledger, analyse):
    release(board, ledger, analyse, "2.0.0", GOOD)
    outcome = release(board, ledger, analyse, "2.5.0", SICK, breaking=True, backup_key="staging/2026/x.dump.zst")
    assert outcome.status == STRANDED and outcome.critical and board.running == SICK
    assert "NOT rolled back by image" in outcome.alert and "staging/2026/x.dump.zst" in outcome.alert
    assert "docs/runbooks/disaster-recovery.md" in outcome.alert


def test_a_rollback_whose_own_analysis_fails_is_critical_and_stops(board, ledger, analyse):
    release(board, ledger, analyse, "2.0.0", GOOD)
    board.images[GOOD] = "sick"  # the previous version no longer passes either (say, its dependency broke)
    outcome = release(board, ledger, analyse, "2.2.0", SICK)
    assert outcome.status == ROLLBACK_FAILED and outcome.critical
    assert board.calls.count(f"rollback {GOOD[-4:]}") == 1  # no loop
    assert "did not pass either" in outcome.alert


def test_a_release_killed_midway_is_repaired_before_the_next_one(board, ledger, analyse):
    release(board, ledger, analyse, "2.0.0", GOOD)
    board.running, board.stuck = SICK, True  # what a killed `up` of another image left
    outcome = release(board, ledger, analyse, "2.1.0", GOOD2)
    assert outcome.recovered == f"ran up again with {GOOD}"
    assert board.calls[1] == f"recover {GOOD[-4:]}" and outcome.status == VERIFIED


def test_a_manual_rollback_withdraws_the_verification_of_the_version_left(board, ledger, analyse):
    release(board, ledger, analyse, "2.0.0", GOOD)
    release(board, ledger, analyse, "2.1.0", GOOD2)
    assert ledger.verified("staging", "2.1.0") is not None
    outcome = run_rollback(RollbackPlan(environment="staging", version="2.0.0", image_ref=GOOD, operator="bob",
                                        strategy="rolling", analysis=SPEC, from_version="2.1.0",
                                        from_image_ref=GOOD2), board, ledger, analyse, log=lambda line: None)
    assert outcome.status == VERIFIED and board.running == GOOD
    assert ledger.verified("staging", "2.1.0") is None
    assert ledger.current("staging").version == "2.0.0"


@dataclass
class JudgingSwitchboard(Switchboard):
    """Judges an image on its own URL before it takes traffic, as blue/green (the idle color) and a canary
    (its steps) do; one that does not pass never serves."""

    judge: object = None

    def deploy(self, image_ref, runtime, log):  # noqa: ANN001, ANN201
        self.calls.append(f"deploy {image_ref[-4:]}")
        url = self.apps[self.images[image_ref]].url
        result = self.judge(SPEC, Target(url))
        if result.verdict != "passed":
            raise DeployFailed(f"the idle color {result.verdict}; traffic never moved", previous_image_ref=self.running,
                               rolled_back=True, analysis=result)
        previous, self.running = self.running, image_ref
        return DeployResult(url, None, previous, 0.0, image_ref, analysis=result)


def test_a_deployer_that_judged_the_version_itself_is_not_measured_twice(caddy_apps, ledger, analyse):
    board = JudgingSwitchboard(caddy_apps, {GOOD: "healthy", SICK: "sick"}, judge=analyse)
    asked: list[str] = []

    def counted(spec, target):  # noqa: ANN001, ANN202
        asked.append(target.app_url)
        return analyse(spec, target)

    outcome = run_release(plan("2.0.0", GOOD), board, ledger, counted, log=lambda line: None)
    assert outcome.status == VERIFIED and asked == []  # the deployer's own verdict was taken
    assert "analysis" not in outcome.steps
    recorded = ledger.verified("staging", "2.0.0").record
    assert recorded.measurements and len(recorded.measurements) == len(outcome.analysis.report())


def test_a_version_its_deployer_judged_failed_keeps_that_analysis_and_the_live_version_is_analysed_again(
        caddy_apps, ledger, analyse):
    board = JudgingSwitchboard(caddy_apps, {GOOD: "healthy", SICK: "sick"}, judge=analyse)
    run_release(plan("2.0.0", GOOD), board, ledger, analyse, log=lambda line: None)
    outcome = run_release(plan("2.2.0", SICK), board, ledger, analyse, log=lambda line: None)
    assert outcome.status == ROLLED_BACK and board.running == GOOD
    assert outcome.analysis.verdict == "failed" and "traffic never moved" in outcome.reason
    assert outcome.rollback_analysis.verdict == "passed"
    failed = next(r for r in ledger.history("staging") if r.version == "2.2.0")
    assert failed.verdict == "failed" and failed.measurements  # the failing measurements are on the record
