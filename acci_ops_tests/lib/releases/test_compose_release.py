"""ComposeRelease: pin the app service to a digest in a generated override file, `up` again, roll back by
deploying the previous digest, and bring back a half-finished `up`.

Here the Compose CLI is driven through a recording runner standing in for run_command (test_compose_e2e.py
deploys on a real engine): it records each exact argv (with the override file's content and mode
at that moment) and plays back what `docker compose ps --format json`, `docker ps --quiet` and
`docker inspect` print. The pieces that need no engine run for real: the Compose CLI found on this machine
is detected through the real `version` commands, the generated override is merged by the real Compose CLI
(`config`) with the shipped files, and docker-compose 1.x's /health wait talks to a real HTTP server.
"""

from __future__ import annotations

import json
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from acci_ops.lib.core.commands import COMPOSE_ENV, CommandFailed, CommandResult, run_command
from acci_ops.lib.core.errors import AcciOpsError, ConfigError
from acci_ops.lib.platform.backends import AppRuntime, ComposePlatform
from acci_ops.lib.postgres.urls import parse_database_url
from acci_ops.lib.releases.compose_release import DEFAULT_FILES, INSPECT_FORMAT, ComposeRelease
from acci_ops.lib.releases.deployers import DeployFailed, RollbackTarget, parse_image_ref
from acci_ops_tests.fixtures.deploy import COMPOSE_DIR, compose_commands

REPO = "registry.example/acci/acci-framework"
A = f"{REPO}@sha256:{'a' * 64}"
B = f"{REPO}@sha256:{'b' * 64}"
SECRET = "compose-Pw-release-77"
RUNTIME = AppRuntime(parse_database_url(f"postgresql://acci:{SECRET}@db:5432/acci"), "redis://cache:6379")
BASE, PROD = DEFAULT_FILES
V2 = b"Docker Compose version v2.24.5\n"
V1 = b"docker-compose version 1.29.2, build unknown\ndocker-py version: 5.0.3\n"
ID_OLD, ID_NEW = "1" * 64, "2" * 64


def ps_v2(*containers: tuple[str, str, str]) -> bytes:
    """What `docker compose ps --all --format json app` prints since Compose 2.21: one object a line."""
    return "".join(json.dumps({"ID": "abc", "Name": name, "Image": image, "Service": "app", "State": state,
                               "Health": "", "Project": "acci"}) + "\n" for name, image, state in containers).encode()


def inspect_v1(*containers: tuple[str, str, str]) -> bytes:
    """What `docker inspect --format INSPECT_FORMAT` prints."""
    return "".join(json.dumps({"name": f"/{name}", "image": image, "state": state, "health": health})
                   + "\n" for name, image, state, health in ((*c, "") if len(c) == 3 else c for c in containers)
                   ).encode()


