"""Platform backends and app probes.

A Kubernetes cluster and a Docker engine are not available here: the Helm and Compose backends
are tested by the exact commands they run (through a recording runner standing in for the
real command runner), by the secrets staying out of argv, and by their config errors. The chart
and Compose files themselves are linted and rendered for real in acci_ops_tests/deploy."""

from __future__ import annotations

import stat
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import psycopg
import pytest

from acci_ops.lib.core.commands import CommandResult
from acci_ops.lib.core.errors import AcciOpsError, ConfigError
from acci_ops.lib.core.net import free_port
from acci_ops.lib.dr.probes import check_metrics, wait_for_health
from acci_ops.lib.platform.backends import AppRuntime, ComposePlatform, HelmPlatform, LocalPlatform
from acci_ops.lib.postgres.urls import DatabaseTarget, parse_database_url

SECRET = "db-Pa55-secret"
RUNTIME = AppRuntime(parse_database_url(f"postgresql://acci:{SECRET}@db.internal:5432/acci"),
                     "redis://:cache-secret@cache:6379/0")


class Recorder:
    """Stands in for run_command: records each call and what any values file held at that moment."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, argv, env=None, timeout=None, on_line=None, **kwargs) -> CommandResult:
        files = {}
        for i, arg in enumerate(argv):
            if arg == "--values" and "secret-values" in argv[i + 1]:
                path = Path(argv[i + 1])
                files[arg] = (path.read_text(), stat.S_IMODE(path.stat().st_mode))
        self.calls.append({"argv": list(argv), "env": dict(env or {}), "timeout": timeout, "files": files})
        if "history" in argv and on_line:
            on_line('[{"revision": 1, "status": "superseded"}, {"revision": 2, "status": "deployed"}]')
        return CommandResult(tuple(argv), 0, 0.01, ())


@pytest.fixture
def chart(tmp_path) -> Path:
    chart = tmp_path / "chart"
    chart.mkdir()
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: acci-framework\nversion: 0.1.0\n")
    (tmp_path / "dr-values.yaml").write_text("replicaCount: 1\n")
    return chart


def test_helm_commands(chart, tmp_path):
    runner = Recorder()
    helm = HelmPlatform(release="acci-framework", namespace="acci-drill-1", chart=str(chart),
                        values_files=[str(tmp_path / "dr-values.yaml")], app_url="http://acci.{namespace}.test",
                        helm="/opt/helm", kube_context="prod", timeout_seconds=300, runner=runner)
    assert helm.up(RUNTIME, print) == "http://acci.acci-drill-1.test"
    helm.rollback(1, print)
    assert [h["revision"] for h in helm.history()] == [1, 2]
    helm.down(print)
    up, rollback, history, down = (c["argv"] for c in runner.calls)
    secret_file = up[up.index("--values", up.index(str(tmp_path / "dr-values.yaml"))) + 1]
    assert up == ["/opt/helm", "upgrade", "--install", "acci-framework", str(chart), "--namespace", "acci-drill-1",
                  "--kube-context", "prod", "--create-namespace", "--values", str(tmp_path / "dr-values.yaml"),
                  "--values", secret_file, "--wait", "--timeout", "300s", "--rollback-on-failure"]
    assert rollback == ["/opt/helm", "rollback", "acci-framework", "1", "--namespace", "acci-drill-1",
                        "--kube-context", "prod", "--wait"]
    assert history == ["/opt/helm", "history", "acci-framework", "--namespace", "acci-drill-1", "--kube-context",
                       "prod", "--output", "json"]
    assert down == ["/opt/helm", "uninstall", "acci-framework", "--namespace", "acci-drill-1", "--kube-context",
                    "prod", "--wait", "--timeout", "300s"]
    content, mode = runner.calls[0]["files"]["--values"]
    assert SECRET in content and mode == 0o600
    assert not Path(secret_file).exists()
    assert all(SECRET not in " ".join(c["argv"]) for c in runner.calls)


def test_compose_commands(tmp_path):
    base, prod = tmp_path / "docker-compose.yml", tmp_path / "docker-compose.prod.yml"
    base.write_text("services: {}\n")
    prod.write_text("services: {}\n")
    runner = Recorder()
    compose = ComposePlatform(project="acci-drill", files=[str(base), str(prod)], runner=runner)
    assert compose.up(RUNTIME, print) == "http://127.0.0.1:8080"
    compose.down(print)
    up, down = runner.calls
    assert up["argv"] == ["docker", "compose", "--project-name", "acci-drill", "--file", str(base), "--file",
                          str(prod), "up", "--detach", "--wait", "--wait-timeout", "600"]
    assert up["env"]["DATABASE_URL"] == f"postgresql://acci:{SECRET}@db.internal:5432/acci"
    assert up["env"]["POSTGRES_PASSWORD"] == SECRET and up["env"]["POSTGRES_USER"] == "acci"
    assert SECRET not in " ".join(up["argv"])
    assert down["argv"][-3:] == ["down", "--volumes", "--remove-orphans"]


def test_compose_drill_wires_the_app_to_the_drill_and_a_free_port(tmp_path):
    """A drill adds the overlay that makes the app use the DATABASE_URL/REDIS_URL acci_ops passes, and
    publishes the app on a free port whose URL it returns (never production's 8080)."""
    base, prod = tmp_path / "docker-compose.yml", tmp_path / "docker-compose.prod.yml"
    base.write_text("services: {}\n")
    prod.write_text("services: {}\n")
    runner = Recorder()
    compose = ComposePlatform(project="acci-drill-1", files=[str(base), str(prod)], runner=runner, drill=True)
    url = compose.up(RUNTIME, print)
    [up] = runner.calls
    port = up["env"]["ACCI_FRAMEWORK_PORT"]
    assert url == f"http://127.0.0.1:{port}" and port != "8080"
    assert up["argv"][:9] == ["docker", "compose", "--project-name", "acci-drill-1", "--file", str(base), "--file",
                              str(prod), "--file"]
    assert up["argv"][9].endswith("deploy/compose/docker-compose.acci-ops.yml") and Path(up["argv"][9]).is_file()
    assert up["env"]["DATABASE_URL"] == RUNTIME.database.to_url() and up["env"]["REDIS_URL"] == RUNTIME.redis_url
    recovery = ComposePlatform(project="acci", files=[str(base), str(prod)], runner=Recorder())
    assert recovery.up(RUNTIME, print) == "http://127.0.0.1:8080"
    assert "ACCI_FRAMEWORK_PORT" not in recovery.runner.calls[0]["env"]
    assert not any("acci-ops" in arg for arg in recovery.runner.calls[0]["argv"])


TRICKY = "p@ss/w0rd#?%"


def test_app_database_url_round_trips_password_and_options():
    target = DatabaseTarget("db.internal", 5433, "acci", "acci", TRICKY,
                            (("sslmode", "verify-full"), ("sslrootcert", "/etc/ssl/acci ca.pem")))
    assert parse_database_url(target.to_url()) == target
    url = AppRuntime(target, "redis://cache:6379/0").env()["DATABASE_URL"]
    assert parse_database_url(url) == target
    assert TRICKY not in url and "sslmode=verify-full" in url and "sslrootcert=%2Fetc%2Fssl%2Facci%20ca.pem" in url
    bare = DatabaseTarget("127.0.0.1", 5432, "acci")
    assert bare.to_url() == "postgresql://127.0.0.1:5432/acci" and parse_database_url(bare.to_url()) == bare


def test_the_app_connects_with_the_url_it_is_given(pg_server):
    """libpq (through psycopg, as the stand-in app connects) reads the URL exactly as acci_ops meant it."""
    pg_server.pg.psql("DROP ROLE IF EXISTS acci_tricky")
    pg_server.pg.psql(f"CREATE ROLE acci_tricky LOGIN PASSWORD '{TRICKY}'")
    target = DatabaseTarget("127.0.0.1", pg_server.pg.port, "postgres", "acci_tricky", TRICKY,
                            (("sslmode", "disable"), ("application_name", "acci app")))
    url = AppRuntime(target, "redis://unused:6379/0").env()["DATABASE_URL"]
    with psycopg.connect(url, connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user, current_setting('application_name')").fetchone() == (
            "acci_tricky", "acci app")


def test_bad_platform_config(tmp_path):
    with pytest.raises(ConfigError, match=f"Helm chart {tmp_path} not found"):
        HelmPlatform(release="r", namespace="n", chart=str(tmp_path), app_url="http://x")
    with pytest.raises(ConfigError, match="Compose file /nope.yml not found"):
        ComposePlatform(project="p", files=["/nope.yml"])
    with pytest.raises(ConfigError, match="needs the command that starts the app"):
        LocalPlatform("")
    with pytest.raises(ConfigError, match="cannot start the app: /no/such/binary not found"):
        LocalPlatform(["/no/such/binary"]).up(RUNTIME, print)


class App:
    def __init__(self, health_codes: list[int], metrics: bytes) -> None:
        codes = list(health_codes)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                status, body = (codes.pop(0) if len(codes) > 1 else codes[0], b"{}") if self.path == "/health" \
                    else (200, metrics)
                self.send_response(status)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_health_retries_until_ready_and_metrics_parse():
    app = App([503, 503, 200], b"# TYPE acci_up gauge\nacci_up 1\nacci_requests_total 5\n")
    try:
        health = wait_for_health(app.url, deadline_seconds=10, first_delay=0.05, log=lambda line: None)
        assert health.status == 200 and health.attempts == 3
        metrics = check_metrics(app.url, ["acci_up"])
        assert metrics.families == 2 and "acci_up 1" in metrics.sample_text
        with pytest.raises(AcciOpsError, match="lacks required metrics: acci_db_pool_size"):
            check_metrics(app.url, ["acci_up", "acci_db_pool_size"])
    finally:
        app.server.shutdown()


def test_metrics_that_are_not_prometheus_text():
    app = App([200], b"<html>hello</html>\n")
    try:
        with pytest.raises(AcciOpsError, match="is not Prometheus exposition format"):
            check_metrics(app.url)
    finally:
        app.server.shutdown()


def test_unreachable_or_malformed_app_url():
    url = f"http://127.0.0.1:{free_port()}"
    expected = r"/health did not answer 2xx within 1 s \(\d+ attempts\); last: unreachable"
    with pytest.raises(AcciOpsError, match=expected) as caught:
        wait_for_health(url, deadline_seconds=1, first_delay=0.2, log=lambda line: None)
    assert str(caught.value).startswith(f"{url}/health did not answer")
    with pytest.raises(AcciOpsError, match="/metrics is unreachable") as caught:
        check_metrics(url)
    assert url in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="app URL 'api.acci.dev' must look like http"):
        wait_for_health("api.acci.dev")


