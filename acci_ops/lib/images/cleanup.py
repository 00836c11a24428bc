"""Remove what killed image builds left behind: their processes, work directories, registry auth
files, run roots, RUN-step containers and smoke containers.

A build that ends normally removes all of it itself. One that is SIGKILLed (OOM, a node drain, a
run worker killed after its termination timed out) cannot: its ``build-*`` directory (layers, a
checkout), a ``/tmp/acci-run-*`` run root, an auth directory holding the registry password and an
``acci-smoke-*`` container (with its throwaway database credentials) stay, and a tool it started
may run on: buildah itself dies with its parent (``run_command``'s parent-death signal), but a
RUN step under ``--isolation oci`` is a runc container in a session and PID namespace of its own,
which nothing kills. An interrupted build (its group killed) still leaves that container's runc
state. ``remove_stale`` is called at the start of every build and by the ``scratch_cleanup``
schedule; it removes only what is both **ours** (our name patterns, under this ``ContainerTools``
base or naming it, our smoke label) and **stale** (older than the limit, and its owner process,
when recorded, gone), and never fails the caller over one item: a problem is logged and it goes on.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from acci_ops.lib.core.commands import group_members, kill_group, process_start_ticks, run_command
from acci_ops.lib.images.tools import (
    AUTH_PREFIX,
    OWNER_FILE,
    RUN_ROOT_MARKER,
    RUN_ROOT_PREFIX,
    ContainerTools,
    run_root_for,
)

SMOKE_LABEL = "io.acci-ops.smoke"
BUILD_DIR = re.compile(r"^build-[0-9a-f]{16}$")  # pipeline._new_workdir
AUTH_DIR = re.compile(rf"^{AUTH_PREFIX}[A-Za-z0-9_]{{8}}$")  # tempfile.mkdtemp's 8 characters
RUN_ROOT = re.compile(rf"^{RUN_ROOT_PREFIX}[0-9a-f]{{12}}$")  # tools.run_root_for
SMOKE_NAME = re.compile(r"^acci-smoke-[0-9a-f]{12}$")  # smoke.smoke_test
SMOKE_IMAGE = re.compile(r"^localhost/acci-smoke-[0-9a-f]{12}(:latest)?$")  # engines.PodmanEngine.load
PIDFILE = re.compile(r"^[0-9a-f]{32}\.pid$")  # ContainerTools._run
AUTH_CONTENT = frozenset({"auth.json", OWNER_FILE})

Log = Callable[[str], None]


def _alive(pid: int, ticks: int) -> bool:
    """True when process ``pid`` exists and is the one that started at ``ticks`` (not a reuse)."""
    return pid > 0 and process_start_ticks(pid) == ticks


def _pair(text: str, offset: int = 0) -> tuple[int, int] | None:
    try:
        parts = text.split()
        return int(parts[offset]), int(parts[offset + 1])
    except (IndexError, ValueError):
        return None


def owner_alive(directory: Path) -> bool:
    """True when ``directory``'s ``OWNER_FILE`` names a process that still runs."""
    try:
        owner = _pair((directory / OWNER_FILE).read_text())
    except OSError:
        return False
    return owner is not None and _alive(*owner)


def _age(path: Path, now: float) -> float:
    return now - path.lstat().st_mtime


