"""deploy/compose: the guide's docker-compose.yml + docker-compose.prod.yml, checked with the real Compose CLI.
Neither a Docker engine nor a Kubernetes cluster is available here, so these tests validate and inspect the
merged configuration (`config`), they never start containers.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest
import yaml

from acci_ops_tests.fixtures.deploy import COMPOSE_DIR

BASE = COMPOSE_DIR / "docker-compose.yml"
PROD = COMPOSE_DIR / "docker-compose.prod.yml"
PASSWORD = "compose-Pw-31337"
UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def run_compose(compose: list[str], *args: str, env: dict[str, str] | None = None,
                files: tuple[os.PathLike[str], ...] = (BASE, PROD)) -> subprocess.CompletedProcess[str]:
    """`<compose> -f ... <args>` with a controlled environment: no stray POSTGRES_* from the caller's shell."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "ACCI_FRAMEWORK_", "LOG_LEVEL"))}
    clean.update(env or {})
    file_args = [arg for f in files for arg in ("-f", str(f))]
    # --project-directory keeps a developer's stray deploy/compose/.env out of the picture.
    return subprocess.run([*compose, "--project-directory", str(COMPOSE_DIR), *file_args, *args],
                          capture_output=True, text=True, env=clean, cwd=COMPOSE_DIR, timeout=60)


