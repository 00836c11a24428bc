"""HelmRelease: deploy by digest, recover a release an interrupted client left pending, roll back.

No Kubernetes API server can be had on this machine, so helm is driven in two ways:

- through a recording runner standing in for run_command: it records each exact argv (with its
  timeout, env allow-list and what any values file held at that moment) and plays back canned helm JSON
  answers (history, get values, upgrade --output json), in the shapes helm 4.1.4 prints them;
- through the real helm binary with its in-memory release store (HELM_DRIVER=memory, releases loaded
  from HELM_MEMORY_DRIVER_DATA; helm then uses its own fake Kubernetes client): the real history, get
  values, rollback and uninstall answer, and one test adds a stub answering only the API discovery
  calls (/version, /api, /apis) so the real ``helm upgrade --install`` runs with every flag acci_ops
  passes. Each helm process loads the store afresh, so state does not carry from one call to the next.

The chart itself is rendered for real (``helm template``), and its Deployment must run exactly
repo@sha256:... .
"""

from __future__ import annotations

import json
import shutil
import stat
import threading
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from acci_ops.lib.core.commands import HELM_ENV, CommandFailed, CommandResult, run_command
from acci_ops.lib.core.errors import AcciOpsError, ConfigError
from acci_ops.lib.core.net import free_port
from acci_ops.lib.platform.backends import AppRuntime, HelmPlatform
from acci_ops.lib.postgres.urls import parse_database_url
from acci_ops.lib.releases.deployers import DeployFailed, RollbackTarget, parse_image_ref
from acci_ops.lib.releases.helm_release import HelmRelease
from acci_ops_tests.fixtures.deploy import CHART
from acci_ops_tests.fixtures.kube_stub import Discovery

REPO = "registry.example:5000/acci/acci-framework"
A = f"{REPO}@sha256:{'a' * 64}"
B = f"{REPO}@sha256:{'b' * 64}"
C = f"{REPO}@sha256:{'c' * 64}"
SECRET = "db-Pa55-release-secret"
RUNTIME = AppRuntime(parse_database_url(f"postgresql://acci:{SECRET}@db.internal:5432/acci"),
                     "redis://:cache-secret-9@cache:6379/0")
LONG_AGO = "2026-01-01T10:00:00.123456789Z"  # how helm writes times: RFC 3339 with nanoseconds


def rev(number: int, status: str, updated: str | None = LONG_AGO) -> dict:
    entry = {"revision": number, "status": status, "chart": "acci-framework-0.1.0", "app_version": "1.0.0",
             "description": "Upgrade complete"}
    if updated is not None:
        entry["updated"] = updated
    return entry


def values(image_ref: str | None, **extra) -> dict:
    """What `helm get values --revision N -o json` prints for a revision acci_ops deployed."""
    data = {"secrets": {"databaseUrl": f"postgresql://acci:{SECRET}@db/acci", "redisUrl": "redis://cache"}, **extra}
    if image_ref:
        ref = parse_image_ref(image_ref)
        data["image"] = {"repository": ref.repository, "digest": ref.digest}
    return data


def deployment(image: str) -> str:
    return yaml.safe_dump_all([{"kind": "Service", "metadata": {"name": "acci-framework"}},
                               {"kind": "Deployment", "spec": {"template": {"spec": {"containers": [
                                   {"name": "acci-framework", "image": image}]}}}}])


