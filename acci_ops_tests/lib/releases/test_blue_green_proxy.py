"""Blue/green switching through a real haproxy (Debian's 2.6, driven over its runtime API socket) in front of
real caddy processes as the two colors, with a bounded request loop running through the proxy during every
switch.

The HaproxySwitch tests use haproxy and caddy only. The BlueGreenRelease tests add the real release
analysis (health on the color's own port) and stand in for the Compose CLI only: no Docker engine serves
Compose projects here, so a recording runner plays `docker compose` (version, ps --format json, up, down)
and remembers which image each color project was given; what the colors answer is the real caddy on each
color's port.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from acci_ops.dev.request_loop import RequestLoop
from acci_ops.dev.servers import stop_process
from acci_ops.lib.core.commands import CommandResult
from acci_ops.lib.core.errors import AcciOpsError, ConfigError
from acci_ops.lib.core.net import free_port
from acci_ops.lib.releases.analysis import AnalysisSpec, MetricSpec
from acci_ops.lib.releases.blue_green import BlueGreenRelease, SwitchRecord, analysis_gate, verdict_of
from acci_ops.lib.releases.deployers import DeployFailed, RollbackTarget
from acci_ops.lib.releases.proxy import HaproxySwitch
from acci_ops_tests.fixtures.release_servers import CaddyApp, need, start_caddy

REPO = "registry.example/acci/acci-framework"
A, B, C = (f"{REPO}@sha256:{ch * 64}" for ch in "abc")
LOOP_REQUESTS = 2000
LOOP_RATE = 500.0  # requests per second, over 4 workers
HEALTH_ONLY = AnalysisSpec(interval_seconds=0.1, count=3, metrics=(MetricSpec("health", "health"),),
                           timeout_seconds=2)


@pytest.fixture(scope="module")
def caddies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CaddyApp]:
    """Three real caddy apps: blue and green (healthy) and a sick one (/health answers 503)."""
    need("haproxy", "haproxy")
    base = tmp_path_factory.mktemp("colors")
    apps: dict[str, CaddyApp] = {}
    try:
        for name, variant in (("blue", "healthy"), ("green", "healthy"), ("sick", "sick")):
            apps[name] = start_caddy(base / name, variant)
        yield apps
    finally:
        for app in apps.values():
            stop_process(app.process)


def port_of(app: CaddyApp) -> int:
    return int(app.url.rsplit(":", 1)[1])


def short_dir() -> Path:
    """A private directory with a short path: a unix socket path holds at most 107 characters."""
    return Path(tempfile.mkdtemp(prefix="bg-")) / "hx"


@pytest.fixture
def switch(caddies: dict[str, CaddyApp]):
    """A started haproxy with blue and green at the two healthy caddies; stopped and removed afterwards,
    and checked to be gone."""
    proxy = HaproxySwitch(short_dir(), free_port(), {"blue": ("127.0.0.1", port_of(caddies["blue"])),
                                                     "green": ("127.0.0.1", port_of(caddies["green"]))},
                          check_interval_ms=200, check_timeout=10, drain_timeout=10)
    proxy.start()
    pid = proxy.pid()
    try:
        yield proxy
    finally:
        proxy.stop()
        assert not proxy.running() and pid is not None and not alive(pid)
        assert not Path(proxy.run_dir).exists()
        Path(proxy.run_dir).parent.rmdir()


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def color_loop(url: str, total: int = LOOP_REQUESTS) -> RequestLoop:
    """A request loop at this file's rate, each answer labelled with the color that served it."""
    return RequestLoop(url, total=total, rate=LOOP_RATE, header="X-Acci-Color")


