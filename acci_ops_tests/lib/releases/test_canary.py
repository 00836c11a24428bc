"""CanaryRelease: step a digest through weighted traffic (10, 50, 100 %), analyse each step, promote at
100 %, and put all traffic back on stable when a step does not pass.

No Kubernetes API server can be had on this machine, so nothing here moves real traffic. What is real:

- ``helm template`` of the shipped chart by the real helm 4.1.4 (the render check every deploy runs
  first), in both traffic modes, while a recording runner stands in for the cluster-side commands
  (history, get values, upgrade), records each exact argv and plays back helm's JSON answers;
- the analysis: the ``analyse`` callback runs ``analysis.run_analysis`` against Debian's caddy (a
  healthy and a sick variant, fixtures/release_servers.py), so a step passes or fails on real probes;
- a whole canary through the real helm with its in-memory release store (HELM_DRIVER=memory) and a
  stub answering API discovery only: helm accepts every step, promotion and abort argv and renders the
  chart with the HTTPRoute. Each helm process reloads the store, so the revision does not advance.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import threading
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from acci_ops.lib.core.commands import HELM_ENV, CommandFailed, CommandResult, run_command
from acci_ops.lib.core.errors import AcciOpsError, ConfigError
from acci_ops.lib.platform.backends import AppRuntime, HelmPlatform
from acci_ops.lib.postgres.urls import parse_database_url
from acci_ops.lib.releases.analysis import AnalysisResult, AnalysisSpec, MetricSpec, Target, Verdict, run_analysis
from acci_ops.lib.releases.canary import CanaryRelease, CanaryStep, canary_weights, check_steps
from acci_ops.lib.releases.deployers import DeployFailed, parse_image_ref
from acci_ops_tests.fixtures.deploy import CHART
from acci_ops_tests.fixtures.kube_stub import Discovery

REPO = "registry.example:5000/acci/acci-framework"
A = f"{REPO}@sha256:{'a' * 64}"  # stable
B = f"{REPO}@sha256:{'b' * 64}"  # canary
SECRET = "db-Pa55-canary-secret"
RUNTIME = AppRuntime(parse_database_url(f"postgresql://acci:{SECRET}@db.internal:5432/acci"),
                     "redis://:cache-secret-9@cache:6379/0")
LONG_AGO = "2026-01-01T10:00:00.123456789Z"
HISTORY = [{"revision": 5, "status": "superseded", "updated": LONG_AGO},
           {"revision": 6, "status": "deployed", "updated": LONG_AGO}]
BASE = ["--namespace", "acci", "--kube-context", "prod"]
HEALTH_ONLY = AnalysisSpec(interval_seconds=0.05, count=2, metrics=(MetricSpec("health", "health"),))


def values_of(image_ref: str | None) -> dict:
    data: dict = {"secrets": {"databaseUrl": f"postgresql://acci:{SECRET}@db/acci", "redisUrl": "redis://cache"}}
    if image_ref:
        ref = parse_image_ref(image_ref)
        data["image"] = {"repository": ref.repository, "digest": ref.digest}
    return data


def passed(reason: str = "all 1 metrics passed: health 2/2 passed") -> Verdict:
    return Verdict("passed", reason, ())


class Recorder:
    """Stands in for run_command. ``helm template`` runs for real (the real helm renders the real chart);
    ``history`` and ``get values`` answer from ``history``/``revision_values`` (None: release not found);
    each ``upgrade`` takes the next of ``upgrades``: a revision number (deployed) or an exit code to fail
    with (negative). ``events`` holds the helm commands and the analyses in the order they happened."""

    def __init__(self, history=HISTORY, revision_values=None, upgrades=(7, 8, 9, 10, 11)) -> None:
        self.history = history
        self.revision_values = revision_values if revision_values is not None else {6: values_of(A)}
        self.upgrades = list(upgrades)
        self.calls: list[dict] = []
        self.events: list[str] = []

    def __call__(self, argv, timeout=None, on_line=None, check=True, capture_stdout=False, allow_env=(),
                 **kwargs) -> CommandResult:
        files = {}
        for i, arg in enumerate(argv):
            if arg == "--values" and "secret-values" in argv[i + 1]:
                path = Path(argv[i + 1])
                files[argv[i + 1]] = (path.read_text(), stat.S_IMODE(path.stat().st_mode))
        self.calls.append({"argv": list(argv), "timeout": timeout, "check": check, "capture_stdout": capture_stdout,
                           "allow_env": tuple(allow_env), "files": files})
        command = argv[1]
        self.events.append(command)
        if command == "template":
            return run_command(argv, timeout=timeout, on_line=on_line, check=check, capture_stdout=capture_stdout,
                               allow_env=allow_env, **kwargs)
        code, out, tail = 0, b"", ()
        if command == "history":
            if self.history is None:
                code, tail = 1, ("Error: release: not found",)
            else:
                out = json.dumps(self.history).encode()
        elif command == "get":
            out = json.dumps(self.revision_values[int(argv[argv.index("--revision") + 1])]).encode()
        elif command == "upgrade":
            answer = self.upgrades.pop(0)
            if answer < 0:
                code, tail = -answer, ("Error: UPGRADE FAILED: context deadline exceeded",)
            else:
                out = json.dumps({"version": answer, "info": {"status": "deployed"}}).encode()
        result = CommandResult(tuple(argv), code, 0.01, tail, out if capture_stdout else b"")
        if check and code != 0:
            raise CommandFailed(result)
        return result

    def upgrades_argv(self) -> list[list[str]]:
        return [c["argv"] for c in self.calls if c["argv"][1] == "upgrade"]


@pytest.fixture
def ops_values(tmp_path) -> Path:
    """The operator's values file: the app's Secret (managed outside the chart) and the Gateway the app's
    HTTPRoute attaches to (gateway mode)."""
    path = tmp_path / "prod-values.yaml"
    path.write_text("existingSecret: acci-secrets\ncanary:\n  gateway:\n    parentRefs:\n      - name: acci-gateway\n"
                    "        namespace: gateway-system\n")
    return path


def release(helm: Path, runner, ops_values: Path, **kwargs) -> CanaryRelease:
    fields = dict(release="acci-framework", namespace="acci", chart=str(CHART), app_url="https://{namespace}.test",
                  values_files=[str(ops_values)], helm=str(helm), kube_context="prod", timeout_seconds=300,
                  runner=runner)
    return CanaryRelease(**{**fields, **kwargs})


def upgrade(helm: Path, ops_values: Path, secret: str, image: str, *extra: str, rollback: bool = True) -> list[str]:
    ref = parse_image_ref(image)
    return [str(helm), "upgrade", "--install", "acci-framework", str(CHART), *BASE, "--values", str(ops_values),
            "--values", secret, "--set-string", f"image.repository={ref.repository}",
            "--set-string", f"image.digest={ref.digest}", *(["--rollback-on-failure"] if rollback else []),
            "--wait", "--timeout", "300s", "--history-max", "10", "--output", "json", *extra]


def on(weight: int, image: str = B) -> list[str]:
    ref = parse_image_ref(image)
    return ["--set-string", f"canary.image.repository={ref.repository}", "--set-string",
            f"canary.image.digest={ref.digest}", "--set", "canary.enabled=true", "--set", f"canary.weight={weight}"]


OFF = ["--set", "canary.enabled=false", "--set", "canary.weight=0"]


def test_steps_pass_then_promote_with_exact_argv(helm, ops_values):
    """Each step is one helm upgrade keeping stable on its recorded digest and giving the canary
    10, 50, then 100 %, analysed right after it; then stable moves to the canary's digest (canary still at
    100 %) and the canary is removed. The real chart renders the first step first; secrets reach helm only
    in a 0600 values file that is gone afterwards."""
    helm_runner = Recorder()
    seen: list[int] = []

    def analyse(weight: int) -> Verdict:
        helm_runner.events.append(f"analyse {weight}")
        seen.append(weight)
        return passed()

    lines: list[str] = []
    result = release(helm, helm_runner, ops_values).deploy(B, RUNTIME, lines.append, analyse=analyse)
    assert helm_runner.events == ["history", "get", "template", "upgrade", "analyse 10", "upgrade", "analyse 50",
                                  "upgrade", "analyse 100", "upgrade", "upgrade"]
    assert seen == [10, 50, 100]
    secret = next(iter(helm_runner.calls[3]["files"]))
    template = helm_runner.calls[2]["argv"]
    assert template == [str(helm), "template", "acci-framework", str(CHART), "--namespace", "acci",
                        "--values", str(ops_values), "--values", secret,
                        "--set-string", f"image.repository={REPO}", "--set-string", f"image.digest=sha256:{'a' * 64}",
                        *on(10)]
    assert helm_runner.upgrades_argv() == [
        upgrade(helm, ops_values, secret, A, *on(10)),
        upgrade(helm, ops_values, secret, A, *on(50)),
        upgrade(helm, ops_values, secret, A, *on(100)),
        upgrade(helm, ops_values, secret, B, *on(100)),  # promote: stable on B, canary still takes everything
        upgrade(helm, ops_values, secret, B, *OFF),  # finish: canary removed
    ]
    assert (result.app_url, result.revision, result.previous_image_ref, result.image_ref) == (
        "https://acci.test", 11, A, B)
    assert result.steps == (CanaryStep(10, 7, "passed", passed().reason), CanaryStep(50, 8, "passed", passed().reason),
                            CanaryStep(100, 9, "passed", passed().reason))
    content, mode = helm_runner.calls[3]["files"][secret]
    assert mode == 0o600 and yaml.safe_load(content)["secrets"]["databaseUrl"] == RUNTIME.database.to_url()
    assert not Path(secret).exists()
    assert all(SECRET not in " ".join(c["argv"]) for c in helm_runner.calls)
    assert not any(SECRET in line for line in lines)
    assert all(c["allow_env"] == HELM_ENV and c["capture_stdout"] for c in helm_runner.calls)
    assert [c["timeout"] for c in helm_runner.calls] == [120, 120, 120] + [360] * 5


def test_a_failed_step_sets_weight_0_and_removes_the_canary(helm, ops_values):
    """10 % passes, 50 % fails: one more upgrade puts stable's digest back with the canary off and weight 0,
    without --rollback-on-failure (its rollback would restore the 50 % revision), and DeployFailed names
    the step and the verdict's reason in one line. Nothing is promoted."""
    helm_runner = Recorder(upgrades=(7, 8, 9))
    failed = Verdict("failed", "error_ratio failed 2 of 6 measurements (limit 0): 0.134 >= 0.01", ())
    verdicts = iter([passed(), failed])
    with pytest.raises(DeployFailed) as caught:
        release(helm, helm_runner, ops_values).deploy(B, RUNTIME, print, analyse=lambda weight: next(verdicts))
    secret = next(iter(helm_runner.calls[3]["files"]))
    assert helm_runner.upgrades_argv() == [upgrade(helm, ops_values, secret, A, *on(10)),
                                           upgrade(helm, ops_values, secret, A, *on(50)),
                                           upgrade(helm, ops_values, secret, A, *OFF, rollback=False)]
    assert str(caught.value) == (
        f"canary step 2 of 3 (50%) of {B} did not pass its analysis (failed): error_ratio failed 2 of 6 "
        "measurements (limit 0): 0.134 >= 0.01; weight set back to 0 and the canary removed (revision 9): "
        f"stable {A} serves all traffic")
    assert (caught.value.previous_image_ref, caught.value.rolled_back) == (A, True)


