"""A build or smoke test whose Python process is interrupted or killed leaves nothing running and,
after ``remove_stale``, nothing on disk or in the container storage: real buildah, runc and podman,
in child Python processes signalled the way a run's termination (or the OOM killer) ends them.

The build is ``FROM scratch`` + the host's static busybox + ``RUN ["/bin/busybox", "sh", "-c",
"sleep 600"]``: a RUN step needs a shell-capable base, and without qemu it runs for the host's
platform only, so these builds are for the host platform only."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from acci_ops.lib.core.commands import descendants, process_start_ticks, run_command
from acci_ops.lib.images.build import LocalIndex
from acci_ops.lib.images.cleanup import remove_stale
from acci_ops.lib.images.tools import ContainerTools, run_root_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
SLEEP_DOCKERFILE = 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "sh", "-c", "sleep 600"]\n'

BUILD_CHILD = textwrap.dedent("""
    import signal, sys
    from pathlib import Path
    from dagster._core.errors import DagsterExecutionInterruptedError
    from acci_ops.lib.images.build import build_index
    from acci_ops.lib.images.smoke import host_platform_name
    from acci_ops.lib.images.source import Checkout
    from acci_ops.lib.images.tools import ContainerTools

    def terminated(signum, frame):
        # What Dagster raises in the step's thread when the run is terminated.
        raise DagsterExecutionInterruptedError("Execution was interrupted")

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, terminated)
    base, context, workdir = sys.argv[1:4]
    checkout = Checkout(Path(context), "0" * 40, 0, "test", False, None, "local")
    try:
        build_index(ContainerTools(Path(base)), checkout, [host_platform_name()], workdir=Path(workdir),
                    timeout=900, log=lambda line: print(line, flush=True))
    except (KeyboardInterrupt, DagsterExecutionInterruptedError) as exc:
        print(f"interrupted: {type(exc).__name__}", flush=True)
        sys.exit(3)
""")

SMOKE_CHILD = textwrap.dedent("""
    import shutil, sys
    from pathlib import Path
    from acci_ops.lib.images.smoke import SmokeConfig, smoke_test
    from acci_ops.lib.images.tools import ContainerTools, auth_file, claim

    base, oci_source, workdir = sys.argv[1:4]
    tools = ContainerTools(Path(base))
    work = Path(workdir)
    work.mkdir()
    claim(work)
    ContainerTools(work / "buildah")  # a build's own storage, as build_index makes it
    shutil.copytree(oci_source, work / "oci", symlinks=True)
    with auth_file("127.0.0.1:5000", "acci-ci", "Cleanup-test-PW-SECRET", directory=tools.auth_dir):
        smoke_test(tools, work / "oci", SmokeConfig(timeout_seconds=600), log=lambda line: print(line, flush=True))