class Compose:
    """Stands in for run_command with the Compose CLI's answers. ``versions`` maps an argv prefix to what
    its `version` prints (None: the binary is not installed; an int: it exits with that code); ``ps`` and
    ``inspect`` are played back one per call (the last one repeats)."""

    def __init__(self, versions, ps=(b"",), inspect=(b"",), ids=(b"",), up_code=0, pull_code=0,
                 local_images=()) -> None:
        self.versions = versions
        self.ps, self.inspect, self.ids = list(ps), list(inspect), list(ids)
        self.up_code, self.pull_code = up_code, pull_code
        self.local_images = set(local_images)  # what `docker image inspect` finds on the engine
        self.calls: list[dict] = []

    @staticmethod
    def _next(answers: list) -> bytes:
        return answers.pop(0) if len(answers) > 1 else answers[0]

    def __call__(self, argv, env=None, timeout=None, on_line=None, check=True, capture_stdout=False,
                 allow_env=(), **kwargs) -> CommandResult:
        argv = list(argv)
        files = {}
        for i, arg in enumerate(argv):
            if arg == "--file" and argv[i + 1].endswith(".release.yml"):
                path = Path(argv[i + 1])
                files[argv[i + 1]] = (path.read_text(), stat.S_IMODE(path.stat().st_mode),
                                      stat.S_IMODE(path.parent.stat().st_mode))
        self.calls.append({"argv": argv, "env": dict(env or {}), "timeout": timeout, "files": files,
                           "allow_env": tuple(allow_env)})
        code, out = 0, b""
        if argv[-1] == "version":
            answer = self.versions.get(tuple(argv[:-1]))
            if answer is None:
                raise ConfigError(f"{argv[0]} not found; install it or fix the configured path")
            code, out = (answer, b"") if isinstance(answer, int) else (0, answer)
        elif argv[0] == "docker" and argv[1] == "inspect":
            out = self._next(self.inspect)
        elif argv[:2] == ["docker", "ps"]:
            out = self._next(self.ids)
        elif "ps" in argv:
            out = self._next(self.ps)
        elif argv[:3] == ["docker", "image", "inspect"]:
            code = 0 if argv[-1] in self.local_images else 1
        elif argv[:2] == ["docker", "pull"]:
            code = self.pull_code
        elif "up" in argv:
            code = self.up_code
        result = CommandResult(tuple(argv), code, 0.01, ("container app exited (1)",) if code else (),
                               out if capture_stdout else b"")
        if check and code:
            raise CommandFailed(result)
        return result

    def argvs(self) -> list[list[str]]:
        return [c["argv"] for c in self.calls]


def release(runner, **kwargs) -> ComposeRelease:
    return ComposeRelease(**{"project": "acci", "runner": runner, "timeout_seconds": 300, **kwargs})


def files(*extra: str) -> list[str]:
    return ["--project-name", "acci", "--file", BASE, "--file", PROD, *extra]


def test_v2_deploy_pins_the_digest_in_a_private_override(tmp_path):
    """With Compose v2 the deploy records the running digest, writes an override (0600, in a 0700 dir,
    gone afterwards) pinning services.app.image to the digest, and runs `up --detach --wait --wait-timeout`;
    the database password travels in the environment only."""
    compose = Compose({("docker", "compose"): V2}, ps=[ps_v2(("acci-app-1", A, "running"))])
    lines: list[str] = []
    result = release(compose).deploy(B, RUNTIME, lines.append)
    assert (result.app_url, result.revision, result.previous_image_ref, result.image_ref) == (
        "http://127.0.0.1:8080", None, A, B)
    version, ps, present, pull, up = compose.argvs()
    assert version == ["docker", "compose", "version"]
    assert ps == ["docker", "compose", *files(), "ps", "--all", "--format", "json", "app"]
    assert present == ["docker", "image", "inspect", "--format", "{{.Id}}", B]
    assert pull == ["docker", "pull", B]
    assert compose.calls[2]["env"] == compose.calls[3]["env"] == {}  # neither gets an app variable
    override = up[up.index("up") - 1]
    assert up == ["docker", "compose", *files("--file", override), "up", "--detach", "--wait", "--wait-timeout", "300"]
    content, mode, dir_mode = compose.calls[4]["files"][override]
    assert yaml.safe_load(content) == {"version": "3.8", "services": {"app": {"image": B}}}
    assert content.startswith("# Written by acci_ops for a release")
    assert (mode, dir_mode) == (0o600, 0o700) and not Path(override).exists()
    env = compose.calls[4]["env"]
    assert env["POSTGRES_PASSWORD"] == SECRET and env["DATABASE_URL"] == RUNTIME.database.to_url()
    assert all(SECRET not in " ".join(argv) for argv in compose.argvs())
    assert all(c["allow_env"] == COMPOSE_ENV for c in compose.calls)
    assert compose.calls[4]["timeout"] == 360
    assert "compose: using docker compose 2.24 (up --wait)" in lines


