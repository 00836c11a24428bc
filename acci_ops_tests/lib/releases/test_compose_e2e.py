"""ComposeRelease end to end: real containers, no recording runner.

Debian's docker-compose 1.29 and the docker CLI drive a private podman API service (``podman_service``),
which pulls the release app's images by digest from the session registry, where the image pipeline pushed
them (``release_images``: caddy, whose request counters move with traffic and never with scrapes). The app
runs on the engine's default bridge with its ports published on 127.0.0.1; which version serves is read
from the app itself (``/version``), never from what acci_ops believes it deployed.
"""

from __future__ import annotations

import os
import select
import signal
import stat
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from acci_ops.lib.core.commands import child_env
from acci_ops.lib.releases.deployers import DeployFailed, RollbackTarget, parse_image_ref, write_private_yaml
from acci_ops_tests.fixtures.release_images import ComposeAppRelease, ReleaseImages, served_version
from acci_ops_tests.fixtures.release_servers import get

Make = Callable[..., ComposeAppRelease]


def app_requests(release: ComposeAppRelease) -> float:
    """Requests caddy counted on the app port (``caddy_http_request_duration_seconds`` count, every code)."""
    with urllib.request.urlopen(release.metrics_url, timeout=5) as answer:
        text = answer.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples if sample.name == "caddy_http_request_duration_seconds_count")


def test_a_digest_deploys_serves_and_its_metrics_move_with_traffic_only(
        release_images: ReleaseImages, compose_app_project: Make, tmp_path: Path) -> None:
    """v2.0.0 by digest: docker-compose up through the podman API, the app healthy through its published
    port, serving 2.0.0; the override file is 0600 in a 0700 directory and pins repo@digest; caddy's
    counters do not move when scraped and move by exactly the requests sent."""
    release = compose_app_project(tmp_path, "e2e-serve")
    image = release_images["2.0.0"].image_ref
    lines: list[str] = []
    result = release.deploy(image, None, lines.append)
    assert (result.image_ref, result.previous_image_ref) == (image, None)
    assert any("docker-compose 1.29" in line for line in lines), lines
    assert get(release.url + "/health") == 200
    assert served_version(release.url) == "2.0.0"
    assert release.current(lines.append).image_ref == image

    override = Path(release.run_dir) / release.override_name
    assert stat.S_IMODE(override.stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(release.run_dir).stat().st_mode) == 0o700
    assert yaml.safe_load(override.read_text())["services"] == {"app": {"image": image}}

    before = app_requests(release)
    assert app_requests(release) == before  # scrapes go to the uninstrumented metrics port
    for _ in range(15):
        assert get(release.url + "/") == 200
    assert app_requests(release) == before + 15


def test_an_unhealthy_release_fails_and_the_previous_digest_is_rolled_back_to(
        release_images: ReleaseImages, compose_app_project: Make, tmp_path: Path) -> None:
    """v2.2.0 (/health 503) after v2.0.0: the deploy raises DeployFailed naming the 503 and carrying
    v2.0.0's digest; rolling back to it puts v2.0.0 back, healthy and serving (its own /version says so)."""
    release = compose_app_project(tmp_path, "e2e-rollback")
    good, sick = release_images["2.0.0"].image_ref, release_images["2.2.0"].image_ref
    release.deploy(good, None, lambda _line: None)
    with pytest.raises(DeployFailed) as failed:
        release.deploy(sick, None, lambda _line: None)
    message = str(failed.value)
    assert "\n" not in message and "not healthy" in message and "HTTP 503" in message, message
    assert failed.value.previous_image_ref == good and not failed.value.rolled_back
    assert served_version(release.url) == "2.2.0"  # what a failed Compose deploy leaves: the new one, unhealthy

    result = release.rollback(RollbackTarget(image_ref=failed.value.previous_image_ref), lambda _line: None)
    assert (result.image_ref, result.previous_image_ref) == (good, sick)
    assert get(release.url + "/health") == 200
    assert served_version(release.url) == "2.0.0"