@pytest.mark.parametrize(("analyse", "said"), [
    (lambda weight: Verdict("inconclusive", "error_ratio: no requests between scrapes (no traffic)", ()),
     "did not pass its analysis (inconclusive): error_ratio: no requests between scrapes (no traffic)"),
    (lambda weight: 1 / 0,
     "did not pass its analysis (error): the analysis raised ZeroDivisionError: division by zero"),
    (lambda weight: "passed", "did not pass its analysis (error): analyse returned str, not a verdict with .verdict"),
], ids=["inconclusive", "raises", "not-a-verdict"])
def test_no_evidence_is_never_a_pass(helm, ops_values, analyse, said):
    """An inconclusive analysis, one that raises and an answer that is not a verdict all stop at the first
    step and put the traffic back on stable: a canary is never promoted without evidence."""
    helm_runner = Recorder(upgrades=(7, 8))
    with pytest.raises(DeployFailed, match=rf"^canary step 1 of 3 \(10%\) of .* {re.escape(said)}") as caught:
        release(helm, helm_runner, ops_values).deploy(B, None, print, analyse=analyse)
    assert [argv[-4:] for argv in helm_runner.upgrades_argv()] == [on(10)[-4:], OFF]
    assert caught.value.rolled_back is True


def test_a_failed_step_upgrade_is_aborted_too(helm, ops_values):
    """A step whose helm upgrade fails (helm rolls that one upgrade back to the 10 % revision) is not
    analysed; the abort still takes the canary's traffic to 0."""
    helm_runner = Recorder(upgrades=(7, -1, 9))
    analysed: list[int] = []
    with pytest.raises(DeployFailed, match=r"^helm upgrade of release acci-framework to canary step 2 of 3 \(50%\) "
                                           r"of .* failed: helm failed \(exit code 1\): Error: UPGRADE FAILED: context "
                                           r"deadline exceeded; weight set back to 0 and the canary removed "
                                           r"\(revision 9\)"):
        release(helm, helm_runner, ops_values).deploy(B, None, print,
                                                      analyse=lambda w: analysed.append(w) or passed())
    assert analysed == [10]
    abort = helm_runner.upgrades_argv()[-1]
    assert abort[-4:] == OFF and "--rollback-on-failure" not in abort


