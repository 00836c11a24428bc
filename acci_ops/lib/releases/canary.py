"""Canary releases on Helm: a second Deployment runs the new digest and gets a growing share of the
traffic (default 10 %, 50 %, 100 %), each share judged by the release analysis before the next.

Why it is built this way:

- It is a ``HelmRelease`` (same runner, argv builders, render check, stuck-release recovery, history
  reads), because a canary is the same release changing its values: every step is one ``helm upgrade``
  of the chart with ``canary.enabled``/``canary.weight``/``canary.image.*`` set, so each step is a
  revision that ``helm history`` shows and ``helm rollback`` can return to.
- While the canary runs, the stable Deployment keeps the digest the deployed revision recorded (read
  from its values, never guessed from a tag); each upgrade names it again, because helm rebuilds the
  values from the chart defaults and the arguments on every upgrade.
- The analysis is injected (``analyse(step_weight) -> verdict``): the caller runs
  ``analysis.run_analysis`` against the app, so this module stays plain Python and tests can drive it
  with real analyses or scripted verdicts. Anything but ``passed`` (failed, inconclusive, an exception)
  stops the release: a canary is never promoted without evidence.
- Stopping sets the weight to 0 and removes the canary in one ``helm upgrade`` *without*
  ``--rollback-on-failure``: a rollback of that upgrade would restore the revision that was still
  sending traffic to the canary, the one state the abort exists to leave.
- Promotion is two upgrades: the stable Deployment moves to the canary's digest while the canary still
  takes 100 % (so no request reaches a half-rolled stable Deployment on the old version), then the
  canary is removed. A promotion that fails is aborted like a failed step: the old version serves.
- The chart is rendered first (``helm template``, no cluster) with the first step's values: both
  digests must be rendered and the traffic objects must send exactly that share to the canary, else a
  chart without canary support would make the release believe it analysed a canary nobody reached.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from acci_ops.lib.core.commands import HELM_ENV, CommandFailed, CommandTimeout
from acci_ops.lib.core.errors import AcciOpsError, ConfigError
from acci_ops.lib.platform.backends import AppRuntime
from acci_ops.lib.releases.deployers import (
    MAX_STDOUT,
    DeployFailed,
    DeployResult,
    ImageRef,
    Log,
    parse_image_ref,
    private_dir,
    shown,
    write_private_yaml,
)
from acci_ops.lib.releases.helm_release import READ_TIMEOUT, HelmRelease, rendered_images

DEFAULT_STEPS = (10, 50, 100)
CANARY_ANNOTATION = "nginx.ingress.kubernetes.io/canary"
WEIGHT_ANNOTATION = "nginx.ingress.kubernetes.io/canary-weight"
COMPONENT_LABEL = "app.kubernetes.io/component"  # the chart labels every canary object component=canary
CANARY_OFF = ("--set", "canary.enabled=false", "--set", "canary.weight=0")


class StepVerdict(Protocol):
    """What ``analyse`` returns: ``analysis.AnalysisResult`` fits (passed, failed or inconclusive)."""

    verdict: str
    reason: str


Analyse = Callable[[int], StepVerdict]


@dataclass(frozen=True)
class CanaryStep:
    """One step as it ended: the weight, the helm revision that set it, the verdict and why."""

    weight: int
    revision: int
    verdict: str
    reason: str


@dataclass(frozen=True)
class CanaryResult(DeployResult):
    """A promoted canary: ``revision`` is the final one (canary removed), ``steps`` each analysed step."""

    steps: tuple[CanaryStep, ...] = ()


def check_steps(steps: object) -> tuple[int, ...]:
    """The traffic percentages as a tuple, or a ConfigError naming the first bad value: whole numbers
    in 1..100, strictly increasing, ending at 100 (the canary takes everything before it is promoted)."""
    if isinstance(steps, str | bytes) or not isinstance(steps, Sequence):
        raise ConfigError(f"canary steps must be a list of whole percentages ending at 100 (e.g. 10, 50, 100), "
                          f"not {type(steps).__name__} {shown(steps)}")
    if not steps:
        raise ConfigError("canary steps are empty: give the traffic percentages to step through, ending at 100 "
                          "(e.g. 10, 50, 100)")
    checked: list[int] = []
    for position, step in enumerate(steps, 1):
        if isinstance(step, bool) or not isinstance(step, int):
            raise ConfigError(f"canary step {position} is {shown(step)} ({type(step).__name__}), not a whole "
                              "percentage such as 10, 50, 100")
        if not 1 <= step <= 100:
            raise ConfigError(f"canary step {position} is {step}%, outside 1..100: each step sends that share of "
                              "the traffic to the canary (0 would analyse a canary that gets no requests)")
        if checked and step <= checked[-1]:
            raise ConfigError(f"canary steps must increase: {step} follows {checked[-1]} in "
                              f"{', '.join(map(str, steps))}")
        checked.append(step)
    if checked[-1] != 100:
        raise ConfigError(f"canary steps {', '.join(map(str, checked))} end at {checked[-1]}%, not 100: the canary "
                          "must take all the traffic and pass its analysis before it is promoted")
    return tuple(checked)


def canary_weights(manifest: str) -> list[tuple[str, int]]:
    """The share of traffic each rendered traffic object gives the canary, as (object, percent): an
    HTTPRoute's backendRefs weights towards the canary Services, an ingress-nginx canary Ingress's
    ``canary-weight``. Empty when the chart rendered no traffic split."""
    try:
        docs = [d for d in yaml.safe_load_all(manifest) if isinstance(d, dict)]
    except yaml.YAMLError as exc:
        raise AcciOpsError(f"helm template printed YAML that does not parse ({type(exc).__name__})") from None

    def meta(doc: dict) -> dict:
        return doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}

    canaries = {meta(d).get("name") for d in docs if d.get("kind") == "Service"
                and isinstance(meta(d).get("labels"), dict) and meta(d)["labels"].get(COMPONENT_LABEL) == "canary"}
    found: list[tuple[str, int]] = []
    for doc in docs:
        name = meta(doc).get("name")
        if doc.get("kind") == "HTTPRoute":
            rules = (doc.get("spec") or {}).get("rules") if isinstance(doc.get("spec"), dict) else None
            for index, rule in enumerate(rules if isinstance(rules, list) else []):
                refs = [r for r in (rule.get("backendRefs") or []) if isinstance(r, dict)] \
                    if isinstance(rule, dict) else []
                weights = [(r.get("name"), r.get("weight", 1)) for r in refs]
                if not any(ref in canaries for ref, _ in weights):
                    continue
                if not all(isinstance(w, int) and not isinstance(w, bool) for _, w in weights):
                    raise AcciOpsError(f"HTTPRoute {name} rule {index} has a backendRef weight that is not a whole "
                                       "number")
                total = sum(w for _, w in weights)
                share = sum(w for ref, w in weights if ref in canaries)
                found.append((f"HTTPRoute {name} rule {index}", round(100 * share / total) if total else 0))
        elif doc.get("kind") == "Ingress":
            annotations = meta(doc).get("annotations")
            if isinstance(annotations, dict) and annotations.get(CANARY_ANNOTATION) == "true":
                raw = annotations.get(WEIGHT_ANNOTATION, "0")
                if not isinstance(raw, str) or not raw.isdigit():
                    raise AcciOpsError(f"Ingress {name} has {WEIGHT_ANNOTATION} {shown(raw)}, not a whole percentage")
                found.append((f"Ingress {name}", int(raw)))
    return found


class _Stopped(Exception):
    """A step's helm upgrade did not end deployed; the message is one line for DeployFailed."""