def test_the_override_is_kept_in_run_dir_and_replaced_each_deploy(tmp_path):
    compose = Compose({("docker", "compose"): V2})
    target = release(compose, run_dir=str(tmp_path / "state"))
    target.deploy(A, None, print)
    target.deploy(B, None, print)
    kept = tmp_path / "state" / "acci.release.yml"
    assert yaml.safe_load(kept.read_text())["services"]["app"]["image"] == B
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600 and stat.S_IMODE(kept.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in kept.parent.iterdir()) == ["acci.release.yml"]
    assert [a[-1] == "version" for a in compose.argvs()].count(True) == 1  # detected once


def test_v1_is_chosen_when_docker_compose_v2_is_missing_and_it_polls_instead_of_waiting():
    """`docker compose version` failing (no plugin) selects docker-compose 1.29, which has no --wait: after
    `up --detach` the app containers are polled with docker inspect until they run the new digest, then
    the app's /health must answer (a real HTTP server here)."""
    app = HealthApp([503, 200])
    try:
        compose = Compose({("docker", "compose"): 1, ("docker-compose",): V1},
                          ids=[ID_OLD.encode() + b"\n", ID_OLD.encode() + b"\n", ID_NEW.encode() + b"\n"],
                          inspect=[inspect_v1(("acci_app_1", A, "running")),
                                   inspect_v1(("acci_app_1", B, "restarting")),
                                   inspect_v1(("acci_app_1", B, "running", "healthy"))])
        lines: list[str] = []
        result = release(compose, app_url=app.url, poll_seconds=0.01).deploy(B, RUNTIME, lines.append)
    finally:
        app.stop()
    assert result.previous_image_ref == A and result.image_ref == B
    argvs = compose.argvs()
    assert argvs[:2] == [["docker", "compose", "version"], ["docker-compose", "version"]]
    assert argvs[2] == ["docker", "ps", "--all", "--quiet", "--no-trunc",
                        "--filter", "label=com.docker.compose.project=acci",
                        "--filter", "label=com.docker.compose.service=app",
                        "--filter", "label=com.docker.compose.oneoff=False"]
    assert argvs[3] == ["docker", "inspect", "--format", INSPECT_FORMAT, ID_OLD]
    assert argvs[4:6] == [["docker", "image", "inspect", "--format", "{{.Id}}", B], ["docker", "pull", B]]
    up = argvs[6]
    assert up == ["docker-compose", *files("--file", up[up.index("up") - 1]), "up", "--detach"]
    assert argvs[7:] == [argvs[2], ["docker", "inspect", "--format", INSPECT_FORMAT, ID_OLD], argvs[2],
                         ["docker", "inspect", "--format", INSPECT_FORMAT, ID_NEW]]
    assert app.hits == 2
    assert "compose: using docker-compose 1.29 (no up --wait: polling docker inspect, then /health)" in lines


def test_v1_deploy_that_never_comes_up_fails_with_the_last_state():
    compose = Compose({("docker", "compose"): 1, ("docker-compose",): V1}, ids=[ID_NEW.encode()],
                      inspect=[inspect_v1(("acci_app_1", A, "running")), inspect_v1(("acci_app_1", B, "restarting"))])
    with pytest.raises(DeployFailed, match=r"the app of compose project acci did not run within 1 s with .*@sha256:b+ "
                                           r"\(polled docker inspect; docker-compose 1.x has no up --wait\): "
                                           r"acci_app_1 restarting") as caught:
        release(compose, timeout_seconds=1, poll_seconds=0.05).deploy(B, None, print)
    assert (caught.value.previous_image_ref, caught.value.rolled_back) == (A, False)


def test_v1_unhealthy_app_fails_the_deploy():
    app = HealthApp([503])
    try:
        compose = Compose({("docker", "compose"): 1, ("docker-compose",): V1}, ids=[ID_NEW.encode()],
                          inspect=[inspect_v1(("acci_app_1", B, "running"))])
        with pytest.raises(DeployFailed, match=r"runs .*@sha256:b+ but is not healthy: .*/health did not answer 2xx "
                                               r"within 1 s .*last: HTTP 503"):
            release(compose, app_url=app.url, timeout_seconds=1).deploy(B, None, print)
    finally:
        app.stop()