def test_an_abort_that_fails_says_the_canary_may_still_get_traffic(helm, ops_values):
    helm_runner = Recorder(upgrades=(7, -1))
    with pytest.raises(DeployFailed, match=r"did not pass its analysis \(failed\): health failed; putting all "
                                           r"traffic back on stable ALSO failed \(helm upgrade of release "
                                           r"acci-framework setting the canary weight to 0 failed: .*\): the canary "
                                           r".* may still get traffic") as caught:
        release(helm, helm_runner, ops_values).deploy(B, None, print,
                                                      analyse=lambda w: Verdict("failed", "health failed", ()))
    assert caught.value.rolled_back is False and "\n" not in str(caught.value)


def test_a_failed_promotion_is_aborted_and_a_failed_cleanup_is_reported(helm, ops_values):
    """Promotion failing (stable cannot roll to the new digest) leaves stable on the old digest with all
    traffic; the canary removal failing after a promotion says the new version is stable already."""
    helm_runner = Recorder(upgrades=(7, 8, 9, -1, 11))
    with pytest.raises(DeployFailed, match=r"^helm upgrade of release acci-framework promoting .* to stable failed: "
                                           r".*; weight set back to 0 and the canary removed \(revision 11\)"):
        release(helm, helm_runner, ops_values).deploy(B, None, print, analyse=lambda w: passed())
    assert helm_runner.upgrades_argv()[-1][-4:] == OFF
    assert f"image.digest=sha256:{'a' * 64}" in helm_runner.upgrades_argv()[-1]
    cleanup = Recorder(upgrades=(7, 8, 9, 10, -1))
    with pytest.raises(DeployFailed, match=rf"^{B} was promoted to stable, but helm upgrade of release acci-framework "
                                           r"removing the promoted canary failed") as caught:
        release(helm, cleanup, ops_values).deploy(B, None, print, analyse=lambda w: passed())
    assert caught.value.rolled_back is False


