"""Releases: how long a good version takes to be verified, how long a bad one serves before the previous
version is back, and what a blue/green switch costs, beside the same steps done by hand.

Same machine, one run, real parts: a private podman API service driven by Debian's docker-compose 1.29,
the local registry, the release app (caddy; ``acci_ops/dev/release_app.py``) built, checked and pushed by
the image pipeline (2.0.0, 2.1.0 good; 2.3.0 answers ``/`` with 500 while its /health is fine).

  1. good release   acci_ops ``run_release`` of 2.1.0 over 2.0.0 (pull, compose up by digest, the analysis
                    with its load step: /health, 5xx ratio and p95 latency from caddy's live metrics, every
                    ``--interval`` s, ``--count`` times) until "verified";
                    by hand: docker pull + docker-compose up -d with the digest pinned + curl /health
                    until 200 (what the guide's upgrade amounts to, with no judgement at all).
  2. bad release    acci_ops ``run_release`` of 2.3.0 over 2.1.0: the time from the first failing
                    measurement to 2.1.0 answering ``/version`` again (target <= 60 s with the default
                    analysis), and the whole release; by hand: the rollback an operator types once they
                    noticed (compose up with the previous digest + curl /health until 200).
  3. blue/green     ``BlueGreenRelease`` deploying 2.1.0 over 2.0.0 behind haproxy with a request loop
                    (200/s) through the proxy: failed requests (target 0) and the switch time; then the
                    same loop against a plain ``docker-compose up -d`` replacing the container in place,
                    for contrast.

    .venv/bin/python benchmarks/release.py [--interval 10 --count 6]

The defaults are the release defaults (a 60 s window); ``--interval 1 --count 6`` gives a quick run.
"""

from __future__ import annotations

import argparse
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from acci_ops.dev.podman_service import PodmanService, start_podman_service  # noqa: E402
from acci_ops.dev.registry import start_registry  # noqa: E402
from acci_ops.dev.release_app import IMAGE_NAME, PLATFORMS, create_release_repo  # noqa: E402
from acci_ops.dev.release_stack import (  # noqa: E402
    COLOR_PORT,
    COMPOSE_SERVICE,
    compose_file,
    remove_project,
    service_runner,
)
from acci_ops.dev.request_loop import RequestLoop  # noqa: E402
from acci_ops.lib.backup.signing import Keyring  # noqa: E402
from acci_ops.lib.core.commands import run_command  # noqa: E402
from acci_ops.lib.core.net import free_port  # noqa: E402
from acci_ops.lib.images.gate import GateConfig, standard_gate  # noqa: E402
from acci_ops.lib.images.pipeline import ImageSettings, build_version  # noqa: E402
from acci_ops.lib.images.tools import ContainerTools  # noqa: E402
from acci_ops.lib.releases.analysis import (  # noqa: E402
    AnalysisResult,
    AnalysisSpec,
    LoadSpec,
    MetricSpec,
    Target,
    default_metrics,
    run_analysis,
)
from acci_ops.lib.releases.blue_green import BlueGreenRelease, analysis_gate  # noqa: E402
from acci_ops.lib.releases.compose_release import ComposeRelease  # noqa: E402
from acci_ops.lib.releases.flow import Outcome, ReleasePlan, run_release  # noqa: E402
from acci_ops.lib.releases.ledger import ReleaseLedger  # noqa: E402
from acci_ops.lib.releases.proxy import HaproxySwitch  # noqa: E402
from acci_ops.lib.storage.objectstore import FileStore  # noqa: E402

HISTOGRAM = "caddy_http_request_duration_seconds"
COMPOSE = (shutil.which("docker-compose") or "docker-compose",)
FAILED_MEASUREMENT = re.compile(r"^\[\d+/\d+\] \w+: failed")