def switch_under_load(proxy: HaproxySwitch, to: str, url: str) -> tuple[RequestLoop, float]:
    loop = color_loop(url).start()
    loop.wait_sent(LOOP_REQUESTS // 3)
    result = proxy.switch_to(to)
    done = time.monotonic()
    loop.join()
    print(f"\nswitch to {to}: {loop.sent} requests sent, {len(loop.failures)} failed, "
          f"{dict(loop.labels())}, switch {result.seconds:.3f} s")
    return loop, done


@pytest.mark.integration  # starts haproxy and caddy of its own
def test_switch_and_switch_back_under_load_drop_no_request(switch: HaproxySwitch) -> None:
    """Blue -> green while 2000 requests run through haproxy: none fails, both colors served some, every
    request sent after the switch returned went to green; switching back (the rollback) likewise."""
    switch.switch_to("blue")
    assert switch.active() == "blue"
    loop, done = switch_under_load(switch, "green", switch.url)
    assert loop.failures == [] and loop.sent == LOOP_REQUESTS and len(loop.answers) == LOOP_REQUESTS
    assert loop.labels()["blue"] > 0 and loop.labels()["green"] > 0
    assert loop.labels_after(done) == {"green"}
    assert switch.active() == "green"
    back, done = switch_under_load(switch, "blue", switch.url)
    assert back.failures == [] and len(back.answers) == LOOP_REQUESTS
    assert back.labels()["blue"] > 0 and back.labels()["green"] > 0 and back.labels_after(done) == {"blue"}
    states = switch.states()
    assert states["blue"].live and states["green"].maint


@pytest.mark.integration  # starts haproxy and caddy of its own
def test_live_color_is_read_from_haproxy_by_a_new_process_object(switch: HaproxySwitch) -> None:
    """A second HaproxySwitch on the same directory (a restarted acci_ops) finds the running haproxy (same
    pid, not restarted) and reads the live color from it; the config on disk names it too, 0600 in 0700."""
    switch.switch_to("green")
    again = HaproxySwitch(switch.run_dir, switch.port, switch.servers)
    again.start()
    assert again.pid() == switch.pid() and again.active() == "green"
    assert "server green 127.0.0.1" in switch.config_path.read_text()
    assert "check disabled" in next(line for line in switch.config_path.read_text().splitlines()
                                    if line.strip().startswith("server blue"))
    assert stat.S_IMODE(switch.config_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(os.stat(switch.run_dir).st_mode) == 0o700


@pytest.mark.integration  # starts haproxy and caddy of its own
def test_a_color_failing_haproxy_health_check_is_never_switched_to(switch: HaproxySwitch,
                                                                   caddies: dict[str, CaddyApp]) -> None:
    """Green is pointed at the sick caddy without a reload (same pid, haproxy reports the new port); the
    switch to it is refused with the check's result, traffic stays on blue and green goes back to
    maintenance."""
    switch.switch_to("blue")
    pid = switch.pid()
    switch.set_address("green", "127.0.0.1", port_of(caddies["sick"]))
    assert switch.pid() == pid and switch.states()["green"].port == port_of(caddies["sick"])
    switch.check_timeout = 2
    with pytest.raises(AcciOpsError, match=r"green at 127\.0\.0\.1:\d+ did not pass haproxy's /health check "
                                           r"within 2 s \(last check: L7STS 503\); traffic stays on blue"):
        switch.switch_to("green")
    assert switch.active() == "blue" and switch.states()["green"].maint
    assert f"server green 127.0.0.1:{port_of(caddies['sick'])}" in switch.config_path.read_text()


@pytest.mark.integration  # starts haproxy and caddy of its own
def test_a_stale_passing_check_does_not_count_on_switching_back(switch: HaproxySwitch,
                                                               caddies: dict[str, CaddyApp]) -> None:
    """Blue passed its checks, went to maintenance and now points at the sick caddy: haproxy brings it back
    with its old L7OK result, yet the switch back waits for a fresh check and is refused; green stays live."""
    switch.switch_to("blue")
    switch.switch_to("green")
    switch.set_address("blue", "127.0.0.1", port_of(caddies["sick"]))
    switch.check_timeout = 2
    with pytest.raises(AcciOpsError, match=r"^blue at .* did not pass haproxy's /health check within 2 s "
                                           r"\(last check: L7STS 503\); traffic stays on green$"):
        switch.switch_to("blue")
    assert switch.active() == "green" and switch.states()["blue"].maint


@pytest.mark.integration  # starts haproxy and caddy of its own
def test_bad_input_fails_with_one_line(switch: HaproxySwitch) -> None:
    """Unknown colors, ports out of range, host names and refusals by haproxy are one readable line each."""
    with pytest.raises(ConfigError, match=r"^color 'red' is not blue or green$"):
        switch.switch_to("red")
    with pytest.raises(ConfigError, match=r"^port of green 70000 is not a TCP port \(1-65535\)$"):
        switch.set_address("green", "127.0.0.1", 70000)
    with pytest.raises(ConfigError, match=r"^address of green 'localhost' is not an IP address"):
        switch.set_address("green", "localhost", 8080)
    with pytest.raises(AcciOpsError, match=r"^haproxy refused `set server app/nope state ready`: No such server\.$"):
        switch._set("set server app/nope state ready")
    with pytest.raises(ConfigError, match=r"^haproxy servers must be exactly blue and green, got \['blue', 'red'\]"):
        HaproxySwitch(switch.run_dir, 1234, {"blue": ("127.0.0.1", 1), "red": ("127.0.0.1", 2)})
    with pytest.raises(ConfigError, match=r"^proxy port 0 is not a TCP port"):
        HaproxySwitch(switch.run_dir, 0, switch.servers)
    taken = HaproxySwitch(short_dir(), switch.port, switch.servers)
    try:
        with pytest.raises(AcciOpsError, match=r"^haproxy did not start on http://127\.0\.0\.1:\d+ \(exit 1\): "
                                               r"\[ALERT\].*cannot bind socket"):
            taken.start()
    finally:
        taken.stop()
        Path(taken.run_dir).parent.rmdir()


def test_missing_socket_is_named(tmp_path: Path) -> None:
    """Without a running haproxy the runtime API call names the missing socket."""
    idle = HaproxySwitch(tmp_path / "hx", 1234, {"blue": ("127.0.0.1", 1), "green": ("127.0.0.1", 2)})
    with pytest.raises(AcciOpsError, match=r"^haproxy runtime API socket .*/hx/admin\.sock does not exist: "
                                           r"haproxy is not running"):
        idle.active()


# --- BlueGreenRelease: real haproxy, real caddy colors, real analysis, the Compose CLI played back ----------

class FakeCompose:
    """Plays `docker compose` v2 and remembers the image `up` gave each project (read from the override
    file it was given), which `ps --format json` then reports; `down` forgets it."""

    def __init__(self) -> None:
        self.images: dict[str, str] = {}
        self.calls: list[tuple[list[str], dict]] = []

    def __call__(self, argv, env=None, timeout=None, on_line=None, check=True, capture_stdout=False, allow_env=(),
                 **kwargs) -> CommandResult:
        argv = list(argv)
        self.calls.append((argv, dict(env or {})))
        out = b""
        project = argv[argv.index("--project-name") + 1] if "--project-name" in argv else None
        if argv[-1] == "version":
            out = b"Docker Compose version v2.24.5\n"
        elif "up" in argv:
            override = next(f for f in argv if f.endswith(".release.yml"))
            self.images[project] = yaml.safe_load(Path(override).read_text())["services"]["app"]["image"]
        elif "down" in argv:
            self.images.pop(project, None)
        elif "ps" in argv and project in self.images:
            out = (json.dumps({"Name": f"{project}-app-1", "Image": self.images[project], "State": "running",
                               "Health": ""}) + "\n").encode()
        return CommandResult(tuple(argv), 0, 0.01, (), out if capture_stdout else b"")

    def verbs(self, project: str) -> list[str]:
        return [next(v for v in ("up", "down", "ps", "version") if v in argv) for argv, _ in self.calls
                if project in argv]


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def release(caddies: dict[str, CaddyApp]):
    """A BlueGreenRelease whose colors' ports are the two healthy caddies, gated by the real analysis."""
    compose, clock = FakeCompose(), Clock()
    verdicts: list[str] = []

    def analyse(target):
        result = analysis_gate(HEALTH_ONLY)(target)
        verdicts.append(f"{target.app_url} {result.verdict}")
        return result

    base = short_dir()
    target = BlueGreenRelease("acci", str(base), free_port(), analyse, compose=["docker", "compose"],
                              ports={"blue": port_of(caddies["blue"]), "green": port_of(caddies["green"])},
                              runner=compose, check_interval_ms=200, check_timeout=10, drain_timeout=10,
                              now=clock)
    target.fake, target.clock, target.verdicts = compose, clock, verdicts
    try:
        yield target
    finally:
        target.switch.stop()
        for path in sorted(base.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        base.rmdir()
        base.parent.rmdir()


@pytest.mark.integration  # starts haproxy and caddy of its own
def test_deploy_goes_to_the_idle_color_and_switches_after_analysis_without_dropping(release) -> None:
    """First deploy goes to blue; the next to green on green's own port (ACCI_FRAMEWORK_PORT in compose's
    environment), judged there, then switched with 2000 requests running: zero failures. The result names
    the proxy and the digest replaced; a new BlueGreenRelease object (a restarted acci_ops) finds green live."""
    first = release.deploy(A, None, print)
    assert (first.app_url, first.previous_image_ref, release.live(print)) == (release.switch.url, None, "blue")
    loop = color_loop(release.switch.url).start()
    loop.wait_sent(LOOP_REQUESTS // 3)
    result = release.deploy(B, None, print)
    loop.join()
    print(f"\ndeploy B -> green: {loop.sent} sent, {len(loop.failures)} failed, {dict(loop.labels())}, "
          f"deploy {result.seconds:.3f} s")
    assert loop.failures == [] and loop.labels()["blue"] > 0 and loop.labels()["green"] > 0
    assert (result.previous_image_ref, result.image_ref) == (A, B)
    ups = [env for argv, env in release.fake.calls if "up" in argv]
    assert [e["ACCI_FRAMEWORK_PORT"] for e in ups] == [str(release.ports["blue"]), str(release.ports["green"])]
    assert release.verdicts == [f"http://127.0.0.1:{release.ports['blue']} passed",
                                f"http://127.0.0.1:{release.ports['green']} passed"]
    again = BlueGreenRelease("acci", release.run_dir, release.proxy_port, release.analyse, ports=release.ports,
                             compose=["docker", "compose"], runner=release.fake)
    assert again.live(print) == "green" and again.current(print).image_ref == B
    assert again.kept(print)[:2] == ("blue", A)


@pytest.mark.integration  # starts haproxy and caddy of its own
def test_rollback_inside_the_window_is_a_switch_back_without_compose_up(release) -> None:
    """Inside the window a rollback to the kept digest only switches haproxy back (no `up`), with 2000
    requests running: zero failures; rolling back to what is already live does nothing."""
    release.deploy(A, None, print)
    release.deploy(B, None, print)
    ups_before = sum("up" in argv for argv, _ in release.fake.calls)
    loop = color_loop(release.switch.url).start()
    loop.wait_sent(LOOP_REQUESTS // 3)
    rolled = release.rollback(RollbackTarget(image_ref=A), print)
    loop.join()
    print(f"\nrollback -> blue: {loop.sent} sent, {len(loop.failures)} failed, {dict(loop.labels())}, "
          f"rollback {rolled.seconds:.3f} s")
    assert loop.failures == [] and loop.labels()["green"] > 0 and loop.labels()["blue"] > 0
    assert release.live(print) == "blue" and (rolled.image_ref, rolled.previous_image_ref) == (A, B)
    assert sum("up" in argv for argv, _ in release.fake.calls) == ups_before
    assert release.rollback(RollbackTarget(image_ref=A), print).seconds == 0.0


@pytest.mark.integration  # starts haproxy and caddy of its own
def test_a_color_failing_analysis_is_removed_and_traffic_never_moves(release, caddies) -> None:
    """Green answers from the sick caddy: its analysis fails on green's own port, green is brought down,
    DeployFailed says traffic never moved, and haproxy still sends every request to blue."""
    release.deploy(A, None, print)
    release.ports = {**release.ports, "green": port_of(caddies["sick"])}
    release.colors["green"].app_url = caddies["sick"].url
    loop = color_loop(release.switch.url, total=300).start()
    with pytest.raises(DeployFailed, match=r"the analysis of .*@sha256:b{64} on the green color "
                                           r"\(http://127\.0\.0\.1:\d+\) failed: health failed .* traffic never "
                                           r"moved from blue; the green color was removed") as failed:
        release.deploy(B, None, print)
    loop.join()
    assert failed.value.rolled_back and failed.value.previous_image_ref == A
    assert loop.failures == [] and set(loop.labels()) == {"blue"}
    assert release.live(print) == "blue" and release.fake.verbs("acci-green")[-1] == "down"
    assert "acci-green" not in release.fake.images


@pytest.mark.integration  # starts haproxy and caddy of its own
def test_expire_removes_the_old_color_after_the_window_then_rollback_redeploys(release) -> None:
    """29 minutes after the switch the old color stays; at 30 it is brought down (`down`, never the live
    color); a rollback then deploys the digest again to the idle color, with analysis and switch."""
    release.deploy(A, None, print)
    release.deploy(B, None, print)
    switched = release.clock.now
    assert release.expire(switched + timedelta(minutes=29), print) is None
    line = release.expire(switched + timedelta(minutes=30), print)
    assert line.startswith("removed the blue color (") and "rollback window of 30 min ended" in line
    assert release.kept(print) is None and release.record().removed
    assert release.fake.verbs("acci-blue")[-1] == "ps" and "down" in release.fake.verbs("acci-blue")
    rolled = release.rollback(RollbackTarget(image_ref=A), print)
    assert release.live(print) == "blue" and rolled.image_ref == A and release.verdicts[-1].endswith("passed")
    with pytest.raises(AcciOpsError, match=r"the blue color is live; switch away from it before removing it"):
        release.remove("blue", print)


def test_bad_blue_green_input_fails_with_one_line(tmp_path: Path) -> None:
    """Configuration errors and unreadable state are single lines naming the value."""
    def ok(target):
        return "passed"

    with pytest.raises(ConfigError, match=r"^the proxy port and the two colors' ports must differ"):
        BlueGreenRelease("acci", str(tmp_path), 8081, ok)
    with pytest.raises(ConfigError, match=r"^port of the green color 0 is not a TCP port"):
        BlueGreenRelease("acci", str(tmp_path), 9000, ok, ports={"blue": 8081, "green": 0})
    with pytest.raises(ConfigError, match=r"^rollback_window_minutes must be a number of minutes >= 0, got -1"):
        BlueGreenRelease("acci", str(tmp_path), 9000, ok, rollback_window_minutes=-1)
    with pytest.raises(ConfigError, match=r"^blue/green needs analyse"):
        BlueGreenRelease("acci", str(tmp_path), 9000, None)
    with pytest.raises(ConfigError, match=r"not a verdict"):
        verdict_of(3)
    assert verdict_of(True) == ("passed", "") and verdict_of("inconclusive") == ("inconclusive", "")
    with pytest.raises(AcciOpsError, match=r"switch record .* is not readable \(KeyError\); delete it"):
        SwitchRecord.from_json("{}", "x.json")
    release = BlueGreenRelease("acci", str(tmp_path), 9000, ok)
    with pytest.raises(ConfigError, match=r"keeps no revisions: roll back to an image_ref"):
        release.rollback(RollbackTarget(revision=3), print)