def test_no_stable_version_means_no_canary(helm, ops_values):
    """Without a deployed revision pinned by digest there is nothing to compare with or fall back to:
    a ConfigError before anything is rendered or changed."""
    for runner, state in ((Recorder(history=None), "it is not installed"),
                          (Recorder(revision_values={6: values_of(None)}), "revision 6 runs an image not pinned")):
        with pytest.raises(ConfigError, match=rf"^release acci-framework cannot take a canary: {state}"):
            release(helm, runner, ops_values).deploy(B, None, print, analyse=lambda w: passed())
        assert "upgrade" not in runner.events and "template" not in runner.events


BAD_STEPS = [
    ((10, 10, 100), r"canary steps must increase: 10 follows 10 in 10, 10, 100"),
    ((50, 10, 100), r"canary steps must increase: 10 follows 50 in 50, 10, 100"),
    ((0, 50, 100), r"canary step 1 is 0%, outside 1..100: .*0 would analyse a canary that gets no requests"),
    ((10, 150), r"canary step 2 is 150%, outside 1..100"),
    ((-5, 100), r"canary step 1 is -5%, outside 1..100"),
    ((10, 50), r"canary steps 10, 50 end at 50%, not 100: the canary must take all the traffic"),
    ((10, 50.5, 100), r"canary step 2 is 50.5 \(float\), not a whole percentage"),
    (("10", "100"), r"canary step 1 is '10' \(str\), not a whole percentage"),
    ((True, 100), r"canary step 1 is True \(bool\), not a whole percentage"),
    ("10,50,100", r"canary steps must be a list of whole percentages ending at 100 .*not str '10,50,100'"),
    (100, r"canary steps must be a list .*not int 100"),
    ((), r"canary steps are empty"),
]