def kill_compose_up_midway(release: ComposeAppRelease, image_ref: str, workdir: Path) -> str:
    """Start ``docker-compose up -d`` of ``image_ref`` and SIGKILL its whole process group while the
    engine stops the old container (the project's stop signal is one caddy ignores, so the stop lasts the
    3 s grace period): the engine finishes that request and nothing more. Returns what compose printed."""
    override = write_private_yaml(workdir / "killed.release.yml", release.override(parse_image_ref(image_ref)))
    env = child_env(release.docker_env, allow=("PATH",))
    proc = subprocess.Popen(release.compose_argv("up", "--detach", override=override), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    printed = b""
    deadline = time.monotonic() + 30
    assert proc.stderr is not None
    try:
        while b"Recreating" not in printed:
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"docker-compose up never started recreating the app: {printed.decode()[-400:]}",
                            pytrace=False)
            ready, _, _ = select.select([proc.stderr], [], [], 0.5)
            if ready:
                printed += os.read(proc.stderr.fileno(), 4096)
        time.sleep(1)  # compose sends the stop right after saying so; the stop takes 3 s
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    return printed.decode(errors="replace")


def test_a_release_killed_midway_is_recovered_by_the_next_one(
        release_images: ReleaseImages, compose_app_project: Make, tmp_path: Path) -> None:
    """docker-compose up of v2.1.0 SIGKILLed while recreating the app: the project is left stuck (the old
    container stopped, nothing running), ``current`` says so, and ``recover_stuck`` with the last good
    digest brings v2.0.0 back, serving; the next deploy then goes through normally."""
    release = compose_app_project(tmp_path, "e2e-killed", stop_signal="SIGWINCH")
    good, next_one = release_images["2.0.0"].image_ref, release_images["2.1.0"].image_ref
    release.deploy(good, None, lambda _line: None)
    printed = kill_compose_up_midway(release, next_one, tmp_path)
    deadline = time.monotonic() + 15
    state = release.current(lambda _line: None)
    while not state.stuck and time.monotonic() < deadline:  # the stop in flight completes in the engine
        time.sleep(0.2)
        state = release.current(lambda _line: None)
    assert state.stuck and state.image_ref is None and state.status == "exited", (state, printed)

    lines: list[str] = []
    recovered = release.recover_stuck(lines.append, last_image_ref=good)
    assert recovered and "half-finished up" in recovered and good in recovered
    assert get(release.url + "/health") == 200
    assert served_version(release.url) == "2.0.0"
    state = release.current(lambda _line: None)
    assert (state.image_ref, state.stuck) == (good, False)
    assert release.deploy(next_one, None, lambda _line: None).previous_image_ref == good
    assert served_version(release.url) == "2.1.0"


def test_a_digest_missing_from_the_registry_fails_in_one_line_and_the_previous_version_serves(
        release_images: ReleaseImages, compose_app_project: Make, tmp_path: Path) -> None:
    """A well-formed digest the registry does not hold: DeployFailed in one line naming the image and
    the registry's answer (manifest unknown), before anything was changed; v2.0.0 still runs and serves."""
    release = compose_app_project(tmp_path, "e2e-missing")
    good = release_images["2.0.0"].image_ref
    release.deploy(good, None, lambda _line: None)
    missing = good.split("@")[0] + "@sha256:" + "0" * 64
    lines: list[str] = []
    with pytest.raises(DeployFailed) as failed:
        release.deploy(missing, None, lines.append)
    message = str(failed.value)
    assert "\n" not in message and missing in message, message
    assert failed.value.previous_image_ref == good
    assert "nothing was changed" in message and "manifest unknown" in message, message
    assert get(release.url + "/health") == 200
    assert served_version(release.url) == "2.0.0"
    assert release.current(lambda _line: None).image_ref == good