class Helm:
    """Stands in for run_command with helm's answers: ``histories`` is played back one per history
    call (the last one repeats; None = "release: not found"), ``revision_values`` answers get values,
    ``upgrade`` is the release JSON an upgrade prints (or an exit code to fail with). ``template``
    renders a Deployment whose image is what the --set-string arguments name, as a chart that supports
    image.digest does (the real chart is rendered by real helm in the tests below)."""

    def __init__(self, histories, revision_values=None, upgrade=None, template=None) -> None:
        self.histories = list(histories)
        self.revision_values = revision_values or {}
        self.upgrade = upgrade if upgrade is not None else {"version": 7, "info": {"status": "deployed"}}
        self.template = template
        self.calls: list[dict] = []

    def __call__(self, argv, env=None, timeout=None, on_line=None, check=True, capture_stdout=False,
                 allow_env=(), **kwargs) -> CommandResult:
        files = {}
        for i, arg in enumerate(argv):
            if arg == "--values" and "secret-values" in argv[i + 1]:
                path = Path(argv[i + 1])
                files[argv[i + 1]] = (path.read_text(), stat.S_IMODE(path.stat().st_mode))
        self.calls.append({"argv": list(argv), "env": dict(env or {}), "timeout": timeout, "check": check,
                           "capture_stdout": capture_stdout, "allow_env": tuple(allow_env), "files": files})
        code, out, tail = 0, b"", ()
        command = argv[1]
        if command == "history":
            answer = self.histories.pop(0) if len(self.histories) > 1 else self.histories[0]
            if answer is None:
                code, tail = 1, ("Error: release: not found",)
            else:
                out = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
        elif command == "get":
            number = int(argv[argv.index("--revision") + 1])
            answer = self.revision_values[number]
            out = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
        elif command == "template":
            sets = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--set-string")
            image = self.template or f"{sets['image.repository']}@{sets['image.digest']}"
            out = deployment(image).encode()
        elif command == "upgrade":
            if isinstance(self.upgrade, int):
                code, tail = self.upgrade, ("Error: UPGRADE FAILED: context deadline exceeded",)
            else:
                out = self.upgrade.encode() if isinstance(self.upgrade, str) else json.dumps(self.upgrade).encode()
        result = CommandResult(tuple(argv), code, 0.01, tail, out if capture_stdout else b"")
        if check and code != 0:
            raise CommandFailed(result)
        return result

    def argv(self, command: str) -> list[list[str]]:
        return [c["argv"] for c in self.calls if c["argv"][1] == command]

    def commands(self) -> list[str]:
        return [" ".join(c["argv"][1:3]) if c["argv"][1] == "get" else c["argv"][1] for c in self.calls]


@pytest.fixture
def chart(tmp_path) -> Path:
    """A minimal chart rendering image.repository@image.digest (for the flow tests; the shipped chart
    is rendered in test_the_shipped_chart_runs_exactly_the_digest)."""
    chart = tmp_path / "chart"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: acci-framework\nversion: 0.1.0\nappVersion: 1.0.0\n")
    (chart / "values.yaml").write_text("image:\n  repository: acci-framework\n  digest: ''\n")
    (chart / "templates" / "deployment.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ .Release.Name }}\nspec:\n"
        "  selector:\n    matchLabels: {app: acci}\n  template:\n    metadata:\n      labels: {app: acci}\n"
        "    spec:\n      containers:\n        - name: app\n"
        "          image: \"{{ .Values.image.repository }}@{{ .Values.image.digest }}\"\n")
    return chart


def target(chart: Path, runner, **kwargs) -> HelmRelease:
    defaults = dict(release="acci-framework", namespace="acci", chart=str(chart), app_url="https://{namespace}.test",
                    helm="/opt/helm", kube_context="prod", timeout_seconds=300, runner=runner)
    return HelmRelease(**{**defaults, **kwargs})


BASE = ["--namespace", "acci", "--kube-context", "prod"]


def test_deploy_by_digest_exact_argv_and_result(chart):
    """A deploy reads the history and the deployed revision's values (the previous digest), renders the
    chart locally, then upgrades with the digest, --rollback-on-failure, its timeout and a bounded history;
    the app's secrets only reach helm in a 0600 values file that is gone afterwards."""
    helm = Helm([[rev(5, "superseded"), rev(6, "deployed")]], {6: values(A)})
    lines: list[str] = []
    result = target(chart, helm).deploy(B, RUNTIME, lines.append)
    assert (result.app_url, result.revision, result.previous_image_ref, result.image_ref, result.recovered) == (
        "https://acci.test", 7, A, B, None)
    history, get, template, upgrade = (c["argv"] for c in helm.calls)
    assert history == ["/opt/helm", "history", "acci-framework", *BASE, "--output", "json"]
    assert get == ["/opt/helm", "get", "values", "acci-framework", *BASE, "--revision", "6", "--output", "json"]
    secret_file = upgrade[upgrade.index("--values") + 1]
    assert template == ["/opt/helm", "template", "acci-framework", str(chart), "--namespace", "acci",
                        "--values", secret_file, "--set-string", f"image.repository={REPO}",
                        "--set-string", f"image.digest=sha256:{'b' * 64}"]
    assert upgrade == ["/opt/helm", "upgrade", "--install", "acci-framework", str(chart), *BASE,
                       "--values", secret_file, "--set-string", f"image.repository={REPO}",
                       "--set-string", f"image.digest=sha256:{'b' * 64}", "--rollback-on-failure", "--wait",
                       "--timeout", "300s", "--history-max", "10", "--output", "json"]
    content, mode = helm.calls[3]["files"][secret_file]
    assert mode == 0o600 and yaml.safe_load(content) == {"secrets": {
        "databaseUrl": RUNTIME.database.to_url(), "redisUrl": "redis://:cache-secret-9@cache:6379/0"}}
    assert not Path(secret_file).exists()
    assert all(SECRET not in " ".join(c["argv"]) for c in helm.calls)
    assert all(c["allow_env"] == HELM_ENV for c in helm.calls)
    # reads (and the upgrade, whose JSON holds the secrets) are captured, never streamed to the log
    assert [c["capture_stdout"] for c in helm.calls] == [True, True, True, True]
    assert [c["timeout"] for c in helm.calls] == [120, 120, 120, 360]
    assert not any(SECRET in line for line in lines)
    assert f"helm: deploying {B} to release acci-framework in namespace acci (replacing {A}, timeout 300 s)" in lines


