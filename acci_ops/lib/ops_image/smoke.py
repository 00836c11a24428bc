"""``ops_image_smoke``: the acci_ops image, as built, runs its selfcheck in a confined container.

Like ACCI Framework's smoke test, the container gets no network, no capabilities, a read-only root
with a small tmpfs and no secrets; unlike it, nothing listens: the image is a code server, so the
check is that the tools acci_ops calls are there (PostgreSQL 15+ client tools, zstd, helm), that
it runs as a non-root user and that ``dagster definitions validate`` loads acci_ops in it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from acci_ops.lib.core.errors import AcciOpsError
from acci_ops.lib.images.engines import ContainerEngine, LoadedImage
from acci_ops.lib.images.oci import read_index
from acci_ops.lib.images.outcome import CheckOutcome
from acci_ops.lib.images.smoke import SmokeConfig, host_platform_name, isolation_options

CHECK_NAME = "ops_image_smoke"
COMMAND = ["python", "-m", "acci_ops.lib.ops_image.selfcheck"]


def ops_smoke(engine: ContainerEngine, oci_dir: str | Path, *, timeout: float = 300,
              log: Callable[[str], None] | None = None) -> CheckOutcome:
    """Run the selfcheck in the host-platform image; the container and image are always removed."""
    say = log or (lambda _line: None)
    name = f"acci-ops-smoke-{uuid.uuid4().hex[:12]}"
    metadata: dict[str, Any] = {"engine": engine.name, "container": name}
    loaded: LoadedImage | None = None
    try:
        manifests = read_index(Path(oci_dir)).by_platform()
        target = host_platform_name()
        if target not in manifests:
            return CheckOutcome(CHECK_NAME, False, "ERROR", f"the image has no {target} platform to run here")
        engine.check()
        loaded = engine.load(Path(oci_dir), target, manifests[target].config_digest, say)
        options = [*isolation_options(SmokeConfig(memory_mb=1024)), "--env", "DAGSTER_HOME=/tmp", "--env", "HOME=/tmp",
                   "--env", "NO_COLOR=1"]
        engine.run(name, loaded.ref, options, COMMAND, env={}, log=say)
        deadline = time.monotonic() + timeout
        status, code = engine.state(name)
        while status in ("running", "created", "configured") and time.monotonic() < deadline:
            time.sleep(0.5)
            status, code = engine.state(name)
        output = engine.logs(name, lines=40)
        lines = [line for line in output.tail if line.strip()]
        if status in ("running", "created", "configured"):
            return CheckOutcome(CHECK_NAME, False, "ERROR", f"the selfcheck did not finish within {timeout:g} s",
                                metadata)
        if code != 0:
            cause = next((line for line in reversed(lines) if line.startswith("selfcheck failed:")),
                         lines[-1] if lines else f"exit code {code}")
            return CheckOutcome(CHECK_NAME, False, "ERROR", " ".join(cause.split()), metadata)
        report = json.loads(next(line for line in reversed(lines) if line.startswith("{")))
        metadata.update({key: str(value) for key, value in report.items()})
        return CheckOutcome(CHECK_NAME, True, "ERROR",
                            f"runs as uid {report.get('uid')} with {report.get('pg_dump')}, {report.get('helm')}; "
                            "acci_ops loads", metadata)
    except (AcciOpsError, OSError, ValueError, StopIteration) as exc:
        return CheckOutcome(CHECK_NAME, False, "ERROR", " ".join(f"ops image smoke test: {exc}".split()), metadata)
    finally:
        problems = [engine.remove_container(name)]
        if loaded is not None:
            problems.append(engine.unload(loaded))
        metadata["cleanup"] = "; ".join(p for p in problems if p) or "removed"