def test_compose_detection_by_version_not_by_name():
    """A docker-compose that is Compose v2 (a standalone v2 binary) gets --wait; a missing docker binary
    falls through to docker-compose; neither found is a ConfigError naming both attempts."""
    compose = Compose({("docker-compose",): b"Docker Compose version v2.20.3\n"})
    release(compose).deploy(A, None, print)
    assert compose.argvs()[-1][-4:] == ["--detach", "--wait", "--wait-timeout", "300"]
    assert compose.argvs()[0] == ["docker", "compose", "version"]
    with pytest.raises(ConfigError, match=r"no Docker Compose CLI works here \(docker compose: not found; "
                                          r"docker-compose: not found\); install Compose v2"):
        release(Compose({})).deploy(A, None, print)
    with pytest.raises(ConfigError, match=r"`/opt/dc version` printed no version number"):
        release(Compose({("/opt/dc",): b"hello\n"}), compose=["/opt/dc"]).deploy(A, None, print)
    app = HealthApp([200])
    try:
        old = Compose({("docker", "compose"): b"Docker Compose version v2.0.1\n"},
                      ps=[b"", ps_v2(("acci-app-1", A, "running"))])
        release(old, app_url=app.url).deploy(A, None, print)
    finally:
        app.stop()
    up = next(argv for argv in old.argvs() if "up" in argv)
    assert up[-2:] == ["up", "--detach"]  # --wait arrived in 2.1: polled like 1.x
    assert old.argvs()[-1][-5:] == ["ps", "--all", "--format", "json", "app"] and app.hits == 1


def test_ps_json_list_format_and_a_tag_that_is_no_rollback_target():
    """Compose before 2.21 prints a JSON list; a running image named by tag is not a digest to roll
    back to, and the deploy says so."""
    listed = json.dumps([{"Name": "acci-app-1", "Image": "acci-framework:latest", "State": "running"}]).encode()
    compose = Compose({("docker", "compose"): V2}, ps=[listed])
    lines: list[str] = []
    assert release(compose).deploy(A, None, lines.append).previous_image_ref is None
    assert ("compose: no running app container of project acci is pinned by digest (running); there is no "
            "previous digest to roll back to") in lines


HOSTILE = [
    (b'{"Name": "x"', "a line of compose ps of project acci is not valid JSON"),
    (b'["acci-app-1"]', r"entry 0 of compose ps of project acci is not an object \(got str\)"),
    (b'{"Name": "acci-app-1", "State": "running"}\n', r"'Image' of container 'acci-app-1' is not a string"),
    (b'{"Name": 7}\n', r"'Name' of entry 0 of compose ps of project acci is not a string \(got int\)"),
    (b'{"Name": "a", "Image": "i", "State": ["running"]}\n', r"'State' of container 'a' is not a string \(got list\)"),
]


@pytest.mark.parametrize(("answer", "message"), HOSTILE)
def test_hostile_ps_json_is_a_one_line_error(answer, message):
    with pytest.raises(AcciOpsError, match=message) as caught:
        release(Compose({("docker", "compose"): V2}, ps=[answer])).deploy(A, None, print)
    assert "\n" not in str(caught.value)


def test_hostile_v1_answers():
    v1 = {("docker", "compose"): 1, ("docker-compose",): V1}
    with pytest.raises(AcciOpsError, match="docker ps printed '--rm', not a container id"):
        release(Compose(v1, ids=[b"--rm\n"])).current(print)
    with pytest.raises(AcciOpsError, match=r"'state' of container 'acci_app_1' is not a string \(got null\)"):
        release(Compose(v1, ids=[ID_OLD.encode()], inspect=[b'{"name": "/acci_app_1", "image": "x"}\n'])).current(print)