def test_deploy_without_runtime_uses_the_values_files_only(chart, tmp_path):
    """Without a runtime no secret values file is written: the operator's values (existingSecret) apply."""
    prod = tmp_path / "prod-values.yaml"
    prod.write_text("existingSecret: acci-secrets\n")
    helm = Helm([None])
    result = target(chart, helm, values_files=[str(prod)], kube_context=None).deploy(A, None, print)
    assert (result.revision, result.previous_image_ref) == (7, None)
    assert helm.commands() == ["history", "template", "upgrade"]
    upgrade = helm.argv("upgrade")[0]
    assert upgrade[:8] == ["/opt/helm", "upgrade", "--install", "acci-framework", str(chart), "--namespace", "acci",
                           "--values"]
    assert upgrade[8] == str(prod) and upgrade.count("--values") == 1


def test_stuck_pending_upgrade_is_rolled_back_before_the_deploy(chart):
    """A release an interrupted client left pending-upgrade (revision 7, revision 6 still deployed) is
    rolled back to revision 6 with a fresh timeout, saying so, and then the deploy goes ahead."""
    helm = Helm([[rev(5, "superseded"), rev(6, "deployed"), rev(7, "pending-upgrade")],
                 [rev(5, "superseded"), rev(6, "superseded"), rev(7, "superseded"), rev(8, "deployed")]],
                {8: values(A)}, upgrade={"version": 9, "info": {"status": "deployed"}})
    lines: list[str] = []
    result = target(chart, helm).deploy(B, None, lines.append)
    line = ("release acci-framework was left pending-upgrade at revision 7 by an interrupted client; "
            "rolled back to revision 6")
    assert result.recovered == line and line in lines
    assert (result.revision, result.previous_image_ref) == (9, A)
    assert helm.commands() == ["history", "rollback", "history", "get values", "template", "upgrade"]
    rollback = helm.calls[1]
    assert rollback["argv"] == ["/opt/helm", "rollback", "acci-framework", "6", *BASE, "--wait", "--timeout", "300s",
                                "--history-max", "10"]
    assert rollback["timeout"] == 360 and rollback["check"] is True


def test_pending_install_without_a_deployed_revision_is_uninstalled(chart):
    """A first install that never finished has nothing to roll back to: it is uninstalled (with its own
    timeout) and the deploy installs afresh."""
    helm = Helm([[rev(1, "pending-install")], None], upgrade={"version": 1, "info": {"status": "deployed"}})
    lines: list[str] = []
    result = target(chart, helm).deploy(A, None, lines.append)
    assert result.recovered == ("release acci-framework was left pending-install at revision 1 by an interrupted "
                                "client and had no deployed revision; uninstalled it")
    assert (result.revision, result.previous_image_ref) == (1, None)
    assert helm.commands() == ["history", "uninstall", "history", "template", "upgrade"]
    assert helm.argv("uninstall") == [["/opt/helm", "uninstall", "acci-framework", *BASE, "--wait", "--timeout",
                                       "300s"]]


