"""deploy/dagster/docker/docker-compose.yml as Compose reads it: every service from the one acci_ops
image by digest, secrets only from the environment, the daemon the only holder of the engine's socket.
(It is run for real in test_dagster_docker.py, with host networking.)"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

DOCKER_DIR = Path(__file__).resolve().parents[2] / "deploy" / "dagster" / "docker"
IMAGE = "registry.example.test/acci/acci-ops@sha256:" + "d" * 64


def compose_config(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    env_file = tmp_path / "acci-ops.env"
    env_file.write_text((DOCKER_DIR / "acci-ops.env.example").read_text())
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ACCI_", "DAGSTER_", "DOCKER_"))}
    clean.update({"ACCI_OPS_ENV_FILE": str(env_file), **env})
    return subprocess.run(["docker-compose", "--project-directory", str(DOCKER_DIR), "-f",
                           str(DOCKER_DIR / "docker-compose.yml"), "config"], capture_output=True, text=True,
                          env=clean, timeout=60)


@pytest.mark.unit
def test_the_stack_is_one_image_by_digest_with_secrets_from_the_environment(tmp_path):
    done = compose_config(tmp_path, ACCI_OPS_IMAGE=IMAGE, DAGSTER_POSTGRES_PASSWORD="pg-Pw-1")
    assert done.returncode == 0, done.stderr
    doc = yaml.safe_load(done.stdout)
    services = doc["services"]
    assert set(services) == {"dagster-postgres", "acci-ops-code", "dagster-webserver", "dagster-daemon"}
    for name in ("acci-ops-code", "dagster-webserver", "dagster-daemon"):
        assert services[name]["image"] == IMAGE, name
    assert services["acci-ops-code"]["environment"]["DAGSTER_CURRENT_IMAGE"] == IMAGE
    assert services["acci-ops-code"]["command"][:3] == ["dagster", "api", "grpc"]
    sockets = [name for name, s in services.items() if any("/run/docker.sock" in v for v in s.get("volumes", []))]
    assert sockets == ["dagster-daemon"]
    assert "ACCI_DATABASE_URL" not in services["dagster-webserver"].get("environment", {})
    assert services["dagster-webserver"]["ports"][0]["host_ip"] == "127.0.0.1" \
        if isinstance(services["dagster-webserver"]["ports"][0], dict) \
        else services["dagster-webserver"]["ports"][0].startswith("127.0.0.1:")
    assert doc["networks"]["default"]["name"] == "acci-ops"


@pytest.mark.unit
@pytest.mark.parametrize(("env", "message"), [
    ({"DAGSTER_POSTGRES_PASSWORD": "x"}, "set ACCI_OPS_IMAGE to the acci_ops image by digest (repo@sha256:...)"),
    ({"ACCI_OPS_IMAGE": IMAGE}, "set DAGSTER_POSTGRES_PASSWORD (in .env)"),
])
def test_a_missing_image_or_password_stops_compose_naming_it(tmp_path, env, message):
    done = compose_config(tmp_path, **env)
    assert done.returncode != 0
    assert message in done.stderr