def test_stuck_up_is_brought_back_with_the_last_recorded_image():
    """App containers left created/exited by a half-finished `up` are recovered by running up again with
    the last deployed digest the caller recorded, saying so; with no stuck container nothing runs."""
    stuck = ps_v2(("acci-app-1", B, "exited"), ("acci-app-2", B, "created"))
    compose = Compose({("docker", "compose"): V2}, ps=[stuck])
    target = release(compose)
    state = target.current(print)
    assert (state.status, state.stuck, state.image_ref) == ("created,exited", True, None)
    lines: list[str] = []
    line = target.recover_stuck(lines.append, last_image_ref=A, runtime=RUNTIME)
    assert line == ("compose project acci was left with acci-app-1 exited, acci-app-2 created by a half-finished up; "
                    f"ran up again with {A}")
    assert line in lines
    up = compose.calls[-1]
    override = up["argv"][up["argv"].index("up") - 1]
    assert yaml.safe_load(up["files"][override][0])["services"]["app"]["image"] == A
    assert up["env"]["POSTGRES_PASSWORD"] == SECRET
    with pytest.raises(AcciOpsError, match="has app containers left by a half-finished up \\(acci-app-1 exited, "
                                           "acci-app-2 created\\); give the last deployed image"):
        target.recover_stuck(print)
    healthy = Compose({("docker", "compose"): V2}, ps=[ps_v2(("acci-app-1", A, "running"))])
    assert release(healthy).recover_stuck(print, last_image_ref=B) is None
    assert not any("up" in argv for argv in healthy.argvs())


def test_rollback_deploys_the_previous_digest_again():
    compose = Compose({("docker", "compose"): V2}, ps=[ps_v2(("acci-app-1", B, "running"))])
    result = release(compose).rollback(RollbackTarget(image_ref=A), print, runtime=RUNTIME)
    assert (result.image_ref, result.previous_image_ref) == (A, B)
    up = compose.calls[-1]
    assert yaml.safe_load(up["files"][up["argv"][up["argv"].index("up") - 1]][0])["services"]["app"]["image"] == A
    with pytest.raises(ConfigError, match="compose project acci keeps no revisions: roll back to an image_ref"):
        release(compose).rollback(RollbackTarget(revision=3), print)


def test_a_failed_up_is_a_deploy_failure_naming_the_rollback_target():
    compose = Compose({("docker", "compose"): V2}, ps=[ps_v2(("acci-app-1", A, "running"))], up_code=1)
    with pytest.raises(DeployFailed, match=r"compose up of .*@sha256:b+ in project acci failed: docker failed "
                                           r"\(exit code 1\): container app exited \(1\)") as caught:
        release(compose).deploy(B, None, print)
    assert (caught.value.previous_image_ref, caught.value.rolled_back) == (A, False)


def test_config_errors(tmp_path):
    base = tmp_path / "docker-compose.yml"
    base.write_text("services:\n  web: {image: x}\n  db: {image: y}\n")
    with pytest.raises(ConfigError, match=r"service 'app' is not defined in .*compose.yml \(services: db, web\)"):
        ComposeRelease(project="acci", files=[str(base)])
    assert ComposeRelease(project="acci", files=[str(base)], service="web").service == "web"
    with pytest.raises(ConfigError, match="Compose project name 'Acci Prod' must be lowercase"):
        ComposeRelease(project="Acci Prod")
    with pytest.raises(ConfigError, match="Compose file /nope.yml not found"):
        ComposeRelease(project="acci", files=["/nope.yml"])
    with pytest.raises(ConfigError, match="compose timeout must be a positive number of seconds, got 0"):
        ComposeRelease(project="acci", timeout_seconds=0)
    with pytest.raises(ConfigError, match=r"compose must be an argv list such as \['docker', 'compose'\]"):
        ComposeRelease(project="acci", compose="docker compose")
    with pytest.raises(ConfigError, match="is not repo@sha256"):
        release(Compose({("docker", "compose"): V2})).deploy("acci-framework:latest", None, print)
    platform = ComposePlatform(project="acci-prod", files=[BASE, PROD], app_url="http://10.0.0.5:8080")
    target = ComposeRelease.from_platform(platform, service="app")
    assert (target.project, list(target.files), target.app_url, target.compose) == (
        "acci-prod", [BASE, PROD], "http://10.0.0.5:8080", None)