def test_pending_rollback_is_recovered_too_and_stuck_shows_in_current(chart):
    helm = Helm([[rev(3, "superseded"), rev(4, "deployed"), rev(5, "pending-rollback")]], {4: values(C)})
    release = target(chart, helm)
    state = release.current(print)
    assert (state.image_ref, state.revision, state.status, state.stuck) == (C, 4, "pending-rollback", True)
    assert release.recover_stuck(print) == ("release acci-framework was left pending-rollback at revision 5 by an "
                                            "interrupted client; rolled back to revision 4")


def test_not_stuck_means_nothing_to_recover(chart):
    helm = Helm([[rev(1, "superseded"), rev(2, "failed"), rev(3, "deployed")]])
    assert target(chart, helm).recover_stuck(print) is None
    assert helm.commands() == ["history"]
    assert target(chart, Helm([None])).current(print).status == "absent"


def test_a_young_pending_revision_may_be_a_live_client_and_is_left_alone(chart):
    """A revision pending for less than stale_after_seconds may be another client's upgrade in flight:
    nothing is rolled back and the deploy stops saying why."""
    now = datetime.now(UTC)
    helm = Helm([[rev(6, "deployed"), rev(7, "pending-upgrade", (now - timedelta(seconds=30)).isoformat())]])
    with pytest.raises(AcciOpsError, match=r"^release acci-framework is pending-upgrade at revision 7 since \d+ s: "
                                           r"another helm client may still be deploying it; .* once it is 420 s old"):
        target(chart, helm).deploy(B, None, print)
    assert helm.commands() == ["history"]
    old = Helm([[rev(6, "deployed"), rev(7, "pending-upgrade", (now - timedelta(seconds=30)).isoformat())]], {6: {}})
    assert target(chart, old, stale_after_seconds=10).recover_stuck(print).endswith("rolled back to revision 6")


def test_pending_upgrade_with_no_good_revision_needs_a_person(chart):
    helm = Helm([[rev(1, "failed"), rev(2, "pending-upgrade")]])
    with pytest.raises(AcciOpsError, match="left pending-upgrade at revision 2 by an interrupted client and has no "
                                           "deployed revision to roll back to; repair it by hand"):
        target(chart, helm).deploy(A, None, print)
    assert helm.commands() == ["history"]


HOSTILE = [
    ({"history": {"revision": 1}}, r"helm history of release acci-framework is not a list \(got dict\)"),
    ({"history": [[1, "deployed"]]}, r"entry 0 of helm history of release acci-framework is not an object"),
    ({"history": [{"status": "deployed"}]}, r"'revision' of entry 0 of helm history .* not an integer \(got null\)"),
    ({"history": [{"revision": True, "status": "deployed"}]}, r"'revision' of entry 0 .* not an integer \(got bool\)"),
    ({"history": [{"revision": 6}]}, r"'status' of revision 6 of release acci-framework is not a string \(got null\)"),
    ({"history": [rev(6, "deployed"), rev(6, "superseded")]}, r"helm history of release acci-framework lists a "
                                                              r"revision twice"),
    ({"history": [{"revision": 6, "status": "deployed", "updated": 5}]}, r"'updated' of revision 6 .* not a string"),
    ({"history": "<html>502 Bad Gateway</html>"}, r"helm history of release acci-framework is not valid JSON"),
    ({"values": ["image"]}, r"values of revision 6 of release acci-framework is not an object \(got list\)"),
    ({"values": {"image": "repo@sha256:x"}}, r"'image' in the values of revision 6 .* is not an object \(got str\)"),
    ({"values": {"image": {"repository": REPO, "digest": 42}}}, r"'image.digest' in the values .* not a string"),
    ({"values": {"image": {"digest": f"sha256:{'a' * 64}"}}}, r"'image.repository' in the values .* \(got null\)"),
    ({"values": {"image": {"repository": REPO, "digest": "sha256:abc"}}},
     r"the values of revision 6 of release acci-framework record image .* which is not repo@sha256"),
    ({"upgrade": []}, r"helm upgrade --output json of release acci-framework is not an object \(got list\)"),
    ({"upgrade": {"version": 7}}, r"'info' of helm upgrade --output json .* is not an object \(got null\)"),
    ({"upgrade": {"version": "7", "info": {"status": "deployed"}}}, r"'version' of helm upgrade .* \(got str\)"),
    ({"upgrade": {"version": 7, "info": {"status": "failed"}}}, r"ended with revision 7 'failed', not deployed"),
]