""")


def alive(pid: int, ticks: int | None) -> bool:
    """True while the process that had ``pid`` at ``ticks`` runs (zombies and reuses do not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z" and process_start_ticks(pid) == ticks


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def processes_naming(path: Path) -> list[str]:
    """Live processes whose command line names ``path`` (conmon, buildah, podman of that storage)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and str(path) in cmdline(int(name)) and alive(int(name), process_start_ticks(int(name))):
            found.append(f"{name}: {cmdline(int(name))[:120]}")
    return found


def wait_for(what: str, check: Callable[[], object], seconds: float = 120) -> object:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {seconds:.0f} s")


def runtime_bundles(base: Path) -> list[str]:
    """runc containers whose bundle lies under ``base`` (RUN steps of its builds)."""
    rows = json.loads(run_command(["runc", "list", "--format", "json"], capture_stdout=True).stdout or b"null") or []
    return [row["id"] for row in rows if str(row.get("bundle", "")).startswith(f"{base}/")]


@pytest.fixture
def tools(tmp_path: Path) -> Iterator[ContainerTools]:
    made = ContainerTools(tmp_path / "tools")
    yield made
    remove_stale(made, 0)  # a failed test leaves nothing running either
    made.remove_storage()


@pytest.fixture
def sleep_context(tmp_path: Path) -> Path:
    context = tmp_path / "context"
    context.mkdir()
    shutil.copyfile("/bin/busybox", context / "busybox")
    (context / "busybox").chmod(0o755)
    (context / "Dockerfile").write_text(SLEEP_DOCKERFILE)
    return context


def child(script: str, *args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def build_processes(parent: int) -> dict[int, int | None]:
    """The build's processes below ``parent`` once its RUN step's ``sleep 600`` runs: pid -> ticks."""
    below = descendants(parent)
    if not any(cmdline(pid) == "sleep 600" for pid in below):
        return {}
    return {pid: process_start_ticks(pid) for pid in below}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_a_build_ended_during_a_run_step_leaves_nothing(tools: ContainerTools, sleep_context: Path,
                                                        sig: signal.Signals) -> None:
    """SIGINT (KeyboardInterrupt) and SIGTERM (Dagster's interrupt, raised in the waiting thread):
    run_command kills buildah's group and the RUN step's container at once. SIGKILL: buildah dies
    with its parent (parent-death signal), but the RUN step's runc container, in a session and PID
    namespace of its own, does not: remove_stale finds it by its bundle in the build directory."""
    workdir = tools.base / f"build-{uuid.uuid4().hex[:16]}"
    proc = child(BUILD_CHILD, tools.base, sleep_context, workdir)
    try:
        seen = wait_for("the RUN step's sleep 600", lambda: build_processes(proc.pid))
        assert isinstance(seen, dict)
        assert any("buildah" in cmdline(pid) for pid in seen)
        proc.send_signal(sig)
        output = proc.communicate(timeout=60)[0].decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 3, output
        expected = "KeyboardInterrupt" if sig == signal.SIGINT else "DagsterExecutionInterruptedError"
        assert f"interrupted: {expected}" in output
        time.sleep(0.5)  # killed with the interrupt, not by the cleanup: look before it runs
        assert [cmdline(pid) for pid, ticks in seen.items() if alive(pid, ticks)] == []
    lines = remove_stale(tools, 0)
    assert [cmdline(pid) for pid, ticks in seen.items() if alive(pid, ticks)] == []
    assert not workdir.exists() and not run_root_for(workdir / "buildah").exists()
    assert runtime_bundles(tools.base) == []
    assert f"removed build directory {workdir} (" in "\n".join(lines)


def test_a_smoke_test_killed_leaves_nothing_after_remove_stale(tools: ContainerTools,
                                                               fixture_builds: Callable[[str], LocalIndex]) -> None:
    """SIGKILL during the smoke test of fixture v1.2.0 (its /health never answers 2xx, the timeout
    is 600 s): its container (and conmon), auth directory, build directory and build run root
    stay until remove_stale, which removes every one of them."""
    workdir = tools.base / f"build-{uuid.uuid4().hex[:16]}"
    proc = child(SMOKE_CHILD, tools.base, fixture_builds("v1.2.0").oci_dir, workdir)

    def running() -> list[dict]:
        result = tools.podman("ps", "--format", "json", capture_stdout=True, check=False)
        rows = (json.loads(result.stdout or b"[]") or []) if result.returncode == 0 else []
        return [row for row in rows if str((row.get("Names") or [""])[0]).startswith("acci-smoke-")]

    try:
        (container,) = wait_for("the smoke container", running)
        name = container["Names"][0]
        pid = int(tools.podman("container", "inspect", "--format", "{{.State.Pid}}", name).last_line)
        app = (pid, process_start_ticks(pid))
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    # What the kill left: the container, the auth directory (holding the password), the build's directory.
    assert alive(*app) and list(tools.auth_dir.iterdir()) and workdir.exists()
    assert run_root_for(workdir / "buildah").exists()
    lines = remove_stale(tools, 0)
    assert not alive(*app)
    assert json.loads(tools.podman("ps", "-a", "--format", "json", capture_stdout=True).stdout or b"[]") == []
    images = json.loads(tools.podman("images", "--format", "json", capture_stdout=True).stdout or b"[]") or []
    assert [n for row in images for n in row.get("Names") or [] if "acci-smoke-" in n] == []
    assert list(tools.auth_dir.iterdir()) == []
    assert not workdir.exists() and not run_root_for(workdir / "buildah").exists()
    assert processes_naming(tools.base) == []
    text = "\n".join(lines)
    assert f"removed smoke container {name} (" in text and f"removed build directory {workdir} (" in text
    assert f"removed registry auth directory {tools.auth_dir}/acci-auth-" in text
