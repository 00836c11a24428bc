"""remove_stale on a ContainerTools base of its own: it removes what is ours and stale, and refuses
everything else (other names, symlinks, live owners, fresh items, other bases, other labels), with
real podman/buildah storage and real processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from acci_ops.lib.core.commands import process_start_ticks
from acci_ops.lib.images.cleanup import remove_stale
from acci_ops.lib.images.tools import RUN_ROOT_MARKER, ContainerTools, auth_file, claim, run_root_for

DAY = 86400.0


def age(path: Path, seconds: float = 2 * DAY) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)
    return path


@pytest.fixture
def tools(tmp_path: Path) -> Iterator[ContainerTools]:
    made = ContainerTools(tmp_path / "base")
    yield made
    made.remove_storage()


@pytest.fixture
def run_roots() -> Iterator[list[Path]]:
    """Run roots a test makes in the real temp directory; removed afterwards whatever happened."""
    made: list[Path] = []
    yield made
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


def run_root(owner: Path, made: list[Path], *, marker: bool = True) -> Path:
    path = run_root_for(owner)
    path.mkdir()
    made.append(path)
    if marker:
        (path / RUN_ROOT_MARKER).write_text(f"{owner}\n")
    (path / "storage").mkdir()
    return age(path)


def test_only_our_stale_directories_are_removed(tools: ContainerTools, tmp_path: Path,
                                                run_roots: list[Path]) -> None:
    base = tools.base
    stale = base / "build-0123456789abcdef"
    (stale / "src").mkdir(parents=True)
    (stale / "src" / "Dockerfile").write_text("FROM scratch\n")
    locked = stale / "buildah" / "storage" / "vfs" / "dir" / "x" / "usr"
    locked.mkdir(parents=True)
    (locked / "bin").write_text("layer content")
    locked.chmod(0o555)  # image layers hold read-only directories
    (stale / "oci").mkdir()
    live = base / "build-1111111111111111"
    live.mkdir()
    claim(live)
    fresh = base / "build-2222222222222222"
    fresh.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("not ours")
    others = [base / "build-ABCDEF0123456789", base / "build-0123", base / "builds", base / "build-0123456789abcdefx"]
    for other in others:
        other.mkdir()
    (base / "build-3333333333333333").write_text("a file, not a build directory")
    os.symlink(outside, base / "build-4444444444444444")
    others += [base / "build-3333333333333333", base / "build-4444444444444444"]

    auth = tools.auth_dir
    auth.mkdir(mode=0o700)
    stale_auth = auth / "acci-auth-abcd1234"
    crowded = auth / "acci-auth-efgh5678"
    misnamed = auth / "acci-auth-toolong123"
    live_auth = auth / "acci-auth-live0000"
    for directory in (stale_auth, crowded, misnamed, live_auth):
        directory.mkdir(mode=0o700)
        (directory / "auth.json").write_text('{"auths": {}}')
    (crowded / "notes.txt").write_text("something auth_file never writes")
    claim(live_auth)

    ours_marked = run_root((stale / "buildah").resolve(), run_roots)
    ours_legacy = run_root((stale / "oci").resolve(), run_roots, marker=False)  # made before the marker existed
    foreign = run_root(tmp_path / "elsewhere" / "build-5555555555555555" / "buildah", run_roots)
    unknown = run_root(tmp_path / f"unrelated-{uuid.uuid4().hex}", run_roots, marker=False)
    live_root = run_root((live / "buildah").resolve(), run_roots)

    for path in (stale, live, *others, stale_auth, crowded, misnamed, live_auth):
        age(path)
    lines: list[str] = []
    removed = remove_stale(tools, DAY, log=lines.append)

    assert sorted(removed) == sorted([
        f"removed build directory {stale} ({2 * DAY:.0f} s old)",
        f"removed registry auth directory {stale_auth} ({2 * DAY:.0f} s old)",
        f"removed run root {ours_marked} of {(stale / 'buildah').resolve()}",
        f"removed run root {ours_legacy} of a removed build directory",
    ])
    assert lines == removed  # nothing failed, nothing else was said
    for kept in (live, fresh, *others, crowded, misnamed, live_auth, foreign, unknown, live_root):
        assert kept.exists() or kept.is_symlink(), kept
    assert (outside / "keep").read_text() == "not ours"
    for gone in (stale, stale_auth, ours_marked, ours_legacy):
        assert not gone.exists()


def test_a_failing_item_is_logged_and_the_rest_goes_on(tools: ContainerTools) -> None:
    """A build directory holding an immutable file (chattr +i: not even root may delete it)."""
    stuck = _mkdir(tools.base / "build-0123456789abcdef")
    (stuck / "held").write_text("x")
    made = subprocess.run(["chattr", "+i", str(stuck / "held")], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.fail("chattr +i failed (the test needs root and a temp directory on ext4/xfs, not tmpfs): "
                    f"{made.stderr.strip()}")
    try:
        other = _mkdir(tools.base / "build-fedcba9876543210")
        age(stuck)
        age(other)
        lines: list[str] = []
        removed = remove_stale(tools, DAY, log=lines.append)
    finally:
        subprocess.run(["chattr", "-i", str(stuck / "held")], check=True)
    assert removed == [f"removed build directory {other} ({2 * DAY:.0f} s old)"]
    (problem,) = [line for line in lines if line not in removed]
    assert problem.startswith(f"cleanup: could not remove build directory {stuck}: ")
    assert "Operation not permitted" in problem and "\n" not in problem


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _sleep() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "300"], start_new_session=True)


def test_recorded_groups_are_killed_only_when_their_acci_ops_is_gone(tools: ContainerTools) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()  # an acci_ops process that is gone
    orphan, guarded, reused = _sleep(), _sleep(), _sleep()
    try:
        tools.pid_dir.mkdir()

        def record(proc: subprocess.Popen, owner: tuple[int, int], ticks_offset: int = 0) -> None:
            ticks = (process_start_ticks(proc.pid) or 0) + ticks_offset
            pidfile = tools.pid_dir / f"{uuid.uuid4().hex}.pid"
            pidfile.write_text(f"{proc.pid} {ticks} {owner[0]} {owner[1]}\n")
            age(pidfile)

        record(orphan, (dead.pid, 1))
        record(guarded, (os.getpid(), process_start_ticks(os.getpid()) or 0))  # its acci_ops still runs
        record(reused, (dead.pid, 1), ticks_offset=-1)  # the number now names another process
        removed = remove_stale(tools, DAY)
        assert len(removed) == 1
        assert removed[0].startswith(f"killed process group {orphan.pid} left by a killed acci_ops (")
        assert orphan.wait(10) == -signal.SIGKILL
        assert guarded.poll() is None and reused.poll() is None
    finally:
        for proc in (orphan, guarded, reused):
            proc.kill()
            proc.wait()


def test_only_our_smoke_containers_are_removed(tools: ContainerTools) -> None:
    tools.buildah("from", "--name", "empty", "scratch")
    tools.buildah("commit", "-q", "empty", "localhost/empty:1")
    containers = {
        "acci-smoke-0123456789ab": "io.acci-ops.smoke=1",  # ours
        "acci-smoke-bbbbbbbbbbbb": None,  # ours, made before the label existed
        "acci-smoke-aaaaaaaaaaaa": "io.acci-ops.smoke=0",  # someone else's label value
        "acci-smoke-mine": "io.acci-ops.smoke=1",  # not a name the smoke test makes
        "webapp": "io.acci-ops.smoke=1",
    }
    for name, label in containers.items():
        tools.podman("create", "--name", name, *(["--label", label] if label else []), "localhost/empty:1", "/x")
    for name in ("localhost/acci-smoke-cccccccccccc:latest", "localhost/acci-smoke-notours:latest"):
        tools.podman("tag", "localhost/empty:1", name)  # names a smoke test's load gives (or not) an image
    removed = remove_stale(tools, 0)
    assert sorted(line.rsplit(" (", 1)[0] for line in removed) == [
        "removed smoke container acci-smoke-0123456789ab", "removed smoke container acci-smoke-bbbbbbbbbbbb",
        "removed smoke image name localhost/acci-smoke-cccccccccccc:latest"]
    left = json.loads(tools.podman("ps", "-a", "--format", "json", capture_stdout=True).stdout)
    assert sorted(n for row in left for n in row["Names"]) == ["acci-smoke-aaaaaaaaaaaa", "acci-smoke-mine", "webapp"]
    images = json.loads(tools.podman("images", "--format", "json", capture_stdout=True).stdout)
    assert {n for row in images for n in row["Names"]} == {"localhost/acci-smoke-notours:latest", "localhost/empty:1"}
    assert remove_stale(tools, DAY) == []  # the rest is either not ours or too young


def test_auth_files_go_where_a_cleanup_finds_them(tools: ContainerTools) -> None:
    with auth_file("127.0.0.1:5000", "acci-ci", "Cleanup-PW-SECRET", directory=tools.auth_dir) as path:
        assert path is not None and path.parent.parent == tools.auth_dir
        assert (tools.auth_dir.stat().st_mode & 0o777, path.parent.stat().st_mode & 0o777) == (0o700, 0o700)
        assert path.stat().st_mode & 0o777 == 0o600
        assert remove_stale(tools, 0) == []  # in use: its owner (this process) lives
    assert list(tools.auth_dir.iterdir()) == []