@pytest.mark.parametrize(("answers", "message"), HOSTILE, ids=[m[:40] for _, m in HOSTILE])
def test_hostile_helm_json_is_a_one_line_error(chart, answers, message):
    """helm's answers are input: any unexpected type or missing field is an AcciOpsError of one line
    naming which answer and field, never a KeyError or TypeError deep in the deployer."""
    helm = Helm([answers.get("history", [rev(5, "superseded"), rev(6, "deployed")])],
                {6: answers.get("values", values(A))}, upgrade=answers.get("upgrade"))
    with pytest.raises(AcciOpsError, match=message) as caught:
        target(chart, helm).deploy(B, None, print)
    assert "\n" not in str(caught.value)


def test_history_max_is_bounded(chart):
    """--history-max is on every command that makes a revision; 0 (helm's "unlimited") and 1 (nothing left
    to roll back to) are refused, as is more than 100."""
    for bad in (0, 1, 101, True, "10"):
        with pytest.raises(ConfigError, match=r"helm history_max must be 2 to 100 \(a bounded history"):
            target(chart, Helm([None]), history_max=bad)
    helm = Helm([[rev(1, "superseded"), rev(2, "deployed")]], {1: values(A), 2: values(B)})
    release = target(chart, helm, history_max=25)
    release.deploy(C, None, print)
    release.rollback(RollbackTarget(revision=1), print)
    upgrade, rollback = helm.argv("upgrade")[0], helm.argv("rollback")[0]
    assert upgrade[upgrade.index("--history-max") + 1] == "25"
    assert rollback[rollback.index("--history-max") + 1] == "25"


def test_rollback_to_a_revision_with_a_fresh_timeout(chart):
    """``rollback`` to revision 6 runs `helm rollback acci-framework 6 --wait --timeout 300s` with the whole
    timeout of its own, and reports the new revision and what ran before."""
    helm = Helm([[rev(5, "superseded"), rev(6, "superseded"), rev(7, "deployed")],
                 [rev(5, "superseded"), rev(6, "superseded"), rev(7, "superseded"), rev(8, "deployed")]],
                {6: values(A), 7: values(B)})
    result = target(chart, helm).rollback(RollbackTarget(revision=6), print)
    assert (result.revision, result.previous_image_ref, result.image_ref) == (8, B, A)
    [call] = [c for c in helm.calls if c["argv"][1] == "rollback"]
    assert call["argv"] == ["/opt/helm", "rollback", "acci-framework", "6", *BASE, "--wait", "--timeout", "300s",
                            "--history-max", "10"]
    assert call["timeout"] == 360


def test_rollback_by_digest_finds_the_newest_revision_that_ran_it(chart):
    """The last good revision is found by the digest its recorded values hold, skipping revisions that
    never ran (failed), each revision's values read once."""
    helm = Helm([[rev(4, "superseded"), rev(5, "superseded"), rev(6, "failed"), rev(7, "deployed")],
                 [rev(7, "superseded"), rev(8, "deployed")]],
                {4: values(A), 5: values(B), 6: values(A), 7: values(C)})
    result = target(chart, helm).rollback(RollbackTarget(image_ref=A), print)
    assert helm.argv("rollback")[0][3] == "4"
    assert (result.revision, result.previous_image_ref, result.image_ref) == (8, C, A)
    asked = [c["argv"][c["argv"].index("--revision") + 1] for c in helm.calls if c["argv"][1] == "get"]
    assert asked == ["7", "5", "4"]


def test_rollback_targets_that_cannot_be_used(chart):
    history = [rev(5, "superseded"), rev(6, "failed"), rev(7, "deployed")]
    helm = Helm([history], {5: values(A), 6: values(B), 7: values(C)})
    release = target(chart, helm)
    with pytest.raises(ConfigError, match=r"release acci-framework has no revision 3 \(its history holds 5 to 7; "
                                          r"--history-max 10 keeps only the newest\)"):
        release.rollback(RollbackTarget(revision=3), print)
    with pytest.raises(ConfigError, match="revision 6 of release acci-framework is 'failed', not one that ran"):
        release.rollback(RollbackTarget(revision=6), print)
    with pytest.raises(AcciOpsError, match=f"no revision in the history of release acci-framework ran {B}; deploy"):
        release.rollback(RollbackTarget(image_ref=B), print)
    lines: list[str] = []
    same = release.rollback(RollbackTarget(image_ref=C), lines.append)
    assert same.revision == 7 and f"release acci-framework already runs {C} (revision 7); nothing to roll back" in lines
    assert helm.argv("rollback") == []
    with pytest.raises(AcciOpsError, match="release acci-framework is not installed in namespace acci: nothing to"):
        target(chart, Helm([None])).rollback(RollbackTarget(revision=1), print)
    with pytest.raises(ConfigError, match="either an image_ref .* or a revision, exactly one"):
        RollbackTarget(image_ref=A, revision=2)
    with pytest.raises(ConfigError, match="rollback revision must be a positive integer, got 0"):
        RollbackTarget(revision=0)