class Stack:
    """One Compose project of the release app on the service: its file, ports and runner."""

    def __init__(self, work: Path, service: PodmanService, project: str) -> None:
        work.mkdir(parents=True)
        self.project, self.service = project, service
        self.app_port, self.metrics_port = free_port(), free_port()
        self.file = work / "docker-compose.yml"
        self.file.write_text(compose_file(self.app_port, self.metrics_port))
        config = work / "docker-config"
        config.mkdir(mode=0o700)
        self.env = {"DOCKER_HOST": service.docker_host, "DOCKER_CONFIG": str(config)}
        self.runner = service_runner(self.env)
        self.url = f"http://127.0.0.1:{self.app_port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.work = work

    def release(self) -> ComposeRelease:
        return ComposeRelease(project=self.project, files=(str(self.file),), service=COMPOSE_SERVICE,
                              app_url=self.url, compose=COMPOSE, timeout_seconds=60, poll_seconds=0.2,
                              run_dir=str(self.work / "run"), runner=self.runner)

    def by_hand(self, image_ref: str) -> float:
        """docker pull, docker-compose up -d with the digest pinned, curl /health until 200."""
        override = self.work / "hand.yml"
        override.write_text(f"services:\n  {COMPOSE_SERVICE}:\n    image: {image_ref}\n")
        started = time.monotonic()
        run_command(["docker", "pull", image_ref], env=self.env, timeout=300)
        run_command([*COMPOSE, "--project-name", self.project, "--file", str(self.file), "--file", str(override),
                     "up", "-d"], env=self.env, timeout=300)
        wait_health(self.url)
        return time.monotonic() - started

    def remove(self) -> None:
        remove_project(self.service, self.project)


def wait_health(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url}/health did not answer 200 within {timeout} s")


class VersionPoller:
    """``/version`` every 0.1 s in a thread: (monotonic time, what answered or the error)."""

    def __init__(self, url: str) -> None:
        self.url, self.seen, self._stop = url, [], threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self.url + "/version", timeout=2) as answer:
                    self.seen.append((time.monotonic(), answer.read().decode().strip()))
            except OSError as exc:
                self.seen.append((time.monotonic(), f"error: {type(exc).__name__}"))
            time.sleep(0.1)

    def __enter__(self) -> VersionPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def first(self, version: str, after: float) -> float | None:
        return next((t for t, seen in self.seen if t > after and seen == version), None)


def timed_log() -> tuple[list[tuple[float, str]], Callable[[str], None]]:
    lines: list[tuple[float, str]] = []
    return lines, lambda line: lines.append((time.monotonic(), line))


