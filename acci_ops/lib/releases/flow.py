"""A release from start to end, and a rollback: the order of the steps and what each outcome leaves.

The gate (``policy``), the deployers (``helm_release``, ``compose_release``), the analysis and the
ledger each do one thing; this module is the one place that strings them together, so the rules
that matter when something fails hold for every strategy and platform:

- a half-finished earlier release (a killed run) is repaired before anything new is deployed;
- the version deployed is always ``repo@sha256:...``: what passed its checks, never a tag;
- an analysis that does not pass puts the previous verified version back by itself (Helm: its
  revision; Compose: its digest), and that version is analysed again: a rollback whose own analysis
  fails is reported as critical and nothing more is tried (no loops);
- ``inconclusive`` is never ``passed``: it holds the version unverified, or rolls it back
  (``on_inconclusive``);
- a version whose migrations are not backward compatible (image label ``io.acci.migrations=breaking``)
  is never rolled back by image: the outcome points at the backup taken before it and the DR runbook;
- every outcome is recorded in the signed ledger (release, then rollback) before the caller hears of
  it, and every outcome other than "verified" carries the alert to send.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from acci_ops.lib.core.errors import AcciOpsError
from acci_ops.lib.platform.backends import AppRuntime
from acci_ops.lib.releases.analysis import AnalysisResult, AnalysisSpec, Target
from acci_ops.lib.releases.deployers import DeployFailed, DeployResult, ReleaseTarget, RollbackTarget
from acci_ops.lib.releases.ledger import ReleaseLedger, ReleaseRecord

Log = Callable[[str], None]
Analyse = Callable[[AnalysisSpec, Target], AnalysisResult]

BREAKING_LABEL = "io.acci.migrations"
BREAKING_VALUE = "breaking"
DR_RUNBOOK = "docs/runbooks/disaster-recovery.md"
UNRECORDED = "unrecorded"  # the version name of a running image the ledger has no record of

# What a release or rollback ended in.
VERIFIED = "verified"          # passed analysis: the version is verified here
ROLLED_BACK = "rolled_back"    # did not pass; the previous version serves again and passed its analysis
HELD = "held"                  # inconclusive, left deployed unverified (on_inconclusive: hold)
ROLLBACK_FAILED = "rollback_failed"  # did not pass, and neither did the version rolled back to: critical
STRANDED = "stranded"          # did not pass and nothing could be rolled back to (first release, breaking)


def is_breaking(labels: dict[str, str] | None) -> bool:
    return (labels or {}).get(BREAKING_LABEL, "").strip().lower() == BREAKING_VALUE


@dataclass(frozen=True)
class _Deployment:
    """What goes where and how it is judged: what a release and a rollback have in common."""

    environment: str
    version: str
    image_ref: str
    operator: str
    strategy: str
    analysis: AnalysisSpec
    metrics_url: str | None = None
    prometheus_url: str | None = None

    def target(self, app_url: str) -> Target:
        """What the analysis measures once ``app_url`` serves this deployment."""
        return Target(app_url, self.metrics_url, self.prometheus_url)


@dataclass(frozen=True)
class ReleasePlan(_Deployment):
    """One release the policy allowed, and the overrides used."""

    on_inconclusive: str = "hold"
    breaking: bool = False
    backup_key: str | None = None
    allow_unverified: bool = False
    override_window: bool = False


@dataclass
class Outcome:
    """How a release or rollback ended, with the ledger keys written, the analyses and the alert."""

    status: str
    environment: str
    version: str
    image_ref: str
    reason: str
    record: ReleaseRecord
    record_key: str
    analysis: AnalysisResult | None = None
    deploy: DeployResult | None = None
    previous_version: str | None = None
    previous_image_ref: str | None = None
    rollback_record_key: str | None = None
    rollback_analysis: AnalysisResult | None = None
    recovered: str | None = None
    alert: str | None = None
    critical: bool = False
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == VERIFIED

    @property
    def serving(self) -> str:
        """The version the environment serves now."""
        return self.previous_version if self.status == ROLLED_BACK and self.previous_version else self.version


@dataclass(frozen=True)
class Previous:
    """What to roll back to: the newest version verified here (else what runs now, unverified)."""

    version: str
    image_ref: str
    verified: bool


def _utc_now() -> datetime:
    return datetime.now(UTC)


def rollback_candidate(ledger: ReleaseLedger, environment: str, exclude_version: str,
                       running_image_ref: str | None) -> Previous | None:
    """The previous version that passed analysis here; without one, the image that runs now (if it is
    pinned by digest and is not the version being released), named by the ledger when it knows it."""
    verified = ledger.last_verified(environment, exclude_version=exclude_version)
    if verified is not None:
        return Previous(verified.version, verified.image_ref, True)
    if running_image_ref is None:
        return None
    current = ledger.current(environment)
    if current is not None and current.image_ref == running_image_ref:
        if current.version == exclude_version:
            return None
        return Previous(current.version, running_image_ref, False)
    return Previous(UNRECORDED, running_image_ref, False)


class _Clock:
    def __init__(self) -> None:
        self.start = time.monotonic()
        self.steps: dict[str, float] = {}

    def step(self, name: str, began: float) -> None:
        self.steps[name] = round(self.steps.get(name, 0.0) + time.monotonic() - began, 3)

    @property
    def total(self) -> float:
        return round(time.monotonic() - self.start, 3)


def _repair(target: ReleaseTarget, ledger: ReleaseLedger, environment: str, runtime: AppRuntime | None,
            log: Log) -> tuple[str | None, str | None]:
    """Repair what a killed release left (a Helm ``pending-*`` state, Compose containers left
    created/exited); returns (the line saying what was done, the image running now)."""
    state = target.current(log)
    if not state.stuck:
        return None, state.image_ref
    deployed = ledger.current(environment)
    line = target.recover_stuck(log, last_image_ref=deployed.image_ref if deployed else None, runtime=runtime)
    if line:
        log(f"recovered a release left half done: {line}")
    return line, target.current(log).image_ref


def _judge(deployed: DeployResult, plan: _Deployment, analyse: Analyse, clock: _Clock, step: str) -> AnalysisResult:
    """The verdict on what ``deployed`` serves: the deployer's own when it already judged it (blue/green's
    color before the switch, a canary's 100 % step, a blue/green rollback that redeployed), else the
    analysis run now on its URL. The same version is never measured twice."""
    if isinstance(deployed.analysis, AnalysisResult):
        return deployed.analysis
    began = time.monotonic()
    result = analyse(plan.analysis, plan.target(deployed.app_url))
    clock.step(step, began)
    return result


def run_release(plan: ReleasePlan, target: ReleaseTarget, ledger: ReleaseLedger, analyse: Analyse, *,
                runtime: AppRuntime | None = None, log: Log = print,
                now: Callable[[], datetime] = _utc_now) -> Outcome:
    """Deploy ``plan`` with ``target``, judge it, roll back by itself when it does not pass, and record
    everything in ``ledger``. Raises only for what happens before anything changed (a refusal from
    the deployer's own checks); afterwards every path ends in an Outcome."""
    clock, started = _Clock(), now()
    began = time.monotonic()
    recovered, running = _repair(target, ledger, plan.environment, runtime, log)
    previous = rollback_candidate(ledger, plan.environment, plan.version, running)
    clock.step("recover", began)
    log(f"releasing {plan.version} ({plan.image_ref}) to {plan.environment} with {target.describe()}, "
        f"strategy {plan.strategy}; rollback target: "
        + (f"{previous.version} ({previous.image_ref}{'' if previous.verified else ', never verified here'})"
           if previous else "none (nothing verified here before)"))

    began = time.monotonic()
    deploy_failure: DeployFailed | None = None
    deployed: DeployResult | None = None
    try:
        deployed = target.deploy(plan.image_ref, runtime, log)
    except DeployFailed as exc:
        deploy_failure = exc
        log(f"deploy of {plan.version} failed: {exc}")
    clock.step("deploy", began)

    result: AnalysisResult | None = None
    if deployed is not None:
        result = _judge(deployed, plan, analyse, clock, "analysis")
        verdict, reason = result.verdict, result.reason
    else:
        # Nothing new serves (a failed deploy, an idle color or canary that did not pass its own analysis):
        # failed, whatever that analysis said, with its measurements kept for the record.
        if deploy_failure is not None and isinstance(deploy_failure.analysis, AnalysisResult):
            result = deploy_failure.analysis
        verdict, reason = "failed", f"the deploy did not become healthy: {deploy_failure}"

    record = dict(environment=plan.environment, version=plan.version, image_ref=plan.image_ref, kind="release",
                  strategy=plan.strategy, verdict=verdict, reason=reason, started_at=started,
                  operator=plan.operator, measurements=tuple(result.report()) if result else (),
                  helm_revision=deployed.revision if deployed else None, backup_key=plan.backup_key,
                  allow_unverified=plan.allow_unverified, override_window=plan.override_window,
                  previous_version=previous.version if previous else None,
                  previous_image_ref=previous.image_ref if previous else None)
    common = dict(environment=plan.environment, version=plan.version, image_ref=plan.image_ref, analysis=result,
                  deploy=deployed, previous_version=previous.version if previous else None,
                  previous_image_ref=previous.image_ref if previous else None, recovered=recovered)

    if verdict == "passed":
        rec = ReleaseRecord(**record, finished_at=now(), duration_seconds=clock.total)
        key = ledger.record(rec)
        log(f"{plan.version} is verified on {plan.environment}: {reason}")
        return Outcome(VERIFIED, reason=reason, record=rec, record_key=key, seconds=clock.total,
                       steps=clock.steps, **common)

    if verdict == "inconclusive" and plan.on_inconclusive == "hold":
        rec = ReleaseRecord(**record, finished_at=now(), duration_seconds=clock.total)
        key = ledger.record(rec)
        alert = (f"release of {plan.version} to {plan.environment} is inconclusive and held in place, NOT verified "
                 f"(on_inconclusive: hold): {reason}")
        log(alert)
        return Outcome(HELD, reason=reason, record=rec, record_key=key, alert=alert, seconds=clock.total,
                       steps=clock.steps, **common)

    # It did not pass: put the previous version back, unless the tool already did (Helm's
    # --rollback-on-failure) and the analysis cannot run on it anyway, or nothing can be put back.
    why = f"{verdict}: {reason}"
    if plan.breaking:
        rec = ReleaseRecord(**{**record, "previous_version": None, "previous_image_ref": None},
                            finished_at=now(), duration_seconds=clock.total)
        key = ledger.record(rec)
        alert = (f"CRITICAL: {plan.version} on {plan.environment} {why}. Its migrations are breaking "
                 f"({BREAKING_LABEL}={BREAKING_VALUE}), so it is NOT rolled back by image: restore the backup "
                 f"{plan.backup_key or '(none was taken)'} beside the database and switch, as {DR_RUNBOOK} says")
        log(alert)
        return Outcome(STRANDED, reason=why, record=rec, record_key=key, alert=alert, critical=True,
                       seconds=clock.total, steps=clock.steps, **common)
    if previous is None:
        rec = ReleaseRecord(**record, finished_at=now(), duration_seconds=clock.total)
        key = ledger.record(rec)
        alert = (f"CRITICAL: {plan.version} on {plan.environment} {why}; there is no earlier version to roll "
                 "back to (none is recorded or running here): fix forward or run rollback_release with to_version")
        log(alert)
        return Outcome(STRANDED, reason=why, record=rec, record_key=key, alert=alert, critical=True,
                       seconds=clock.total, steps=clock.steps, **common)

    began = time.monotonic()
    rollback_error: str | None = None
    rolled: DeployResult | None = None
    if deploy_failure is not None and deploy_failure.rolled_back:
        log(f"{target.describe()} already restored the previous release itself; analysing it")
    try:
        rolled = target.rollback(RollbackTarget(image_ref=previous.image_ref), log, runtime=runtime)
    except AcciOpsError as exc:
        rollback_error = str(exc)
        log(f"rollback to {previous.version} failed: {exc}")
    clock.step("rollback", began)
    rec = ReleaseRecord(**{**record, "rolled_back": rollback_error is None}, finished_at=now(),
                        duration_seconds=clock.total)
    key = ledger.record(rec)

    rb_result: AnalysisResult | None = None
    if rolled is not None:
        rb_result = _judge(rolled, plan, analyse, clock, "rollback_analysis")
    rb_verdict = rb_result.verdict if rb_result else "failed"
    rb_reason = rb_result.reason if rb_result else f"the rollback did not complete: {rollback_error}"
    rb_started = now()
    rb_record = ReleaseRecord(
        environment=plan.environment, version=previous.version, image_ref=previous.image_ref, kind="rollback",
        strategy=plan.strategy, verdict=rb_verdict, reason=f"automatic rollback after {plan.version} {why}; "
        f"{rb_reason}", started_at=rb_started, finished_at=now(), operator=plan.operator,
        previous_version=plan.version, previous_image_ref=plan.image_ref,
        measurements=tuple(rb_result.report()) if rb_result else (),
        helm_revision=rolled.revision if rolled else None)
    rb_key = ledger.record(rb_record)
    common.update(rollback_record_key=rb_key, rollback_analysis=rb_result)
    if rb_verdict == "passed":
        alert = (f"release of {plan.version} to {plan.environment} {why}; rolled back by itself to "
                 f"{previous.version}, which passed its analysis again")
        log(alert)
        return Outcome(ROLLED_BACK, reason=why, record=rec, record_key=key, alert=alert, seconds=clock.total,
                       steps=clock.steps, **common)
    alert = (f"CRITICAL: release of {plan.version} to {plan.environment} {why}; the rollback to {previous.version} "
             f"did not pass either ({rb_verdict}: {rb_reason}). Stopped: nothing more is tried; look at "
             f"{plan.environment} now")
    log(alert)
    return Outcome(ROLLBACK_FAILED, reason=why, record=rec, record_key=key, alert=alert, critical=True,
                   seconds=clock.total, steps=clock.steps, **common)


@dataclass(frozen=True)
class RollbackPlan(_Deployment):
    """A rollback someone asked for: to ``version`` (``image_ref``), away from what runs now."""

    from_version: str | None = None
    from_image_ref: str | None = None


def run_rollback(plan: RollbackPlan, target: ReleaseTarget, ledger: ReleaseLedger, analyse: Analyse, *,
                 runtime: AppRuntime | None = None, log: Log = print,
                 now: Callable[[], datetime] = _utc_now) -> Outcome:
    """Put ``plan.version`` back, analyse it and record a ``rollback`` (which withdraws the
    verification of the version rolled away from). Never held by a promotion window."""
    clock, started = _Clock(), now()
    began = time.monotonic()
    recovered, _ = _repair(target, ledger, plan.environment, runtime, log)
    clock.step("recover", began)
    began = time.monotonic()
    rolled = target.rollback(RollbackTarget(image_ref=plan.image_ref), log, runtime=runtime)
    clock.step("rollback", began)
    result = _judge(rolled, plan, analyse, clock, "analysis")
    rec = ReleaseRecord(environment=plan.environment, version=plan.version, image_ref=plan.image_ref,
                        kind="rollback", strategy=plan.strategy, verdict=result.verdict,
                        reason=f"rollback by {plan.operator}: {result.reason}", started_at=started, finished_at=now(),
                        operator=plan.operator, previous_version=plan.from_version,
                        previous_image_ref=plan.from_image_ref, measurements=tuple(result.report()),
                        helm_revision=rolled.revision, duration_seconds=clock.total)
    key = ledger.record(rec)
    status = VERIFIED if result.passed else ROLLBACK_FAILED
    alert = None
    if not result.passed:
        alert = (f"CRITICAL: rollback of {plan.environment} to {plan.version} did not pass its analysis "
                 f"({result.verdict}: {result.reason}); look at {plan.environment} now")
        log(alert)
    else:
        log(f"{plan.environment} runs {plan.version} again and it passed its analysis")
    return Outcome(status, plan.environment, plan.version, plan.image_ref, result.reason, rec, key, analysis=result,
                   deploy=rolled, previous_version=plan.from_version, previous_image_ref=plan.from_image_ref,
                   recovered=recovered, alert=alert, critical=not result.passed, seconds=clock.total,
                   steps=clock.steps)