@pytest.mark.parametrize(("steps", "message"), BAD_STEPS, ids=[m[:36] for _, m in BAD_STEPS])
def test_bad_steps_get_a_clear_error(steps, message, ops_values, helm):
    """Weights that do not rise, 0, above 100, not ending at 100 or not whole numbers are refused when the
    release target is built, with one line naming the bad value."""
    with pytest.raises(ConfigError, match=f"^{message}") as caught:
        release(helm, Recorder(), ops_values, steps=steps)
    assert "\n" not in str(caught.value)
    assert check_steps([5, 25, 100]) == (5, 25, 100) and check_steps((100,)) == (100,)


def test_from_platform_takes_the_dr_platform_and_steps(ops_values):
    """The canary target is built from the same platform DR drives, with its own steps."""
    platform = HelmPlatform(release="acci-framework", namespace="acci-dr", chart=str(CHART), app_url="http://x",
                            values_files=(str(ops_values),), timeout_seconds=120, runner=Recorder())
    target = CanaryRelease.from_platform(platform, steps=[20, 100])
    assert isinstance(target, CanaryRelease) and target.steps == (20, 100)
    assert (target.namespace, target.timeout_seconds, target.runner) == ("acci-dr", 120, platform.runner)
    assert target.describe() == "helm release acci-framework in namespace acci-dr (canary 20, 100%)"
    with pytest.raises(ConfigError, match=r"canary steps 20 end at 20%"):
        CanaryRelease.from_platform(platform, steps=[20])


def test_bad_image_or_no_analysis_changes_nothing(helm, ops_values):
    runner = Recorder()
    target = release(helm, runner, ops_values)
    with pytest.raises(ConfigError, match=r"is not repo@sha256:<64 lowercase hex digits>: a release deploys an "
                                          r"image by digest"):
        target.deploy(f"{REPO}:1.4", None, print, analyse=lambda w: passed())
    with pytest.raises(ConfigError, match=r"^a canary release needs analyse\(step_weight\) -> verdict"):
        target.deploy(B, None, print)
    assert runner.calls == []
    with pytest.raises(ConfigError, match=r"canary weight must be a whole percentage 0..100, got 101"):
        target.step_argv(parse_image_ref(A), parse_image_ref(B), 101, None)