def test_a_failed_upgrade_says_helm_rolled_back(chart):
    helm = Helm([[rev(6, "deployed")]], {6: values(A)}, upgrade=1)
    with pytest.raises(DeployFailed, match=r"helm upgrade of release acci-framework to .*@sha256:b+ failed; with "
                                           r"--rollback-on-failure helm put the previous revision back: helm failed "
                                           r"\(exit code 1\): Error: UPGRADE FAILED: context deadline exceeded") as e:
        target(chart, helm).deploy(B, None, print)
    assert (e.value.previous_image_ref, e.value.rolled_back) == (A, True)


BAD_REFS = [
    ("acci-framework:latest", "is not repo@sha256:<64 lowercase hex digits>: a release deploys an image by digest"),
    ("acci-framework", "is not repo@sha256"),
    (f"acci-framework@sha256:{'a' * 63}", "is not repo@sha256"),
    (f"acci-framework@sha256:{'A' * 64}", "is not repo@sha256"),
    (f"acci-framework@sha512:{'a' * 128}", "is not repo@sha256"),
    (f"acci-framework:1.4@sha256:{'a' * 64}", "it also carries a tag; give the repository and digest only"),
    (f"Acci-Framework@sha256:{'a' * 64}", "the repository is not a valid lowercase image name"),
    (f" acci@sha256:{'a' * 64}", "the repository is not a valid lowercase image name"),
    (f"acci,x=1@sha256:{'a' * 64}", "the repository is not a valid lowercase image name"),
    (f"acci@sha256:{'a' * 64}\n", "is not repo@sha256"),
    (None, "image reference must be a string repo@sha256:<64 hex digits>, got NoneType"),
]


@pytest.mark.parametrize(("ref", "message"), BAD_REFS)
def test_only_a_digest_can_be_deployed(chart, ref, message):
    """A tag (moving), a short/upper-case/other-algorithm digest, or a name helm's --set would split is a
    ConfigError before any helm command runs."""
    helm = Helm([None])
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        target(chart, helm).deploy(ref, None, print)
    assert "\n" not in str(caught.value) and helm.calls == []


def test_good_references_and_config_errors(chart, tmp_path):
    ref = parse_image_ref(f"localhost:5000/team/acci_framework-x@sha256:{'0' * 64}")
    assert (ref.repository, ref.digest) == ("localhost:5000/team/acci_framework-x", f"sha256:{'0' * 64}")
    with pytest.raises(ConfigError, match=f"Helm chart {tmp_path} not found"):
        target(tmp_path, Helm([None]))
    with pytest.raises(ConfigError, match="Helm release name 'Acci' is not a lowercase DNS name"):
        target(chart, Helm([None]), release="Acci")
    with pytest.raises(ConfigError, match="Kubernetes namespace 'a_b' is not a lowercase DNS label"):
        target(chart, Helm([None]), namespace="a_b")
    with pytest.raises(ConfigError, match="helm timeout must be a positive number of seconds, got 0"):
        target(chart, Helm([None]), timeout_seconds=0)
    with pytest.raises(ConfigError, match="needs the app URL"):
        target(chart, Helm([None]), app_url="")
    platform = HelmPlatform(release="acci-framework", namespace="acci-dr", chart=str(chart), app_url="http://x",
                            timeout_seconds=120, runner=Helm([None]))
    release = HelmRelease.from_platform(platform, history_max=5)
    assert (release.namespace, release.timeout_seconds, release.history_max, release.runner) == (
        "acci-dr", 120, 5, platform.runner)


# --- the real helm and the real chart ------------------------------------------------------------