def _ours(path: Path) -> bool:
    """A real directory (not a symlink to somewhere else) owned by this user."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid()


def _rmtree(path: Path) -> None:
    """``shutil.rmtree`` that also removes read-only directories (image layers hold 0555 ones)."""

    def retry(function, failed, _exc_info) -> None:  # noqa: ANN001
        os.chmod(os.path.dirname(failed), 0o700)
        function(failed)

    shutil.rmtree(path, onerror=retry)


def kill_recorded(pidfile: Path) -> str | None:
    """Kill the process group a ``run_command`` pidfile records, when the acci_ops process that
    started it is gone and the group is still the one recorded; remove the file. Returns what was
    killed, or None."""
    text = pidfile.read_text()
    group, owner = _pair(text), _pair(text, 2)
    if group is None or group[0] <= 1:
        pidfile.unlink(missing_ok=True)
        return None
    if owner is not None and _alive(*owner):
        return None  # its own run_command kills it at its timeout
    pgid, ticks = group
    killed = ""
    leader = process_start_ticks(pgid)
    if leader == ticks:
        if group_members(pgid):
            kill_group(pgid)
            killed = f"killed process group {pgid} left by a killed acci_ops ({pidfile.name})"
    elif leader is None:
        # The leader is gone but its group may live on; a group id is not reused while any member
        # lives, and members started after the recorded leader belong to it.
        members = [pid for pid in group_members(pgid) if (process_start_ticks(pid) or 0) >= ticks]
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if members:
            killed = f"killed {len(members)} process(es) of group {pgid} left by a killed acci_ops ({pidfile.name})"
    pidfile.unlink(missing_ok=True)
    return killed or None


def kill_naming(directory: Path) -> list[int]:
    """SIGKILL every process whose command line names a path inside ``directory`` (a tool started
    on a build's storage that outlived its acci_ops: the random build directory proves it ours)."""
    root = os.fsencode(str(directory))
    killed = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            args = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg == root or root + b"/" in arg for arg in args):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(name), signal.SIGKILL)
                killed.append(int(name))
    return killed


def _runtime_containers(tools: ContainerTools) -> list[dict]:
    """The runtime's (runc's) containers: buildah's RUN steps under ``--isolation oci`` are runc
    containers whose bundle is in the build storage's TMPDIR, in a PID namespace and session of
    their own, so neither the build's process group nor the kernel's parent-death signal reaches
    them when the build's acci_ops is killed."""
    if not _runtime_may_hold_builds():
        return []
    runtime = tools.runtime if "/" in tools.runtime else tools.tool(tools.runtime)
    result = run_command([runtime, "list", "--format", "json"], timeout=60, check=False, capture_stdout=True)
    if result.returncode != 0:
        raise RuntimeError(f"{os.path.basename(runtime)} list failed: {result.last_line}")
    rows = json.loads(result.stdout or b"null") or []
    return [row for row in rows if isinstance(row, dict)]


def _delete_runtime_container(tools: ContainerTools, container_id: str) -> None:
    runtime = tools.runtime if "/" in tools.runtime else tools.tool(tools.runtime)
    result = run_command([runtime, "delete", "--force", container_id], timeout=60, check=False)
    if result.returncode != 0:
        raise RuntimeError(result.last_line or f"exit code {result.returncode}")


def _build_dir_of(path: str, base: Path) -> Path | None:
    """The ``build-*`` directory of ``base`` that ``path`` lies in, or None."""
    try:
        relative = Path(path).relative_to(base)
    except ValueError:
        return None
    first = relative.parts[0] if relative.parts else ""
    return base / first if BUILD_DIR.match(first) else None


def _pidfiles(directory: Path) -> Iterator[Path]:
    """The pidfiles of a base (``base/pids``) and of the tool storages in a build directory."""
    for pids in (directory / "pids", *directory.glob("*/pids")):
        if pids.is_dir() and not pids.is_symlink():
            yield from (p for p in pids.iterdir() if PIDFILE.match(p.name) and p.is_file())


def _storage_mentions(tools: ContainerTools, kind: str, needle: str) -> bool:
    """Whether containers-storage's own record of ``kind`` (``containers``/``images``) names
    ``needle``: a quick look that spares every build start the podman calls when there is nothing
    of ours (True when it cannot be told: then podman is asked)."""
    record = tools.storage_root / f"vfs-{kind}" / f"{kind}.json"
    try:
        return needle in record.read_text(errors="replace")
    except FileNotFoundError:
        return False
    except OSError:
        return True


def _runtime_may_hold_builds() -> bool:
    """Whether the runtime's state directory (runc's default root) holds a container buildah made
    (``buildah-*``); True when it cannot be told."""
    if os.geteuid() != 0:
        return True  # rootless runc keeps its state under the user's runtime directory: ask runc
    root = Path("/run/runc")
    try:
        return any(name.startswith("buildah-") for name in os.listdir(root))
    except FileNotFoundError:
        return False
    except OSError:
        return True