# --- the real Compose CLI, without an engine -------------------------------------------------------

def test_the_compose_cli_of_this_machine_is_detected():
    """Through the real `version` commands: Compose v2 when `docker compose` works here, else
    docker-compose 1.x (Debian's 1.29)."""
    found = compose_commands()
    if not found:
        pytest.fail("neither docker-compose nor `docker compose` is installed; install the Debian package: "
                    "apt-get install docker-compose", pytrace=False)
    lines: list[str] = []
    flavor = ComposeRelease(project="acci").flavor(lines.append)
    assert list(flavor.argv) == (["docker", "compose"] if ["docker", "compose"] in found else ["docker-compose"])
    assert flavor.waits == (flavor.version >= (2, 1)) and lines == [f"compose: using {flavor.describe()}"]


def test_real_compose_merges_the_override_over_the_shipped_files(compose, tmp_path):
    """The real Compose CLI (`config`, no engine needed) merges the generated override with the shipped
    base and prod files: the app runs exactly the digest, the other services are untouched, and
    docker-compose 1.x accepts the override's version key."""
    target = ComposeRelease(project="acci", run_dir=str(tmp_path), compose=compose)
    image = parse_image_ref(B)
    path = tmp_path / target.override_name
    path.write_text(yaml.safe_dump(target.override(image)))
    done = run_command([*compose, "--project-name", "acci", "--file", BASE, "--file", PROD, "--file", str(path),
                        "config"], env={"POSTGRES_PASSWORD": SECRET}, capture_stdout=True, timeout=60,
                       allow_env=COMPOSE_ENV)
    merged = yaml.safe_load(done.stdout)
    assert merged["services"]["app"]["image"] == B
    assert merged["services"]["db"]["image"] == "postgres:15-alpine"
    assert Path(BASE).parent == COMPOSE_DIR


class HealthApp:
    """A real HTTP app: /health answers the given statuses in turn (the last one repeats)."""

    def __init__(self, codes: list[int]) -> None:
        self.hits = 0
        codes = list(codes)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.hits += 1
                self.send_response(codes.pop(0) if len(codes) > 1 else codes[0])
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_image_that_cannot_be_pulled_changes_nothing():
    """The digest is pulled before `up`: a pull the engine refuses fails the deploy, names the image and
    says nothing was changed, and no `up` runs, so the old containers keep serving."""
    compose = Compose({("docker", "compose"): V2}, ps=[ps_v2(("acci-app-1", A, "running"))], pull_code=1)
    with pytest.raises(DeployFailed, match=r"pulling .*@sha256:b+ failed, nothing was changed in project acci: "
                                           r"docker failed \(exit code 1\)") as caught:
        release(compose).deploy(B, None, print)
    assert (caught.value.previous_image_ref, caught.value.rolled_back) == (A, False)
    assert not any("up" in argv for argv in compose.argvs())


def test_a_digest_already_on_the_engine_is_not_pulled_so_a_rollback_needs_no_registry():
    """Rolling back to a digest the engine still holds runs no pull (the registry may be the thing that
    is down): `docker image inspect` finds it and `up` follows directly."""
    compose = Compose({("docker", "compose"): V2}, ps=[ps_v2(("acci-app-1", B, "running"))], pull_code=1,
                      local_images=[A])
    lines: list[str] = []
    result = release(compose).rollback(RollbackTarget(image_ref=A), lines.append, runtime=RUNTIME)
    assert result.image_ref == A
    assert not any(argv[:2] == ["docker", "pull"] for argv in compose.argvs())
    assert f"compose: {A} is already on the engine, not pulled" in lines
