"""What running each run in a container of its own costs: the default run launcher vs DockerRunLauncher.

Both instances run the same acci_ops (this checkout), the same job (``nightly_backup`` of the same
small sample database to the same moto S3 server), with the same storage kind (PostgreSQL), queue
(QueuedRunCoordinator) and run monitoring; only the launcher differs:

  default  dagster-webserver + dagster-daemon as processes of this machine, a workspace that loads
           acci_ops from a local code server; each run is a ``dagster api execute_run`` process;
  docker   the shipped Compose stack (``acci_ops.dev.ops_stack``: host networking, on a private podman
           API service) from the image build_ops_image makes of this checkout; each run is a container.

For each, ``--runs`` runs are launched one after the other through the GraphQL API, and it prints the
time from submit to the run's first step starting (the launch overhead) and to the run's success
(the whole nightly backup), medians, side by side with their ratio.

    .venv/bin/python benchmarks/docker_launch.py [--runs 5]

Needs what ./run test installs. Takes about 6 minutes (the image build is about 2.5 of them).
``ACCI_BACKUP_EXECUTION=docker`` (the dump next to the database) is not built yet, so not measured.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
import yaml  # noqa: E402

from acci_ops.dev.dagster_api import graphql, launch_run, run_event_times, run_messages, wait_for_run  # noqa: E402
from acci_ops.dev.debian_base import debian_base  # noqa: E402
from acci_ops.dev.localpg import LocalPostgres, ensure_scratch_role, load_sample_data  # noqa: E402
from acci_ops.dev.ops_stack import (  # noqa: E402
    DOCKER_DIR,
    dependency_wheelhouse,
    ops_environ,
    snapshot_repo,
    start_stack,
    stop_stack,
)
from acci_ops.dev.registry import start_registry  # noqa: E402
from acci_ops.dev.servers import start_moto  # noqa: E402
from acci_ops.lib.core.net import free_port  # noqa: E402
from acci_ops.lib.images.tools import ContainerTools  # noqa: E402

SIGNING_KEY = "benchmark-signing-key-0123456789abcdef"


def build_ops_image(environ: dict[str, str]) -> str:
    """build_ops_image in this process (an ephemeral instance) with ``environ`` as the only settings: its image_ref."""
    import dagster as dg

    from acci_ops.definitions import build_definitions
    from acci_ops.settings import load_settings

    job = build_definitions(load_settings(environ)).resolve_job_def("build_ops_image")
    result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    if not result.success:
        failures = [e.event_specific_data.error.message.strip() for e in result.all_events
                    if e.event_type_value == "STEP_FAILURE"]
        raise SystemExit(f"build_ops_image failed: {' | '.join(failures)}")
    materialization = result.asset_materializations_for_node("build_acci_ops_image")[-1]
    return str(materialization.metadata["image_ref"].value)


def settings_env(pg: LocalPostgres, s3_endpoint: str, scratch_url: str, bucket: str) -> dict[str, str]:
    return {"ACCI_DATABASE_URL": pg.url("acci"), "ACCI_BACKUP_URL": f"s3://{bucket}/acci",
            "AWS_ENDPOINT_URL": s3_endpoint, "ACCI_BACKUP_SIGNING_KEY": SIGNING_KEY,
            "ACCI_SCRATCH_DATABASE_URL": scratch_url, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def measure(url: str, partitions: list[str]) -> tuple[list[float], list[float]]:
    """(submit -> first step start, submit -> success) per run, in seconds."""
    to_step, to_success = [], []
    for partition in partitions:
        submitted = time.time()
        run_id = launch_run(url, "nightly_backup", tags={"dagster/partition": partition})
        status, _ = wait_for_run(url, run_id, timeout=600)
        if status != "SUCCESS":
            last = " | ".join(run_messages(url, run_id)[-4:])
            raise SystemExit(f"run {run_id} of {partition} ended {status}: {last}")
        times = run_event_times(url, run_id)
        to_step.append(times["ExecutionStepStartEvent"] - submitted)
        to_success.append(times["RunSuccessEvent"] - submitted)
        print(f"  {partition}: first step after {to_step[-1]:.1f} s, success after {to_success[-1]:.1f} s", flush=True)
    return to_step, to_success


def default_instance(work: Path, pg: LocalPostgres, env: dict[str, str], partitions: list[str]) -> tuple[list, list]:
    """The shipped dagster.yaml with the default launcher, run by local webserver and daemon processes."""
    home = work / "dagster-home"
    home.mkdir()
    instance = yaml.safe_load((DOCKER_DIR / "dagster.yaml").read_text())
    del instance["run_launcher"]  # the default launcher
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance))
    (work / "workspace.yaml").write_text(yaml.safe_dump(
        {"load_from": [{"python_module": {"module_name": "acci_ops.definitions", "location_name": "acci_ops"}}]}))
    port = free_port()
    child = {**os.environ, **env, "DAGSTER_HOME": str(home), "DAGSTER_POSTGRES_USER": "postgres",
             "DAGSTER_POSTGRES_PASSWORD": "unused", "DAGSTER_POSTGRES_HOST": "127.0.0.1",
             "DAGSTER_POSTGRES_PORT": str(pg.port), "DAGSTER_POSTGRES_DB": "dagster_default"}
    bin_dir = Path(sys.executable).parent
    procs = [subprocess.Popen([str(bin_dir / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w",
                               str(work / "workspace.yaml")], env=child, cwd=work, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True),
             subprocess.Popen([str(bin_dir / "dagster-daemon"), "run", "-w", str(work / "workspace.yaml")], env=child,
                              cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                graphql(url, "{ version }", timeout=3)
                break
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    raise SystemExit("the default-launcher webserver did not start within 120 s") from None
                time.sleep(1)
        time.sleep(10)  # the daemon's first heartbeat and workspace load
        return measure(url, partitions)
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="acci-docker-launch-"))
    registry = start_registry(work / "registry")
    pg = LocalPostgres(work / "pg", free_port()).start()
    s3 = start_moto(work / "moto.log")
    stack = None
    try:
        load_sample_data(pg, "acci")
        scratch = ensure_scratch_role(pg)
        for db in ("dagster_default", "dagster_docker"):
            pg.psql(f"CREATE DATABASE {db}")
        pg.psql("ALTER ROLE postgres PASSWORD 'unused'")
        bucket = "bench"
        boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=bucket)
        env = settings_env(pg, s3.endpoint, scratch, bucket)
        print("building the acci_ops image (build_ops_image) ...", flush=True)
        tools = ContainerTools(work / "tools")
        base = f"{registry.repository('bench/debian-base')}"
        tools.skopeo("copy", "-q", "--dest-tls-verify=false", "--digestfile", str(work / "digest"),
                     f"oci:{debian_base()}", f"docker://{base}:bookworm", timeout=600)
        base_ref = f"{base}@{(work / 'digest').read_text().strip()}"
        source = snapshot_repo(Path(tempfile.mkdtemp(prefix="src-", dir=work)))
        started = time.monotonic()
        image_ref = build_ops_image(ops_environ(registry, source, base_ref, dependency_wheelhouse(), work / "images"))
        print(f"  built {image_ref} in {time.monotonic() - started:.0f} s", flush=True)
        days = [(date(2026, 11, 1) + timedelta(days=i)).isoformat() for i in range(2 * args.runs)]
        print("default launcher:", flush=True)
        default_step, default_done = default_instance(work, pg, env, days[:args.runs])
        env_file = work / "acci-ops.env"
        # Every name the shipped launcher passes must be set (a missing one fails the launch by name): no
        # alerts here, so the webhook is set empty.
        env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()) + "ACCI_ALERT_WEBHOOK_URL=\n")
        print("DockerRunLauncher (the Compose stack):", flush=True)
        started = time.monotonic()
        stack = start_stack(work / "stack", image_ref, registry.host,
                            dagster_pg=("127.0.0.1", pg.port, "postgres", "unused", "dagster_docker"),
                            env_file=env_file)
        print(f"  stack up (image pulled, UI loaded, daemon polling) in {time.monotonic() - started:.0f} s", flush=True)
        docker_step, docker_done = measure(stack.url, days[args.runs:])
    finally:
        if stack is not None:
            stop_stack(stack)
        s3.stop()
        pg.stop()
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)
    rows = [("submit -> first step starts", default_step, docker_step),
            ("submit -> nightly_backup succeeded", default_done, docker_done)]
    print(f"\n{'median of ' + str(args.runs) + ' runs':<40}{'default':>10}{'docker':>10}{'docker / default':>18}")
    for name, default, docker in rows:
        a, b = statistics.median(default), statistics.median(docker)
        print(f"{name:<40}{a:>9.1f}s{b:>9.1f}s{b / a:>17.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
