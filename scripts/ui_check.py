"""Headless-browser check of the disaster_recovery Launchpad and the dr_drill asset page.

Starts dagster-webserver (no daemon: nothing is scheduled or launched) on a free port with a
throwaway DAGSTER_HOME and dummy settings good enough for the definitions to load (a file://
backup URL, database/Redis URLs nobody connects to), drives the UI with Playwright and Debian's
chromium, saves screenshots, prints one PASS/FAIL line per check and exits 1 on any failure.
Everything it started is stopped on the way out. Not part of ./run test (too heavy).

    .venv/bin/python scripts/ui_check.py [SCREENSHOT_DIR]      # default /tmp/acci_ui_check
Needs: apt-get install -y chromium; the `ui` extra (playwright) in .venv.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
LOAD_TIMEOUT = 180.0
UI_TIMEOUT_MS = 60_000

BLANK_ANSWERS = "ops:\n  recover_environment:\n    config:\n      environment: production\n" \
                "      confirm: ''\n      operator: '   '\n"
EMPTY_ENVIRONMENT = "ops:\n  recover_environment:\n    config:\n      environment: ''\n" \
                    "      confirm: production\n      operator: alice\n"
RESOURCE_EDIT = "ops:\n  recover_environment:\n    config:\n      environment: production\n" \
                "      confirm: production\n      operator: alice\n" \
                "resources:\n  acci_dr_production:\n    config:\n      platform: helm\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(home: Path) -> dict[str, str]:
    """The caller's environment without any ACCI_* setting (nothing may point at a real system),
    plus dummy settings for one environment with validation and DR (local platform)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCI_") and k != "DAGSTER_HOME"}
    (home / "backups").mkdir()
    env.update({
        "DAGSTER_HOME": str(home / "dagster_home"),
        "ACCI_DATABASE_URL": "postgresql://acci@127.0.0.1:9/acci",
        "ACCI_BACKUP_URL": f"file://{home / 'backups'}",
        "ACCI_SCRATCH_DATABASE_URL": "postgresql://scratch@127.0.0.1:9/postgres",
        "ACCI_PLATFORM": "local",
        "ACCI_LOCAL_APP_COMMAND": "true",
        "ACCI_REDIS_URL": "redis://127.0.0.1:9/0",
        "ACCI_DRILL_REDIS_URL": "redis://127.0.0.1:9/1",
    })
    return env


def graphql(base: str, query: str) -> dict:
    request = urllib.request.Request(f"{base}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 (our own local server)
        return json.loads(answer.read())["data"]


def wait_loaded(base: str, server: subprocess.Popen, log: Path) -> None:
    """Until the acci_ops code location is loaded; its load error (or the server's exit) otherwise."""
    deadline = time.monotonic() + LOAD_TIMEOUT
    query = ("{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
             "locationOrLoadError { __typename ... on PythonError { message } } } } } }")
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"dagster-webserver exited with {server.returncode}; see {log}")
        try:
            entries = graphql(base, query)["workspaceOrError"]["locationEntries"]
        except OSError:
            time.sleep(1)
            continue
        loaded = [e for e in entries if e["loadStatus"] == "LOADED"]
        if loaded:
            error = loaded[0]["locationOrLoadError"]
            if error["__typename"] == "PythonError":
                raise RuntimeError(f"code location failed to load: {error['message'].splitlines()[0]}")
            return
        time.sleep(1)
    raise RuntimeError(f"code location not loaded within {LOAD_TIMEOUT:.0f} s; see {log}")