def test_render_check_in_both_modes_and_against_charts_that_cannot(helm, ops_values, tmp_path):
    """The render check (real helm template of the real chart) finds the canary's share on the HTTPRoute
    and, with canary.traffic ingress-nginx, on the canary Ingress; it refuses values without a Gateway
    (the chart's own message) and a chart without canary templates, before any upgrade."""
    stable, pilot = parse_image_ref(A), parse_image_ref(B)
    secrets = tmp_path / "secrets.yaml"
    secrets.write_text("secrets:\n  databaseUrl: postgres://acci:pw@db:5432/acci\n  redisUrl: redis://cache:6379/0\n")
    nginx = tmp_path / "nginx-values.yaml"
    nginx.write_text("canary:\n  traffic: ingress-nginx\n")
    for values, expected in ((ops_values, "HTTPRoute acci-framework rule 0"), (nginx, "Ingress acci-framework-canary")):
        target = release(helm, run_command, values)
        target.check_canary_render(stable, pilot, 50, str(secrets), print)
        manifest = run_command(target.canary_template_argv(stable, pilot, 50, str(secrets)), capture_stdout=True)
        assert canary_weights(manifest.stdout.decode()) == [(expected, 50)]
    no_gateway = release(helm, run_command, secrets)
    with pytest.raises(ConfigError, match=r"does not render a canary with these values: Error: .*canary.traffic "
                                          r"gateway needs canary.gateway.parentRefs"):
        no_gateway.check_canary_render(stable, pilot, 10, None, print)
    old = tmp_path / "old-chart"
    shutil.copytree(CHART, old)
    for name in ("canary-deployment.yaml", "canary-service.yaml", "httproute.yaml", "ingress-canary.yaml"):
        (old / "templates" / name).unlink()
    unsupported = release(helm, run_command, ops_values, chart=str(old))
    with pytest.raises(ConfigError, match=rf"renders .* with canary.enabled=true, not the canary image {B}: it does "
                                          r"not support canary.image"):
        unsupported.check_canary_render(stable, pilot, 10, str(secrets), print)


def test_abort_removes_a_canary_an_interrupted_run_left(helm, ops_values):
    """A run killed between steps leaves a deployed revision with the canary on; abort() keeps stable on
    the recorded digest and turns the canary off without --rollback-on-failure."""
    runner = Recorder(upgrades=(8,))
    assert release(helm, runner, ops_values).abort(print) == 8
    (argv,) = runner.upgrades_argv()
    assert argv[-4:] == OFF and f"image.digest=sha256:{'a' * 64}" in argv and "--rollback-on-failure" not in argv
    assert "--wait" in argv


def analysis_of(app) -> Callable[[int], AnalysisResult]:
    target = Target(app.url, metrics_url=app.metrics_url)
    return lambda weight: run_analysis(HEALTH_ONLY, target, log=lambda line: None)


def test_real_analysis_promotes_a_healthy_canary_and_stops_a_sick_one(helm, ops_values, caddy_apps):
    """With the real analysis (caddy's /health probed at each step): the healthy app passes every step and
    the canary is promoted; the sick one (/health 503) fails the first step and the traffic goes back."""
    good = Recorder()
    result = release(helm, good, ops_values).deploy(B, None, print, analyse=analysis_of(caddy_apps["healthy"]))
    assert [s.verdict for s in result.steps] == ["passed"] * 3 and result.image_ref == B
    assert result.steps[0].reason == "all 1 metrics passed: health 2/2 passed"
    bad = Recorder(upgrades=(7, 8))
    with pytest.raises(DeployFailed, match=r"^canary step 1 of 3 \(10%\) of .* did not pass its analysis \(failed\): "
                                           r"health failed 1 of 1 measurements \(limit 0\): 0 != 1 \(HTTP 503 database "
                                           r"down\) at \d\d:\d\d:\d\d \(stopped after 1 of 2 measurements\); weight "
                                           r"set back to 0"):
        release(helm, bad, ops_values).deploy(B, None, print, analyse=analysis_of(caddy_apps["sick"]))
    assert bad.upgrades_argv()[-1][-4:] == OFF


# --- the real helm, with its in-memory release store ---------------------------------------------