def _smoke_containers(tools: ContainerTools, older_than_seconds: float, now: float) -> list[tuple[str, float]]:
    """``(name, age)`` of our stale smoke containers in ``tools``' storage: named like the smoke
    test names them, carrying its label (or, made before the label existed, no label of that key)."""
    if not _storage_mentions(tools, "containers", "acci-smoke-"):
        return []
    result = tools.podman("ps", "-a", "--filter", "name=^acci-smoke-", "--format", "json", timeout=60,
                          check=False, capture_stdout=True)
    if result.returncode != 0:
        raise RuntimeError(f"podman ps failed: {result.last_line}")
    found = []
    for row in json.loads(result.stdout or b"[]") or []:
        names = row.get("Names") or []
        labels = row.get("Labels") or {}
        if len(names) != 1 or not SMOKE_NAME.match(names[0]) or labels.get(SMOKE_LABEL, "1") != "1":
            continue
        age = now - float(row.get("Created") or now)
        if age >= older_than_seconds:
            found.append((names[0], age))
    return found


def _smoke_images(tools: ContainerTools, older_than_seconds: float, now: float) -> list[tuple[str, float]]:
    """``(name, age)`` of the names the smoke test gave images it loaded, for images stored longer
    ago than the limit (the age of the image's directory in our storage: its config's date is the
    build's, not the load's)."""
    if not _storage_mentions(tools, "images", "acci-smoke-"):
        return []
    result = tools.podman("images", "--format", "json", timeout=60, check=False, capture_stdout=True)
    if result.returncode != 0:
        raise RuntimeError(f"podman images failed: {result.last_line}")
    found: dict[str, float] = {}
    for row in json.loads(result.stdout or b"[]") or []:  # one row per name of an image, each with all names
        image_id = str(row.get("Id") or "")
        if not re.fullmatch(r"[0-9a-f]{64}", image_id):
            continue
        stored = tools.storage_root / "vfs-images" / image_id
        age = _age(stored, now) if stored.exists() else 0.0
        if age >= older_than_seconds:
            found.update((name, age) for name in row.get("Names") or [] if SMOKE_IMAGE.match(name))
    return sorted(found.items())