def stop(server: subprocess.Popen) -> None:
    """The webserver and its code-server child: its own process group, TERM then KILL."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    try:  # children still in the group after the leader exited
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Checks:
    def __init__(self, out: Path) -> None:
        self.out, self.failed, self.shots = out, 0, []

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        print(f"{'PASS' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""), flush=True)
        self.failed += not ok

    def shot(self, page, name: str) -> None:  # noqa: ANN001 (playwright Page)
        path = self.out / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        self.shots.append(path)


def editor_value(page) -> str:  # noqa: ANN001
    return page.evaluate("document.querySelector('.CodeMirror').CodeMirror.getValue()")


def set_editor(page, text: str) -> None:  # noqa: ANN001
    page.evaluate("t => document.querySelector('.CodeMirror').CodeMirror.setValue(t)", text)
    page.wait_for_timeout(2500)  # the Launchpad validates against the server after a short debounce


def launchpad_checks(page, base: str, checks: Checks) -> None:  # noqa: ANN001
    page.goto(f"{base}/locations/acci_ops/jobs/disaster_recovery/playground", timeout=UI_TIMEOUT_MS)
    page.get_by_text("Scaffold missing config").first.wait_for(timeout=UI_TIMEOUT_MS)
    page.wait_for_timeout(1500)
    skip = page.get_by_role("button", name="Skip")  # the first-visit "Join the Dagster community" dialog
    if skip.count():
        skip.first.click()
        page.wait_for_timeout(500)
    checks.shot(page, "01_launchpad_open")
    page.get_by_text("Scaffold missing config").first.click()
    page.get_by_role("button", name="Confirm").click()  # its "Missing paths: ..." dialog
    page.wait_for_timeout(2500)
    scaffolded = editor_value(page)
    checks.shot(page, "02_launchpad_scaffolded")
    print("  scaffolded config:", json.dumps(scaffolded))
    checks.check("scaffolded config has no resources section", "resources" not in scaffolded, scaffolded)
    body = page.inner_text("body")
    checks.check("after scaffolding the Launchpad does not say 'No errors' (confirm, operator still missing)",
                 "No errors" not in body and "'confirm', 'operator'" in body)

    set_editor(page, EMPTY_ENVIRONMENT)
    checks.shot(page, "03_launchpad_empty_environment")
    body = page.inner_text("body")
    checks.check("Launchpad shows a config error for environment ''", "not in enum" in body
                 and "No errors" not in body)

    set_editor(page, RESOURCE_EDIT)
    checks.shot(page, "04_launchpad_resource_edit")
    body = page.inner_text("body")
    checks.check("Launchpad refuses resources: acci_dr_production: config: platform",
                 "platform" in body and "No errors" not in body and "unexpected" in body.lower())

    set_editor(page, BLANK_ANSWERS)
    checks.shot(page, "05_launchpad_blank_answers")
    page.get_by_role("button", name="Launch Run").first.click()
    page.wait_for_timeout(4000)
    checks.shot(page, "06_launch_blank_answers")
    body = page.inner_text("body")
    runs = graphql(base, "{ runsOrError { ... on Runs { count } } }")["runsOrError"]["count"]
    checks.check("launch with blank confirm/operator is refused and names them",
                 "config:confirm" in body and "config:operator" in body,
                 " | ".join(line.strip() for line in body.splitlines() if "PostProcessingError:" in line))
    checks.check("no run was created", runs == 0, f"{runs} runs")


def asset_checks(page, base: str, checks: Checks) -> None:  # noqa: ANN001
    page.goto(f"{base}/assets/dr_drill", timeout=UI_TIMEOUT_MS)
    page.get_by_text("db_backup_validated").first.wait_for(timeout=UI_TIMEOUT_MS)
    page.wait_for_timeout(3000)
    checks.shot(page, "07_dr_drill_asset")
    body = page.inner_text("body")
    # Links, not text: the description names all three in prose.
    checks.check("dr_drill page links upstream db_backup_validated",
                 page.locator("a[href*='/assets/db_backup_validated']").count() > 0)
    checks.check("dr_drill page links its schedule dr_drill_schedule",
                 page.locator("a[href*='/schedules/dr_drill_schedule']").count() > 0
                 and "No automations found" not in body)
    checks.check("dr_drill page links its job dr_drill",
                 page.locator("a[href*='/jobs/dr_drill']").count() > 0)


def run_checks(base: str, out: Path, chromium: str) -> Checks:
    from playwright.sync_api import sync_playwright

    checks = Checks(out)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            for section in (launchpad_checks, asset_checks):
                guarded(section, page, base, checks)
        finally:
            browser.close()
    return checks


def guarded(section: Callable, page, base: str, checks: Checks) -> None:  # noqa: ANN001
    """A section that breaks (element never appeared) is one FAIL line, and the others still run."""
    try:
        section(page, base, checks)
    except Exception as exc:  # noqa: BLE001
        checks.shot(page, f"error_{section.__name__}")
        checks.check(section.__name__, False, f"{type(exc).__name__}: {str(exc).splitlines()[0]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="/tmp/acci_ui_check", help="where the screenshots go")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the browser (Debian package chromium)")
    args = parser.parse_args()
    if not Path(args.chromium).exists():
        print(f"FAIL setup: {args.chromium} not found; apt-get install -y chromium")
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="acci_ui_check_"))
    (home / "dagster_home").mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster_home" / "dagster.yaml")  # queued: nothing starts
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = out / "webserver.log"
    with log.open("w") as log_file:
        server = subprocess.Popen(
            [str(VENV_BIN / "dagster-webserver"), "-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1",
             "-p", str(port)], cwd=ROOT, env=child_env(home), stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        wait_loaded(base, server, log)
        checks = run_checks(base, out, args.chromium)
    except RuntimeError as exc:
        print(f"FAIL setup: {exc}")
        return 1
    finally:
        stop(server)
        shutil.rmtree(home, ignore_errors=True)
    print("screenshots:", *(str(p) for p in checks.shots), sep="\n  ")
    print(f"{'FAIL' if checks.failed else 'PASS'} ui_check: {checks.failed} check(s) failed")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