@pytest.fixture
def real_helm_store(tmp_path, monkeypatch):
    """Revision 6 deployed with the stable digest, loaded by the real helm (HELM_DRIVER=memory), and a
    kubeconfig pointing at the discovery stub."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Discovery)
    Discovery.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    record = {"name": "acci-framework", "namespace": "acci", "version": 6,
              "info": {"status": "deployed", "description": "Upgrade complete", "first_deployed": LONG_AGO,
                       "last_deployed": LONG_AGO},
              "chart": {"metadata": {"apiVersion": "v2", "name": "acci-framework", "version": "0.1.0",
                                     "appVersion": "1.0.0"}},
              "config": values_of(A)}
    store = tmp_path / "releases.yaml"
    store.write_text(yaml.safe_dump([record]))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "stub",
        "clusters": [{"name": "stub", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
        "contexts": [{"name": "stub", "context": {"cluster": "stub", "namespace": "acci"}}],
        "users": [{"name": "stub", "user": {}}]}))
    monkeypatch.setenv("HELM_DRIVER", "memory")
    monkeypatch.setenv("HELM_MEMORY_DRIVER_DATA", str(store))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    for name in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    try:
        yield Discovery
    finally:
        server.shutdown()
        server.server_close()


class Tap:
    """run_command itself, recording each argv (the real helm answers)."""

    def __init__(self) -> None:
        self.argvs: list[list[str]] = []
        self.results: list[CommandResult] = []

    def __call__(self, argv, **kwargs) -> CommandResult:
        self.argvs.append(list(argv))
        self.results.append(run_command(argv, **kwargs))
        return self.results[-1]


@pytest.mark.integration
def test_real_helm_accepts_every_canary_argv(helm, ops_values, caddy_apps, real_helm_store):
    """The whole canary through the real helm 4.1.4 (in-memory store, discovery stub only) with the real
    analysis: helm reads the stable digest from revision 6, accepts the three step upgrades, the promotion
    and the removal, and renders the HTTPRoute; a sick app's abort argv is accepted too. No write reaches
    the stub: helm's fake client takes the objects (no cluster exists here)."""
    tap = Tap()
    target = release(helm, tap, ops_values, kube_context=None)
    result = target.deploy(B, RUNTIME, print, analyse=analysis_of(caddy_apps["healthy"]))
    assert (result.revision, result.previous_image_ref, result.image_ref) == (7, A, B)  # the store is reloaded
    assert [a[1] for a in tap.argvs] == ["history", "get", "template"] + ["upgrade"] * 5
    first_step = yaml.safe_load_all(json.loads(tap.results[3].stdout)["manifest"])
    (route,) = [doc for doc in first_step if doc and doc["kind"] == "HTTPRoute"]
    assert [ref["weight"] for ref in route["spec"]["rules"][0]["backendRefs"]] == [90, 10]
    last = json.loads(tap.results[-1].stdout)["manifest"]
    assert "acci-framework-canary" not in last and f"image: {B}" in last.replace('"', "")
    failing = Tap()
    with pytest.raises(DeployFailed, match=r"weight set back to 0 and the canary removed \(revision 7\)"):
        release(helm, failing, ops_values, kube_context=None).deploy(B, None, print,
                                                                     analyse=analysis_of(caddy_apps["sick"]))
    assert failing.argvs[-1][-4:] == OFF
    assert real_helm_store.seen and all(entry.startswith("GET ") for entry in real_helm_store.seen)


def test_canary_weights_reads_hostile_manifests_as_input():
    """Odd shapes in a rendered manifest are skipped or are one-line errors, never a crash."""
    service = {"kind": "Service", "metadata": {"name": "x-canary", "labels": {"app.kubernetes.io/component": "canary"}}}
    refs = [{"name": "x", "weight": 3}, {"name": "x-canary", "weight": 1}]
    route = {"kind": "HTTPRoute", "metadata": {"name": "r"},
             "spec": {"rules": [{"backendRefs": refs}, "junk", {"backendRefs": None}]}}
    assert canary_weights(yaml.safe_dump_all([service, route, "text", None])) == [("HTTPRoute r rule 0", 25)]
    route["spec"]["rules"][0]["backendRefs"][1]["weight"] = "1"
    with pytest.raises(AcciOpsError, match=r"^HTTPRoute r rule 0 has a backendRef weight that is not a whole number"):
        canary_weights(yaml.safe_dump_all([service, route]))
    ingress = {"kind": "Ingress", "metadata": {"name": "i", "annotations": {
        "nginx.ingress.kubernetes.io/canary": "true", "nginx.ingress.kubernetes.io/canary-weight": "ten"}}}
    with pytest.raises(AcciOpsError, match=r"canary-weight 'ten', not a whole percentage"):
        canary_weights(yaml.safe_dump(ingress))
    with pytest.raises(AcciOpsError, match=r"^helm template printed YAML that does not parse"):
        canary_weights("a: [b")
    assert canary_weights("") == []