@dataclass
class CanaryRelease(HelmRelease):
    """A Helm release deployed as a canary through the chart's ``canary.*`` values (see
    deploy/helm/acci-framework/values.yaml): ``steps`` are the traffic percentages, ``analyse`` judges
    each (or pass it to ``deploy``). The operator's values files choose the traffic layer
    (``canary.traffic``: gateway or ingress-nginx) and, for gateway, ``canary.gateway.parentRefs``."""

    steps: Sequence[int] = DEFAULT_STEPS
    analyse: Analyse | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.steps = check_steps(self.steps)

    def describe(self) -> str:
        return f"helm release {self.release} in namespace {self.namespace} (canary {', '.join(map(str, self.steps))}%)"

    # --- argv ---------------------------------------------------------------------------------

    @staticmethod
    def _canary_args(canary: ImageRef, weight: int) -> list[str]:
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
            raise ConfigError(f"canary weight must be a whole percentage 0..100, got {shown(weight)}")
        return ["--set-string", f"canary.image.repository={canary.repository}",
                "--set-string", f"canary.image.digest={canary.digest}",
                "--set", "canary.enabled=true", "--set", f"canary.weight={weight}"]

    def canary_template_argv(self, stable: ImageRef, canary: ImageRef, weight: int,
                             secret_values: str | None) -> list[str]:
        return self.template_argv(stable, secret_values) + self._canary_args(canary, weight)

    def step_argv(self, stable: ImageRef, canary: ImageRef, weight: int, secret_values: str | None) -> list[str]:
        """Stable keeps its digest; the canary runs ``canary`` and gets ``weight`` percent."""
        return self.upgrade_argv(stable, secret_values) + self._canary_args(canary, weight)

    def promote_argv(self, canary: ImageRef, secret_values: str | None) -> list[str]:
        """Stable moves to the canary's digest while the canary still takes all the traffic."""
        return self.upgrade_argv(canary, secret_values) + self._canary_args(canary, 100)

    def finish_argv(self, image: ImageRef, secret_values: str | None) -> list[str]:
        """The canary removed, all traffic on stable (which runs ``image``)."""
        return self.upgrade_argv(image, secret_values) + list(CANARY_OFF)

    def abort_argv(self, stable: ImageRef, secret_values: str | None) -> list[str]:
        """Weight 0 and the canary removed, with ``--wait`` but never ``--rollback-on-failure`` (whose
        rollback would bring the canary's traffic share back)."""
        argv = self.upgrade_argv(stable, secret_values)
        argv.remove("--rollback-on-failure")
        return argv + list(CANARY_OFF)

    # --- steps --------------------------------------------------------------------------------

    def check_canary_render(self, stable: ImageRef, canary: ImageRef, weight: int, secret_values: str | None,
                            log: Log) -> None:
        """``helm template`` with a step's values (locally, no cluster): both digests are rendered and
        every traffic object sends exactly ``weight`` percent to the canary."""
        result = self.runner(self.canary_template_argv(stable, canary, weight, secret_values), timeout=READ_TIMEOUT,
                             on_line=log, allow_env=HELM_ENV, capture_stdout=True, max_stdout_bytes=MAX_STDOUT,
                             check=False)
        if result.returncode != 0:
            said = next((line for line in reversed(result.tail) if line.startswith("Error:")), result.last_line)
            raise ConfigError(f"chart {self.chart} does not render a canary with these values: {said or 'no output'}")
        manifest = result.stdout.decode(errors="replace")
        images = rendered_images(manifest)
        for image, role in ((stable, "stable"), (canary, "canary")):
            if str(image) not in images:
                found = ", ".join(sorted(set(images))) or "no Deployment image"
                raise ConfigError(f"chart {self.chart} renders {shown(found)} with canary.enabled=true, not the "
                                  f"{role} image {image}: it does not support canary.image.* (values.yaml canary:)")
        weights = canary_weights(manifest)
        if not weights:
            raise ConfigError(f"chart {self.chart} renders no traffic split for the canary (no HTTPRoute backendRef to "
                              "a canary Service, no ingress-nginx canary Ingress): set canary.traffic and, for "
                              "gateway, canary.gateway.parentRefs in the values files")
        wrong = [f"{what} gives it {share}%" for what, share in weights if share != weight]
        if wrong:
            raise ConfigError(f"chart {self.chart} does not send {weight}% to the canary: {'; '.join(wrong)}")

    def _upgrade(self, argv: list[str], what: str, log: Log) -> int:
        try:
            result = self.runner(argv, timeout=self.timeout_seconds + 60, on_line=log, allow_env=HELM_ENV,
                                 capture_stdout=True, max_stdout_bytes=MAX_STDOUT)
            return self._upgraded_revision(result.stdout)
        except CommandTimeout:
            raise _Stopped(f"{what} did not finish within {self.timeout_seconds + 60} s and was killed") from None
        except (CommandFailed, AcciOpsError) as exc:
            raise _Stopped(f"{what} failed: {exc}") from None

    def _abort(self, stable: ImageRef, secret_values: str | None, log: Log) -> int:
        return self._upgrade(self.abort_argv(stable, secret_values), f"helm upgrade of release {self.release} "
                             "setting the canary weight to 0", log)

    def _stop(self, stable: ImageRef, canary: ImageRef, secret_values: str | None, log: Log, why: str,
              started: float, analysis: Any = None) -> DeployFailed:
        """Traffic back to stable and the canary removed; the DeployFailed to raise says what happened."""
        log(f"canary: {why}; setting the weight to 0 and removing the canary")
        try:
            revision = self._abort(stable, secret_values, log)
        except _Stopped as exc:
            return DeployFailed(f"{why}; putting all traffic back on stable ALSO failed ({exc}): the canary {canary} "
                                f"may still get traffic; run the deploy again or `helm upgrade {self.release} "
                                f"-n {self.namespace} --reuse-values --set canary.enabled=false`",
                                previous_image_ref=str(stable), rolled_back=False, analysis=analysis)
        seconds = time.monotonic() - started
        log(f"canary: release {self.release} is at revision {revision}: all traffic on stable {stable}, canary "
            f"removed ({seconds:.1f} s)")
        return DeployFailed(f"{why}; weight set back to 0 and the canary removed (revision {revision}): stable "
                            f"{stable} serves all traffic", previous_image_ref=str(stable), rolled_back=True,
                            analysis=analysis)

    def _stable(self, log: Log) -> tuple[ImageRef, str | None]:
        """The digest the deployed revision runs (after recovering a stuck release), and the recovery line."""
        history = self.history(log)
        recovered = self._recover(history, log)
        if recovered:
            history = self.history(log)
        deployed = self._deployed(history)
        stable = self.revision_image(deployed.number, log) if deployed else None
        if stable is None:
            state = f"revision {deployed.number} runs an image not pinned by digest" if deployed else \
                "it is not installed"
            raise ConfigError(f"release {self.release} cannot take a canary: {state}, so there is no stable version "
                              "to compare with and fall back to; deploy this version with the rolling strategy")
        return parse_image_ref(stable), recovered

    def _secret_values(self, runtime: AppRuntime | None, private: Path) -> str | None:
        if runtime is None:
            return None
        env = runtime.env()
        secrets = {"secrets": {"databaseUrl": env["DATABASE_URL"], "redisUrl": env["REDIS_URL"]}}
        return str(write_private_yaml(private / "secret-values.yaml", secrets))

    def deploy(self, image_ref: str, runtime: AppRuntime | None, log: Log, *,
               analyse: Analyse | None = None) -> CanaryResult:
        """Step ``image_ref`` through ``steps``, analysing each; promote it at 100 %. Any step that does not
        pass (or a helm upgrade that fails) puts all traffic back on stable and raises DeployFailed."""
        canary = parse_image_ref(image_ref)
        judge = analyse or self.analyse
        if judge is None:
            raise ConfigError("a canary release needs analyse(step_weight) -> verdict, the analysis run at each step")
        started = time.monotonic()
        stable, recovered = self._stable(log)
        steps: list[CanaryStep] = []
        verdict: Any = None
        with private_dir(prefix="acci-helm-") as private:
            secret_values = self._secret_values(runtime, private)
            self.check_canary_render(stable, canary, self.steps[0], secret_values, log)
            log(f"canary: {canary} to release {self.release} in namespace {self.namespace} in steps "
                f"{', '.join(map(str, self.steps))}% (stable {stable}, timeout {self.timeout_seconds} s per step)")
            for number, weight in enumerate(self.steps, 1):
                where = f"canary step {number} of {len(self.steps)} ({weight}%) of {canary}"
                try:
                    revision = self._upgrade(self.step_argv(stable, canary, weight, secret_values),
                                             f"helm upgrade of release {self.release} to {where}", log)
                except _Stopped as exc:
                    raise self._stop(stable, canary, secret_values, log, str(exc), started) from None
                log(f"canary: {weight}% of the traffic on {canary} (revision {revision}); analysing")
                try:
                    verdict = judge(weight)
                    outcome, reason = _read_verdict(verdict)
                except Exception as exc:  # an analysis that cannot run is no evidence: stop like a failed one
                    verdict, outcome, reason = None, "error", f"the analysis raised {type(exc).__name__}: {exc}"
                steps.append(CanaryStep(weight, revision, outcome, reason))
                if outcome != "passed":
                    raise self._stop(stable, canary, secret_values, log,
                                     f"{where} did not pass its analysis ({outcome}): {reason}", started, verdict)
                log(f"canary: step {number} passed: {reason}")
            try:
                self._upgrade(self.promote_argv(canary, secret_values),
                              f"helm upgrade of release {self.release} promoting {canary} to stable", log)
            except _Stopped as exc:
                raise self._stop(stable, canary, secret_values, log, str(exc), started) from None
            try:
                revision = self._upgrade(self.finish_argv(canary, secret_values),
                                         f"helm upgrade of release {self.release} removing the promoted canary", log)
            except _Stopped as exc:
                raise DeployFailed(f"{canary} was promoted to stable, but {exc}: the canary Deployment (same image) "
                                   "may still be running; the next deploy removes it", previous_image_ref=str(stable),
                                   rolled_back=False) from None
        seconds = round(time.monotonic() - started, 3)
        log(f"canary: release {self.release} is at revision {revision} running {canary} on stable, canary removed "
            f"({seconds:.1f} s)")
        # The 100 % step's analysis judged this digest taking all the traffic: the release's verdict.
        return CanaryResult(self.url, revision, str(stable), seconds, str(canary), recovered, analysis=verdict,
                            steps=tuple(steps))

    def abort(self, log: Log, *, runtime: AppRuntime | None = None) -> int:
        """Remove a canary an interrupted run left behind: weight 0, canary off, stable kept on the
        digest the deployed revision records. The new revision's number."""
        stable, _ = self._stable(log)
        with private_dir(prefix="acci-helm-") as private:
            try:
                revision = self._abort(stable, self._secret_values(runtime, private), log)
            except _Stopped as exc:
                raise AcciOpsError(str(exc)) from None
        log(f"canary: release {self.release} is at revision {revision}: all traffic on stable {stable}")
        return revision


def _read_verdict(verdict: Any) -> tuple[str, str]:
    """(verdict, reason) of what ``analyse`` returned; a malformed answer is an error, never a pass."""
    outcome, reason = getattr(verdict, "verdict", None), getattr(verdict, "reason", None)
    if not isinstance(outcome, str):
        return "error", f"analyse returned {type(verdict).__name__}, not a verdict with .verdict and .reason"
    return outcome, reason if isinstance(reason, str) else "no reason given"


__all__ = ["DEFAULT_STEPS", "Analyse", "CanaryRelease", "CanaryResult", "CanaryStep", "StepVerdict",
           "canary_weights", "check_steps"]