def to_bytes(size: str | int) -> int:
    """Compose memory sizes: '2G' (docker-compose 1.29 echoes the input) or 2147483648 (Compose v2)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([bkmg]?)b?", str(size).strip().lower())
    assert match, f"unparsable size {size!r}"
    return int(float(match[1]) * UNITS[match[2]])


@pytest.fixture(scope="module")
def merged(compose: list[str]) -> dict:
    done = run_compose(compose, "config", env={"POSTGRES_PASSWORD": PASSWORD})
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def test_config_valid_with_password(compose: list[str]) -> None:
    """`config -q` accepts base + prod when POSTGRES_PASSWORD is set (validation only; no Docker engine here)."""
    done = run_compose(compose, "config", "-q", env={"POSTGRES_PASSWORD": PASSWORD})
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("files", [(BASE,), (BASE, PROD)], ids=["base", "base+prod"])
def test_config_fails_clearly_without_password(compose: list[str], files: tuple) -> None:
    """Without POSTGRES_PASSWORD the config is rejected and the message says what to set; there is no default
    password to fall back on (validation only; no Docker engine here)."""
    done = run_compose(compose, "config", "-q", files=files)
    assert done.returncode != 0
    assert "set POSTGRES_PASSWORD" in done.stderr


def test_password_comes_from_environment(merged: dict) -> None:
    """The password reaches PostgreSQL and the app's DATABASE_URL from the environment; the literal `password`
    of the guide is gone (merged config only; no Docker engine here)."""
    services = merged["services"]
    assert services["db"]["environment"]["POSTGRES_PASSWORD"] == PASSWORD
    assert services["app"]["environment"]["DATABASE_URL"] == f"postgres://acci:{PASSWORD}@db:5432/acci"
    assert services["app"]["environment"]["REDIS_URL"] == "redis://cache:6379"
    assert services["app"]["environment"]["LOG_LEVEL"] == "info"
    for name in (BASE, PROD):
        text = name.read_text()
        assert "password@" not in text and "POSTGRES_PASSWORD=password" not in text


def test_prod_limits_and_restart_policies(merged: dict) -> None:
    """The guide's production limits/reservations and `restart: always` survive the merge (config only; no
    Docker engine here to enforce them)."""
    expected = {  # service: (limit cpus, limit memory, reservation cpus, reservation memory)
        "app": (2, "2G", 1, "1G"),
        "db": (4, "8G", 2, "4G"),
        "cache": (1, "1G", None, "512M"),
    }
    services = merged["services"]
    for name, (cpus, memory, res_cpus, res_memory) in expected.items():
        resources = services[name]["deploy"]["resources"]
        assert float(resources["limits"]["cpus"]) == cpus, name
        assert to_bytes(resources["limits"]["memory"]) == to_bytes(memory), name
        reservations = resources["reservations"]
        if res_cpus is None:
            assert "cpus" not in reservations, name
        else:
            assert float(reservations["cpus"]) == res_cpus, name
        assert to_bytes(reservations["memory"]) == to_bytes(res_memory), name
        assert services[name]["restart"] == "always", name
    logging = services["app"]["logging"]
    assert logging["driver"] == "json-file"
    assert logging["options"] == {"max-size": "50m", "max-file": "10"}


def test_healthchecks_make_up_wait_meaningful(merged: dict) -> None:
    """db is healthy on pg_isready over TCP, cache on redis-cli ping, and the app starts only after both are
    healthy; the distroless app has no in-container curl healthcheck (acci_ops probes /health from outside).
    Config only: no Docker engine here to run `up --wait`."""
    services = merged["services"]
    db_test = " ".join(services["db"]["healthcheck"]["test"])
    assert db_test.startswith("CMD-SHELL") and "pg_isready" in db_test
    assert services["cache"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    depends = services["app"]["depends_on"]
    assert depends["db"]["condition"] == "service_healthy"
    assert depends["cache"]["condition"] == "service_healthy"
    assert "curl" not in str(services["app"].get("healthcheck", ""))
    assert services["app"]["read_only"] is True
    ports = services["app"]["ports"]
    assert any(str(p.get("target")) == "8080" and str(p.get("published")) == "8080" for p in ports)
    assert "ports" not in services["db"] and "ports" not in services["cache"]
    assert {"postgres_data", "redis_data"} <= set(merged["volumes"])
    assert services["db"]["image"] == "postgres:15-alpine" and services["cache"]["image"] == "redis:7-alpine"


OVERLAY = COMPOSE_DIR / "docker-compose.acci-ops.yml"


def test_drill_overlay_wires_the_app_to_what_acci_ops_passes(compose: list[str]) -> None:
    """With the drill overlay the app's DATABASE_URL and REDIS_URL are exactly the ones in the environment
    (not the stack's own db and cache) and the app is published on ACCI_FRAMEWORK_PORT (merged config only;
    no Docker engine here)."""
    database_url = "postgresql://acci:p%40ss%2Fw0rd@scratch.internal:5432/acci_scratch_1?sslmode=require"
    env = {"POSTGRES_PASSWORD": PASSWORD, "DATABASE_URL": database_url, "REDIS_URL": "redis://drill-cache:6379/4",
           "ACCI_FRAMEWORK_PORT": "18181"}
    done = run_compose(compose, "config", env=env, files=(BASE, PROD, OVERLAY))
    assert done.returncode == 0, done.stderr
    app = yaml.safe_load(done.stdout)["services"]["app"]
    assert app["environment"]["DATABASE_URL"] == database_url
    assert app["environment"]["REDIS_URL"] == "redis://drill-cache:6379/4"
    assert [str(p.get("published")) for p in app["ports"]] == ["18181"]
    # The overlay refuses to run without them rather than fall back to the stack's own database.
    missing = run_compose(compose, "config", "-q", env={"POSTGRES_PASSWORD": PASSWORD}, files=(BASE, PROD, OVERLAY))
    assert missing.returncode != 0 and "acci_ops passes DATABASE_URL" in missing.stderr


def test_compose_platform_drill_resolves_to_the_drill_stack(compose: list[str]) -> None:
    """The exact command and environment ComposePlatform uses for a drill, resolved by the real Compose CLI
    (`config` in place of `up`): the app gets the drill database, the drill Redis and the free port returned."""
    from acci_ops.lib.core.commands import CommandResult
    from acci_ops.lib.platform.backends import AppRuntime, ComposePlatform
    from acci_ops.lib.postgres.urls import parse_database_url

    seen: dict = {}

    def resolve(argv, env=None, timeout=None, on_line=None, **kwargs) -> CommandResult:
        argv = list(argv)
        done = subprocess.run([*argv[:argv.index("up")], "config"], capture_output=True, text=True, timeout=60,
                              cwd=COMPOSE_DIR, env={**{k: v for k, v in os.environ.items()
                                                       if not k.startswith(("POSTGRES_", "ACCI_FRAMEWORK_"))},
                                                    **(env or {})})
        assert done.returncode == 0, done.stderr
        seen.update(yaml.safe_load(done.stdout))
        return CommandResult(tuple(argv), 0, 0.0, ())

    target = parse_database_url("postgresql://acci_scratch:p%40ss%2Fw0rd%23@scratch.internal:5432/acci_scratch_1"
                                "?sslmode=require")
    runtime = AppRuntime(target, "redis://drill-cache:6379/4")
    platform = ComposePlatform(project="acci-drill-test", files=[str(BASE), str(PROD)], compose=compose,
                               runner=resolve, drill=True)
    url = platform.up(runtime, lambda line: None)
    app = seen["services"]["app"]
    assert parse_database_url(app["environment"]["DATABASE_URL"]) == target
    assert app["environment"]["REDIS_URL"] == "redis://drill-cache:6379/4"
    [port] = [str(p.get("published")) for p in app["ports"]]
    assert url == f"http://127.0.0.1:{port}" and port != "8080"