def build_images(work: Path, registry_repository: str) -> tuple[dict[str, str], ContainerTools]:
    repo = create_release_repo(work / "release-app")
    tools = ContainerTools(work / "container-tools")
    settings = ImageSettings(source_repo=repo.url, repository=registry_repository, tls_verify=False,
                             storage_dir=tools.base, platforms=PLATFORMS)
    gate = standard_gate(settings, GateConfig(), tools=tools, run_id="benchmark-release")
    images = {}
    for version in ("2.0.0", "2.1.0", "2.3.0"):
        report = build_version(settings, f"v{version}", tools=tools, checks=gate.checks, artifacts=())
        if not report.pushed or not report.image_ref:
            raise SystemExit(f"the image pipeline did not push release app v{version}: {report.message}")
        images[version] = report.image_ref
        print(f"built, checked and pushed {version}: {report.image_ref}", flush=True)
    return images, tools


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between measurements (default 10)")
    parser.add_argument("--count", type=int, default=6, help="measurements per analysis (default 6)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="acci-bench-release-"))
    short = Path(tempfile.mkdtemp(prefix="bgb-"))  # haproxy's socket path is at most 107 characters
    registry = start_registry(work / "registry")
    service = start_podman_service(insecure_registries=[registry.host])
    stacks: list[Stack] = []
    switch: HaproxySwitch | None = None
    tools: ContainerTools | None = None
    try:
        images, tools = build_images(work, registry.repository(IMAGE_NAME))
        spec = AnalysisSpec(interval_seconds=args.interval, count=args.count,
                            metrics=default_metrics(0.5, error_metric=f"{HISTOGRAM}_count", latency_metric=HISTOGRAM),
                            load=LoadSpec())
        ledger = ReleaseLedger(FileStore(f"file://{work}/store"), Keyring.from_secret(secrets.token_hex(32)))
        ours, hand = Stack(work / "ours", service, "bench-ours"), Stack(work / "hand", service, "bench-hand")
        stacks += [ours, hand]
        target = ours.release()

        sink: list[Callable[[str], None]] = [lambda line: None]  # where the analysis's measurement lines go

        def analyse(analysis: AnalysisSpec, where: Target) -> AnalysisResult:
            return run_analysis(analysis, Target(where.app_url, metrics_url=ours.metrics_url), log=sink[0])

        def release(version: str, log: Callable[[str], None]) -> Outcome:
            plan = ReleasePlan(environment="bench", version=version, image_ref=images[version], operator="benchmark",
                               strategy="rolling", analysis=spec, on_inconclusive="rollback")
            sink[0] = log
            return run_release(plan, target, ledger, analyse, log=log)

        # 1. a good release
        first = release("2.0.0", lambda line: None)
        assert first.status == "verified", first.reason
        hand.by_hand(images["2.0.0"])
        started = time.monotonic()
        good = release("2.1.0", lambda line: None)
        good_seconds = time.monotonic() - started
        assert good.status == "verified", good.reason
        hand_good = hand.by_hand(images["2.1.0"])

        # 2. a bad release, rolled back by itself
        lines, log = timed_log()
        with VersionPoller(ours.url) as poller:
            started = time.monotonic()
            bad = release("2.3.0", log)
            bad_seconds = time.monotonic() - started
            time.sleep(0.5)
        assert bad.status == "rolled_back", f"{bad.status}: {bad.reason}"
        first_failure = next(t for t, line in lines if FAILED_MEASUREMENT.match(line))
        back = poller.first("2.1.0", after=first_failure)
        assert back is not None, "2.1.0 never answered again"
        hand.by_hand(images["2.3.0"])
        hand_rollback = hand.by_hand(images["2.1.0"])

        # 3. blue/green under load, and a plain in-place compose up under the same load
        for stack in stacks:
            stack.remove()
        color = work / "color.yml"
        color.write_text(compose_file(COLOR_PORT, None))
        proxy_port, blue, green = free_port(), free_port(), free_port()
        health = AnalysisSpec(interval_seconds=min(args.interval, 1.0), count=3,
                              metrics=(MetricSpec("health", "health"),))
        bg = BlueGreenRelease(project="bench-bg", run_dir=str(short / "bg"), proxy_port=proxy_port,
                              ports={"blue": blue, "green": green}, files=(str(color),), analyse=analysis_gate(health),
                              compose=COMPOSE, runner=ours.runner, timeout_seconds=60)
        switch = bg.switch
        bg.deploy(images["2.0.0"], None, lambda line: None)
        loop = RequestLoop(f"http://127.0.0.1:{proxy_port}", total=10**6, rate=200, path="/version").start()
        lines, log = timed_log()
        started = time.monotonic()
        bg.deploy(images["2.1.0"], None, log)
        bg_seconds = time.monotonic() - started
        time.sleep(0.5)
        loop.stop()
        switched = next(float(m.group(1)) for _, line in lines
                        if (m := re.search(r"haproxy: switched \w+ -> \w+ in ([0-9.]+) s", line)))
        plain = Stack(work / "plain", service, "bench-plain")
        stacks.append(plain)
        plain.by_hand(images["2.0.0"])
        plain_loop = RequestLoop(plain.url, total=10**6, rate=200, path="/version").start()
        plain_seconds = plain.by_hand(images["2.1.0"])
        time.sleep(0.5)
        plain_loop.stop()

        window = f"{args.count} x {args.interval:g} s"
        print()
        print(f"analysis window: {window}, load step on; engine: podman service + docker-compose 1.29")
        print()
        print("step                                        acci_ops    by hand    acci_ops / by hand")
        print(f"good release: image ready -> verified      {good_seconds:7.1f} s  {hand_good:7.1f} s  "
              f"{good_seconds / hand_good:6.2f}x   (by hand: up + /health 200, no analysis)")
        deploy = good.steps.get("deploy", 0.0) + good.steps.get("recover", 0.0)
        print(f"  of which deploy (pull, up, healthy)      {deploy:7.1f} s  {hand_good:7.1f} s  "
              f"{deploy / hand_good:6.2f}x")
        print(f"  of which analysis                        {good.steps.get('analysis', 0.0):7.1f} s")
        print(f"bad release: first failing measurement ->  {back - first_failure:7.1f} s  {hand_rollback:7.1f} s  "
              f"{(back - first_failure) / hand_rollback:6.2f}x   (target <= 60 s; by hand: the rollback typed, "
              "not counting noticing)")
        print("  previous version serving again")
        print(f"  whole bad release (deploy, fail, roll back, re-analyse)  {bad_seconds:7.1f} s")
        print(f"blue/green deploy of 2.1.0 incl. analysis  {bg_seconds:7.1f} s")
        print(f"  haproxy switch                           {switched:7.2f} s")
        print(f"  requests through the proxy               {loop.sent:7d} sent, {len(loop.failures)} failed "
              f"(target 0), answered by {dict(loop.labels())}")
        print(f"in-place compose up under the same load    {plain_seconds:7.1f} s: {plain_loop.sent} sent, "
              f"{len(plain_loop.failures)} failed")
        return 0
    finally:
        if switch is not None:
            switch.stop()
        for project in ("bench-ours", "bench-hand", "bench-plain", "bench-bg-blue", "bench-bg-green"):
            remove_project(service, project)
        service.stop()
        registry.stop()
        if tools is not None:
            tools.remove_storage()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(short, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