def render_shipped(helm: Path, *args: str) -> list[dict]:
    done = run_command([str(helm), "template", "acci-framework", str(CHART), "--namespace", "acci",
                        "--set-string", "secrets.databaseUrl=postgres://acci:pw@db:5432/acci",
                        "--set-string", "secrets.redisUrl=redis://cache:6379/0", *args], capture_stdout=True)
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def secrets_values(tmp_path: Path) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text("secrets:\n  databaseUrl: postgres://acci:pw@db:5432/acci\n  redisUrl: redis://cache:6379/0\n")
    return path


def test_the_shipped_chart_runs_exactly_the_digest(helm, tmp_path):
    """The real chart rendered by the real helm with image.repository/image.digest set (as a deploy sets
    them) runs exactly repo@sha256:..., and HelmRelease's own render check accepts it."""
    ref = parse_image_ref(A)
    docs = render_shipped(helm, "--set-string", f"image.repository={ref.repository}",
                          "--set-string", f"image.digest={ref.digest}")
    [deploy] = [d for d in docs if d["kind"] == "Deployment"]
    images = [c["image"] for c in deploy["spec"]["template"]["spec"]["containers"]]
    assert images == [A], (f"the chart {CHART} renders {images} for image.digest={ref.digest}: it must render "
                           "image.repository@image.digest when a digest is set (templates/_helpers.tpl "
                           "acci-framework.image, values.yaml image.digest)")
    release = HelmRelease(release="acci-framework", namespace="acci", chart=str(CHART), app_url="http://x",
                          helm=str(helm), values_files=[str(secrets_values(tmp_path))])
    release.check_render(ref, None, print)


def tag_only_chart(tmp_path: Path) -> Path:
    """The shipped chart with its image helper forced to repository:tag (a chart without digest support)."""
    copy = tmp_path / "acci-framework"
    shutil.copytree(CHART, copy)
    helpers = copy / "templates" / "_helpers.tpl"
    text = helpers.read_text()
    start = text.index('{{- define "acci-framework.image" -}}')
    end = text.index('{{- define "acci-framework.serviceAccountName"')
    helpers.write_text(text[:start] + '{{- define "acci-framework.image" -}}\n'
                       '{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag '
                       '| toString) }}\n{{- end }}\n\n' + text[end:])
    return copy


def test_render_check_stops_a_chart_that_ignores_the_digest(helm, tmp_path):
    """A chart that renders only a tag would deploy its default version while the release believes it
    deployed the digest: the render check (real helm template) refuses before helm upgrade runs."""
    copy = tag_only_chart(tmp_path)
    release = HelmRelease(release="acci-framework", namespace="acci", chart=str(copy), app_url="http://x",
                          helm=str(helm), values_files=[str(secrets_values(tmp_path))])
    with pytest.raises(ConfigError, match=rf"chart {copy} renders '{REPO}:1.0.0', not {A}: it does not use "
                                          r"image.digest"):
        release.check_render(parse_image_ref(A), None, print)
    unrenderable = HelmRelease(release="acci-framework", namespace="acci", chart=str(copy), app_url="http://x",
                               helm=str(helm))
    with pytest.raises(ConfigError, match=r"does not render with these values: Error: .*set secrets.databaseUrl"):
        unrenderable.check_render(parse_image_ref(A), None, print)


# --- the real helm, with its in-memory release store ---------------------------------------------

class Tap:
    """run_command itself, recording each argv (the real helm answers)."""

    def __init__(self) -> None:
        self.argvs: list[list[str]] = []

    def __call__(self, argv, **kwargs) -> CommandResult:
        self.argvs.append(list(argv))
        return run_command(argv, **kwargs)


def memory_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, revisions, kube_server: str) -> Path:
    """Release records as helm stores them, loaded by the real helm (HELM_DRIVER=memory), and a
    kubeconfig naming ``kube_server`` (a port nothing listens on, or the discovery stub)."""
    records = [{"name": "acci-framework", "namespace": "acci", "version": number,
                "info": {"status": status, "description": "Upgrade complete", "first_deployed": LONG_AGO,
                         "last_deployed": LONG_AGO},
                "chart": {"metadata": {"apiVersion": "v2", "name": "acci-framework", "version": "0.1.0",
                                       "appVersion": "1.0.0"}},
                "config": values(image_ref)} for number, status, image_ref in revisions]
    store = tmp_path / "releases.yaml"
    store.write_text(yaml.safe_dump(records))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "stub",
        "clusters": [{"name": "stub", "cluster": {"server": kube_server}}],
        "contexts": [{"name": "stub", "context": {"cluster": "stub", "namespace": "acci"}}],
        "users": [{"name": "stub", "user": {}}]}))
    monkeypatch.setenv("HELM_DRIVER", "memory")
    monkeypatch.setenv("HELM_MEMORY_DRIVER_DATA", str(store))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    for name in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    return store


