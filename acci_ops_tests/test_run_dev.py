"""`./run dev` pushes its first image build, releases it to staging by itself (the daemon's sensor, a
release run deploying a container on the private podman service, the analysis passing), and stops
everything it started on SIGTERM and on SIGINT (Ctrl-C), and can start again.

TERM stops `dagster dev` and its children too, not only PostgreSQL and Redis: one left running
would hold the UI port, so the next `./run dev` could not bind. This test starts the real
script with its own free ports and its own dev state directory (ACCI_DEV_DIR), so a developer's
`.acci_dev` and port 3000 are never touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
UP_TIMEOUT_S = 180  # generous: under a full suite on 2 cores a dagster dev start took up to ~40 s
PUSH_TIMEOUT_S = 240  # generous: the README promises about a minute on a developer's machine
RELEASE_TIMEOUT_S = 240  # generous: sensor tick (30 s), deploy, a 6 x 1 s analysis, under a loaded suite
VERIFIED_QUERY = """query($key: AssetKeyInput!) { assetOrError(assetKey: $key) { ... on Asset {
  assetMaterializations(limit: 5) { partition metadataEntries { label ... on TextMetadataEntry { text } } } } } }"""
STOP_TIMEOUT_S = 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _proc_text(pid: str, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # gone meanwhile, or not ours to read
        return ""


def _leftovers(markers: list[str], session: int | None) -> dict[int, str]:
    """Processes (pid -> cmdline) that belong to this dev instance: in the ./run session, or whose
    command line or environment names its dev directory or one of its ports."""
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        stat = _proc_text(entry, "stat")
        cmdline = _proc_text(entry, "cmdline")
        if not stat or not cmdline:  # exited, or a zombie / kernel thread
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if fields[0] == "Z":
            continue
        in_session = session is not None and int(fields[3]) == session
        named = any(m in cmdline for m in markers) or any(m in _proc_text(entry, "environ") for m in markers)
        if in_session or named:
            found[int(entry)] = cmdline.strip()
    return found


def _kill_all(markers: list[str], session: int | None) -> None:
    for _ in range(3):
        left = _leftovers(markers, session)
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


def _wait_ui(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + UP_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"./run dev exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"Dagster UI did not answer on port {port} within {UP_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def _free_port_pair() -> int:
    """A port whose next one is free too (an environment's app and metrics ports)."""
    for _ in range(50):
        port = _free_port()
        if port < 65535 and _port_is_free(port + 1):
            return port
    raise AssertionError("no two consecutive free ports found")


def _release_status(ui: int, environment: str, version: str) -> str | None:
    """The status recorded on ``<environment>/acci_release``'s newest materialization of ``version``."""
    body = json.dumps({"query": VERIFIED_QUERY, "variables": {"key": {"path": [environment, "acci_release"]}}})
    request = urllib.request.Request(f"http://127.0.0.1:{ui}/graphql", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as r:
        asset = json.loads(r.read())["data"]["assetOrError"]
    for event in (asset or {}).get("assetMaterializations") or []:
        if event["partition"] == version:
            return next((e.get("text") for e in event["metadataEntries"] if e["label"] == "status"), None)
    return None


def _wait_verified(ui: int, app_port: int, version: str, proc: subprocess.Popen, log: Path) -> None:
    """Until staging's release of ``version`` is recorded verified, and the app there serves it."""
    deadline = time.monotonic() + RELEASE_TIMEOUT_S
    status = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"./run dev exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            status = _release_status(ui, "staging", version)
        except (OSError, ValueError, KeyError):
            status = None
        if status is not None:
            break
        time.sleep(1)
    problems = [line for line in log.read_text().splitlines() if "release_staging_on_new_image" in line and
                ("ERROR" in line or "error" in line)]
    assert status == "verified", (f"staging's release of {version}: {status or 'none within the timeout'}; "
                                  f"{problems[-3:] or log.read_text()[-3000:]}")
    with urllib.request.urlopen(f"http://127.0.0.1:{app_port}/version", timeout=5) as r:
        assert r.read().decode().strip() == version


def _engine_dir(log: Path) -> Path:
    """The podman service's directory, from the line ./run dev logs about the releases."""
    found = re.findall(r"containers of the podman service at unix://(\S+)/podman\.sock", log.read_text())
    assert found, f"./run dev logged no podman service:\n{log.read_text()[-2000:]}"
    return Path(found[-1])


def _wait_pushed(registry: int, tag: str, proc: subprocess.Popen, log: Path) -> None:
    """Until the dev registry serves ``tag`` of the fixture image (the sensor's first build)."""
    deadline = time.monotonic() + PUSH_TIMEOUT_S
    url = f"http://127.0.0.1:{registry}/v2/acci/acci-framework/tags/list"
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"./run dev exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if tag in (json.loads(r.read()).get("tags") or []):
                    return
        except (OSError, ValueError):
            pass
        time.sleep(1)
    blocked = [line for line in log.read_text().splitlines() if "not pushed" in line or "failed" in line.lower()]
    pytest.fail(f"./run dev pushed no {tag} within {PUSH_TIMEOUT_S} s: {blocked[-3:] or log.read_text()[-3000:]}")


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _default_sigint() -> None:
    # As a terminal starts it: Ctrl-C's SIGINT at its default, even when pytest itself was started
    # with SIGINT ignored (a background job of a script), which bash would inherit and never trap.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(env: dict[str, str], log: Path, *, sigint_ignored: bool) -> subprocess.Popen:
    """Start ./run dev in its own session. sigint_ignored: as a script's `cmd &` or nohup starts it
    (SIGINT ignored, inherited by every child; dagster dev then ignores SIGTERM too unless reset)."""
    with log.open("ab") as out:
        return subprocess.Popen([str(ROOT / "run"), "dev"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_ignore_sigint if sigint_ignored else _default_sigint)


def _stop_and_check(proc: subprocess.Popen, sig: signal.Signals, ports: list[int], markers: list[str],
                    log: Path) -> None:
    session = proc.pid
    proc.send_signal(sig)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"./run dev did not exit within {STOP_TIMEOUT_S} s of {sig.name}:\n{log.read_text()[-3000:]}")
    assert "did not stop within" not in log.read_text(), (
        f"dagster dev ignored the TERM ./run dev sent it on {sig.name} (it had to be killed):\n"
        f"{log.read_text()[-2000:]}")
    # Give just-killed children a moment to be reaped by init.
    deadline = time.monotonic() + 10
    while _leftovers(markers, session) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = _leftovers(markers, session)
    shown = {pid: cmd[:160] for pid, cmd in left.items()}
    assert not left, f"processes left running after {sig.name} of ./run dev: {shown}"
    busy = [p for p in ports if not _port_is_free(p)]
    assert not busy, f"ports still bound after {sig.name} of ./run dev: {busy}"


def test_run_dev_pushes_its_first_build_releases_it_to_staging_stops_everything_on_term_and_int_and_starts_again(
) -> None:
    """From a dev directory like the default ``$ROOT/.acci_dev`` (a dot component, here also under a
    directory with capitals): the first start builds, smoke-tests and pushes v2.6.0 without any
    ACCI_IMAGE_SMOKE_* setting, and the daemon releases it to staging, where it is verified and served;
    then TERM and INT each stop everything, the container engine's directory included."""
    top = Path(tempfile.mkdtemp(prefix="acci_dev_test_"))
    dev_dir = top / "Dev" / ".acci_dev"
    dev_dir.mkdir(parents=True)
    ui, pg, redis, registry = _free_port(), _free_port(), _free_port(), _free_port()
    staging, production = _free_port_pair(), _free_port_pair()
    ports = [ui, pg, redis, registry, staging, staging + 1, production, production + 1]
    # redis-server rewrites its command line to "redis-server 127.0.0.1:<port>".
    markers = [str(dev_dir), f"-p {ui}", f"--port {ui}", f"--port {redis}", f":{redis}", f":{pg}", f"-p {pg}",
               f"--port {registry}", str(dev_dir / "registry")]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCI_", "DAGSTER_"))}
    env.update(ACCI_DEV_DIR=str(dev_dir), ACCI_DEV_UI_PORT=str(ui), ACCI_DEV_PG_PORT=str(pg),
               ACCI_DEV_REDIS_PORT=str(redis), ACCI_DEV_REGISTRY_PORT=str(registry),
               ACCI_DEV_STAGING_PORT=str(staging), ACCI_DEV_PRODUCTION_PORT=str(production),
               ACCI_DEV_ANALYSIS_INTERVAL="1")
    log = top.parent / f"{top.name}.log"
    sessions: list[int] = []
    try:
        # First as a background job of a script would run (then only TERM can stop it), then as from
        # a terminal, stopped with Ctrl-C's SIGINT, on the same ports.
        for sig in (signal.SIGTERM, signal.SIGINT):
            proc = _start(env, log, sigint_ignored=sig == signal.SIGTERM)
            sessions.append(proc.pid)
            _wait_ui(ui, proc, log)
            if sig == signal.SIGTERM:
                _wait_pushed(registry, "2.6.0", proc, log)
                _wait_verified(ui, staging, "2.6.0", proc, log)
            engine = _engine_dir(log)
            markers.append(str(engine))
            started = log.read_text()
            # No start-up noise: neither Dagster warning ("dagster.yaml ... will not be used", "dev_command is
            # superseded") applies to how ./run dev runs dagster dev.
            assert "will not be used" not in started, started[-2000:]
            assert "is superseded" not in started, started[-2000:]
            _stop_and_check(proc, sig, ports, markers, log)
            assert not engine.exists(), f"the podman service's directory {engine} is still there after {sig.name}"
        # It ran in the test's own dev directory, not in the repository's .acci_dev.
        assert (dev_dir / "dagster_home" / "dagster.yaml").is_file(), f"ACCI_DEV_DIR {dev_dir} was not used"
        # Image builds were set up: the fixture repository and the registry's storage.
        assert (dev_dir / "acci-framework" / ".git").is_dir() and (dev_dir / "registry").is_dir()
    finally:
        for session in sessions:
            try:
                os.killpg(session, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _kill_all(markers, session)
        shutil.rmtree(top, ignore_errors=True)
        log.unlink(missing_ok=True)


FAKE_APT_GET = """#!/bin/sh
echo "$*" >> "$APT_CALLS"
[ "$1" = update ] && exit 0
echo "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 4242 (apt-get)" >&2
exit 100
"""

# What ./run needs before apt-get; the Debian tools it checks for (pg_dump, zstd, redis-server,
# docker-compose, runuser) are left out so they count as missing.
BASE_TOOLS = ["bash", "env", "id", "ls", "mkdir", "tee", "cat", "dirname", "mktemp", "grep", "rm", "python3"]


@pytest.mark.parametrize("command", ["dev", "test"])
def test_run_installs_what_the_command_needs_and_explains_a_held_dpkg_lock(tmp_path: Path, command: str) -> None:
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    for tool in BASE_TOOLS:
        (fakebin / tool).symlink_to(shutil.which(tool))
    apt = fakebin / "apt-get"
    apt.write_text(FAKE_APT_GET)
    apt.chmod(0o755)
    calls = tmp_path / "apt-calls"
    env = {"PATH": str(fakebin), "HOME": str(tmp_path), "APT_CALLS": str(calls),
           "ACCI_DEV_DIR": str(tmp_path / "dev")}
    out = subprocess.run([str(ROOT / "run"), command], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1, out.stderr
    install = [c for c in calls.read_text().splitlines() if c.startswith("install")]
    assert len(install) == 1, calls.read_text()
    # Both release with docker-compose and the docker CLI (docker.io) against a private podman service.
    assert {"postgresql-client-15", "zstd", "redis-server", "docker-compose", "docker.io"} <= set(install[0].split()), \
        install[0]
    hint = [line for line in out.stderr.splitlines() if "another apt/dpkg is running" in line]
    assert len(hint) == 1, out.stderr
    assert "ps aux | grep -E 'apt|dpkg'" in hint[0] and "wait" in hint[0], hint[0]
    # Nothing was started: the install failed first.
    assert not (tmp_path / "dev").exists()