def test_resource_builds_backends_from_the_real_deploy_files(monkeypatch):
    """The Dagster resource points the helm and compose backends at deploy/ (checked to exist),
    with drill-values and a drill namespace/project for drills and dr-values for recovery."""
    from acci_ops.defs.dr.resources import PROJECT_ROOT, AcciDisasterRecovery

    base = dict(environment="production", drill_redis_url="redis://127.0.0.1:6379/5", app_url="https://api.acci.test",
                compose_files=["deploy/compose/docker-compose.yml", "deploy/compose/docker-compose.prod.yml"])
    helm = AcciDisasterRecovery(platform="helm", helm_drill_app_url="http://acci.{namespace}.svc:8080", **base)
    drill = helm.platform_for(drill=True, stamp="20261127")
    assert drill.namespace == "acci-drill-20261127"
    assert drill.values_files == [str(PROJECT_ROOT / "deploy/helm/drill-values.yaml")]
    assert drill.chart == str(PROJECT_ROOT / "deploy/helm/acci-framework")
    recovery = helm.platform_for(drill=False)
    assert recovery.namespace == "acci" and recovery.values_files == [str(PROJECT_ROOT / "deploy/helm/dr-values.yaml")]
    assert recovery.app_url == "https://api.acci.test"
    compose = AcciDisasterRecovery(platform="compose", **base).platform_for(drill=True, stamp="1")
    assert compose.project == "acci-drill-1" and compose.files[1].endswith("deploy/compose/docker-compose.prod.yml")
    with pytest.raises(ConfigError, match="platform 'k8s' is not a backend; use local, helm or compose"):
        AcciDisasterRecovery(platform="k8s", **base).platform_for(drill=True)
    missing = AcciDisasterRecovery(platform="helm", helm_chart="deploy/helm/nope", **base)
    with pytest.raises(ConfigError, match=r"Helm chart .*deploy/helm/nope not found \(no Chart.yaml there\)"):
        missing.platform_for(drill=False)


def test_an_app_answering_garbage_is_one_line_not_a_traceback():
    """A port that answers bytes that are not HTTP (a wrong service behind the URL) gives the probes'
    one-line cause instead of letting http.client's BadStatusLine escape."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                conn.recv(65536)
                conn.sendall(b"SSH-2.0-OpenSSH\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        with pytest.raises(AcciOpsError, match=r"last: not an HTTP answer \(BadStatusLine\)"):
            wait_for_health(url, deadline_seconds=0.5, first_delay=0.1, log=lambda line: None)
        with pytest.raises(AcciOpsError, match=r"/metrics did not answer HTTP \(BadStatusLine\)"):
            check_metrics(url)
    finally:
        stop.set()
        thread.join(5)
        listener.close()