def nowhere() -> str:
    return f"http://127.0.0.1:{free_port()}"


def test_real_helm_reads_and_rolls_back_a_pending_upgrade(helm, chart, tmp_path, monkeypatch):
    """Against the real helm 4.1.4: its history and get values answers parse to the same state the canned
    ones do, helm itself refuses to upgrade the stuck release ("another operation ... in progress", the
    reason recovery exists), and the recovery's rollback command is accepted by helm."""
    memory_store(tmp_path, monkeypatch, [(5, "superseded", C), (6, "deployed", A), (7, "pending-upgrade", B)],
                 nowhere())
    tap = Tap()
    release = target(chart, tap, helm=str(helm), kube_context=None)
    state = release.current(print)
    assert (state.image_ref, state.revision, state.status, state.stuck) == (A, 6, "pending-upgrade", True)
    history = release.history(print)
    assert [r.number for r in history] == [5, 6, 7]
    assert history[0].updated == datetime(2026, 1, 1, 10, 0, 0, 123456, tzinfo=UTC)  # helm's nanoseconds, cut to µs
    with pytest.raises(CommandFailed, match=r"another operation \(install/upgrade/rollback\) is in progress"):
        run_command(release.upgrade_argv(parse_image_ref(C), None), allow_env=HELM_ENV, capture_stdout=True,
                    timeout=60)
    lines: list[str] = []
    assert release.recover_stuck(lines.append) == ("release acci-framework was left pending-upgrade at revision 7 "
                                                   "by an interrupted client; rolled back to revision 6")
    assert tap.argvs[-1] == [str(helm), "rollback", "acci-framework", "6", "--namespace", "acci", "--wait",
                             "--timeout", "300s", "--history-max", "10"]
    assert any("Rollback was a success" in line for line in lines)


def test_real_helm_uninstalls_a_first_install_that_never_finished(helm, chart, tmp_path, monkeypatch):
    memory_store(tmp_path, monkeypatch, [(1, "pending-install", A)], nowhere())
    tap = Tap()
    lines: list[str] = []
    line = target(chart, tap, helm=str(helm), kube_context=None).recover_stuck(lines.append)
    assert line.endswith("left pending-install at revision 1 by an interrupted client and had no deployed "
                         "revision; uninstalled it")
    assert [a[1] for a in tap.argvs] == ["history", "uninstall"]
    assert any('release "acci-framework" uninstalled' in line for line in lines)
    memory_store(tmp_path, monkeypatch, [], nowhere())
    assert target(chart, Tap(), helm=str(helm), kube_context=None).current(print).status == "absent"


@pytest.mark.integration
def test_real_helm_upgrade_accepts_every_flag(helm, chart, tmp_path, monkeypatch):
    """The whole deploy through the real helm 4.1.4 (in-memory store, a stub answering API discovery
    only): helm accepts the upgrade argv (--set-string image.*, --rollback-on-failure, --wait, --timeout,
    --history-max, --output json), renders the chart, and its JSON answer gives revision 7 deployed."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Discovery)
    Discovery.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        memory_store(tmp_path, monkeypatch, [(5, "superseded", C), (6, "deployed", A)],
                     f"http://127.0.0.1:{server.server_port}")
        tap = Tap()
        lines: list[str] = []
        result = target(chart, tap, helm=str(helm), kube_context=None).deploy(B, RUNTIME, lines.append)
    finally:
        server.shutdown()
        server.server_close()
    assert (result.revision, result.previous_image_ref, result.image_ref) == (7, A, B)
    assert [a[1] for a in tap.argvs] == ["history", "get", "template", "upgrade"]
    assert Discovery.seen and all(entry.startswith("GET /api") or entry.startswith("GET /version")
                                  for entry in Discovery.seen)
    assert not any(SECRET in line for line in lines)