def remove_stale(tools: ContainerTools, older_than_seconds: float, log: Log | None = None) -> list[str]:
    """Remove what killed builds of ``tools`` left that is older than ``older_than_seconds`` (the
    build's timeout, or the run's max runtime): one line per thing removed, also given to ``log``.

    In order: process groups of tools whose acci_ops is gone (``base/pids``); smoke containers and
    the names the smoke test gave the images it loaded; runtime (runc) containers of RUN steps
    whose bundle is in a stale or removed build directory; ``build-*`` directories under ``base``
    (their processes killed first: recorded groups, and any process naming the directory; never
    one whose owner process lives, see ``tools.claim``); ``acci-auth-*`` directories (under
    ``base/auth`` and, from callers that give no directory, the temp directory: only with an auth
    file and nothing else in them, owner gone); ``/tmp/acci-run-*`` run roots of build storages
    that are gone."""
    now = time.time()
    done: list[str] = []
    say = log or (lambda _line: None)

    def removed(line: str) -> None:
        done.append(line)
        say(line)

    def attempt(what: str, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - one bad item must not stop the cleanup of the others
            say(f"cleanup: could not remove {what}: {' '.join(str(exc).split()) or type(exc).__name__}")

    base = tools.base

    def stale_groups(directory: Path) -> None:
        for pidfile in list(_pidfiles(directory)):
            if directory == base and _age(pidfile, now) < older_than_seconds:
                continue
            line = kill_recorded(pidfile)
            if line:
                removed(line)

    attempt(f"the tools recorded in {base / 'pids'}", lambda: stale_groups(base))

    def containers() -> None:
        for name, age in _smoke_containers(tools, older_than_seconds, now):

            def remove(name: str = name, age: float = age) -> None:
                result = tools.podman("rm", "-f", "-t", "0", "--ignore", name, timeout=120, check=False)
                if result.returncode != 0:
                    raise RuntimeError(result.last_line or f"podman rm exited with code {result.returncode}")
                removed(f"removed smoke container {name} (created {age:.0f} s ago)")

            attempt(f"smoke container {name}", remove)

    attempt("smoke containers", containers)

    def images() -> None:
        for name, age in _smoke_images(tools, older_than_seconds, now):

            def remove(name: str = name, age: float = age) -> None:
                # Not forced: the name only, and the image only when no container uses it.
                result = tools.podman("rmi", name, timeout=120, check=False)
                if result.returncode != 0:
                    raise RuntimeError(result.last_line or f"podman rmi exited with code {result.returncode}")
                removed(f"removed smoke image name {name} (stored {age:.0f} s ago)")

            attempt(f"smoke image {name}", remove)

    attempt("smoke images", images)

    stale: list[tuple[Path, float]] = []
    for directory in sorted(base.iterdir()) if base.is_dir() else ():
        if BUILD_DIR.match(directory.name) and _ours(directory):

            def judge(directory: Path = directory) -> None:
                age = _age(directory, now)
                if age >= older_than_seconds and not owner_alive(directory):
                    stale.append((directory, age))

            attempt(f"build directory {directory}", judge)
    stale_dirs = {directory for directory, _ in stale}

    def runtime_containers() -> None:
        # A RUN step's container of a stale build directory, or one whose build directory is gone
        # (its state left in the runtime's root after the build's buildah was killed).
        for row in _runtime_containers(tools):
            bundle, container_id = str(row.get("bundle") or ""), str(row.get("id") or "")
            owner = _build_dir_of(bundle, base)
            if not container_id or owner is None or (owner not in stale_dirs and owner.exists()):
                continue

            def delete(container_id: str = container_id, bundle: str = bundle) -> None:
                _delete_runtime_container(tools, container_id)
                removed(f"removed build container {container_id} (bundle {bundle})")

            attempt(f"build container {container_id}", delete)

    attempt("the build containers", runtime_containers)

    gone_bases: set[Path] = set()
    for directory, age in stale:

        def build_dir(directory: Path = directory, age: float = age) -> None:
            stale_groups(directory)
            for pid in kill_naming(directory):
                removed(f"killed process {pid} working on {directory}")
            storages = [p.resolve() for p in directory.iterdir() if _ours(p)]
            _rmtree(directory)
            gone_bases.update(storages)
            removed(f"removed build directory {directory} ({age:.0f} s old)")

        attempt(f"build directory {directory}", build_dir)

    temp = Path(tempfile.gettempdir())
    for parent in (tools.auth_dir, temp):
        for directory in sorted(parent.glob(f"{AUTH_PREFIX}*")) if parent.is_dir() else ():
            if not AUTH_DIR.match(directory.name) or not _ours(directory):
                continue

            def auth_dir(directory: Path = directory) -> None:
                age = _age(directory, now)
                if age < older_than_seconds or owner_alive(directory):
                    return
                content = {p.name for p in directory.iterdir()}
                if "auth.json" not in content or not content <= AUTH_CONTENT:
                    return  # not the shape auth_file makes: not ours to judge
                _rmtree(directory)
                removed(f"removed registry auth directory {directory} ({age:.0f} s old)")

            attempt(f"auth directory {directory}", auth_dir)

    legacy = {run_root_for(path) for path in gone_bases}
    for directory in sorted(temp.glob(f"{RUN_ROOT_PREFIX}*")):
        if not RUN_ROOT.match(directory.name) or not _ours(directory):
            continue

        def run_root(directory: Path = directory) -> None:
            try:
                owner = Path((directory / RUN_ROOT_MARKER).read_text().strip())
            except OSError:
                owner = None
            if owner is not None:
                # Ours: a storage inside one of this base's build directories, which is gone.
                build = _build_dir_of(str(owner), base)
                if build is None or build.exists() or build.is_symlink():
                    return
                if run_root_for(owner) != directory or _age(directory, now) < older_than_seconds:
                    return
            elif directory not in legacy:
                return
            _rmtree(directory)
            removed(f"removed run root {directory} of {owner or 'a removed build directory'}")

        attempt(f"run root {directory}", run_root)
    return done

