"""vulnerability_scan with stand-in scanners (scripts written here) reporting trivy and grype JSON."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from acci_ops.lib.core.errors import ConfigError
from acci_ops.lib.images.scan import NOT_CONFIGURED, count_severities, scan_argv, vulnerability_scan

pytestmark = pytest.mark.unit

REGISTRY_PASSWORD = "Scan-test-Reg-PW-SECRET"

TRIVY = {"SchemaVersion": 2, "ArtifactName": "x", "Results": [
    {"Target": "usr/local/bin/httpd", "Vulnerabilities": [
        {"VulnerabilityID": "CVE-2024-0001", "Severity": "CRITICAL"},
        {"VulnerabilityID": "CVE-2024-0002", "Severity": "HIGH"},
        {"VulnerabilityID": "CVE-2024-0003", "Severity": "HIGH"}]},
    {"Target": "srv/www", "Vulnerabilities": None},
]}
GRYPE = {"matches": [
    {"vulnerability": {"id": "CVE-2024-0004", "severity": "High"}},
    {"vulnerability": {"id": "CVE-2024-0005", "severity": "Low"}},
    {"vulnerability": {"id": "GHSA-x", "severity": "Negligible"}},
], "source": {"type": "image"}}


def stand_in(tmp_path: Path, name: str, *, report: object = None, exit_code: int = 0, stderr: str = "",
             sleep: float = 0, raw: str | None = None) -> Path:
    """A scanner script: records its argv and environment, prints ``report`` as JSON (or ``raw``)."""
    script = tmp_path / name
    body = raw if raw is not None else json.dumps(report)
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys, time\n"
        f"json.dump({{'argv': sys.argv, 'env': dict(os.environ)}}, open({str(tmp_path / 'call.json')!r}, 'w'))\n"
        f"time.sleep({sleep})\n"
        f"sys.stderr.write({stderr!r})\n"
        f"sys.stdout.write({body!r})\n"
        f"sys.exit({exit_code})\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def call(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "call.json").read_text())


def test_no_scanner_is_a_warning_never_a_pass() -> None:
    for command in (None, "", "   "):
        outcome = vulnerability_scan(command, oci_dir="/x", image_ref="r@sha256:1")
        assert (outcome.passed, outcome.severity, outcome.description) == (False, "WARN", NOT_CONFIGURED)
    assert NOT_CONFIGURED == "no vulnerability scanner configured (set ACCI_IMAGE_SCAN_COMMAND)"


def test_trivy_critical_fails_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCI_REGISTRY_PASSWORD", REGISTRY_PASSWORD)
    scanner = stand_in(tmp_path, "trivy", report=TRIVY)
    outcome = vulnerability_scan(f"{scanner} image --format json --input {{oci_dir}} '--title=a b'",
                                 oci_dir=tmp_path / "oci", image_ref="reg/acci@sha256:ab", fail_on=None)
    assert (outcome.passed, outcome.severity) == (False, "ERROR")
    assert outcome.description == "trivy found 1 CRITICAL (ACCI_IMAGE_SCAN_FAIL_ON=CRITICAL); all: 1 CRITICAL, 2 HIGH"
    assert outcome.metadata["findings"] == {"CRITICAL": 1, "HIGH": 2}
    assert outcome.metadata["format"] == "trivy"
    seen = call(tmp_path)
    assert seen["argv"][1:] == ["image", "--format", "json", "--input", str(tmp_path / "oci"), "--title=a b"]
    assert REGISTRY_PASSWORD not in json.dumps(seen["env"])  # acci_ops's secrets stay in acci_ops


def test_grype_findings_against_the_threshold(tmp_path: Path) -> None:
    scanner = stand_in(tmp_path, "grype", report=GRYPE, exit_code=1)  # grype --fail-on exits 1: still a report
    outcome = vulnerability_scan(f"{scanner} oci-dir:{{oci_dir}} -o json", oci_dir="/o", image_ref="r",
                                 fail_on="critical")
    assert outcome.passed, outcome.description
    assert outcome.description == "grype: 1 HIGH, 1 LOW, 1 NEGLIGIBLE; nothing at or above CRITICAL"
    assert call(tmp_path)["argv"][1] == "oci-dir:/o"
    outcome = vulnerability_scan(f"{scanner} {{image_ref}}", oci_dir="/o", image_ref="reg/a@sha256:1", fail_on="HIGH")
    assert not outcome.passed
    assert outcome.description == "grype found 1 HIGH (ACCI_IMAGE_SCAN_FAIL_ON=HIGH); all: 1 HIGH, 1 LOW, 1 NEGLIGIBLE"
    assert call(tmp_path)["argv"][1] == "reg/a@sha256:1"


def test_clean_report_passes(tmp_path: Path) -> None:
    scanner = stand_in(tmp_path, "trivy", report={"SchemaVersion": 2, "Results": []})
    outcome = vulnerability_scan(str(scanner), oci_dir="/o", image_ref="r")
    assert outcome.passed and outcome.description == "trivy: no findings; nothing at or above CRITICAL"


def test_never_a_shell(tmp_path: Path) -> None:
    scanner = stand_in(tmp_path, "trivy", report=TRIVY)
    marker = tmp_path / "pwned"
    vulnerability_scan(f"{scanner} x; touch {marker} $(touch {marker})", oci_dir="/o", image_ref="r")
    assert not marker.exists()
    assert call(tmp_path)["argv"][1:] == ["x;", "touch", str(marker), "$(touch", f"{marker})"]


def test_scanner_crash_timeout_and_garbage_fail_with_one_line(tmp_path: Path) -> None:
    crash = stand_in(tmp_path, "trivy", exit_code=2, raw="",
                     stderr="FATAL init error\ndatabase not found: run trivy --download-db-only\n")
    outcome = vulnerability_scan(str(crash), oci_dir="/o", image_ref="r")
    assert (outcome.passed, outcome.severity) == (False, "ERROR")
    assert outcome.description == "scanner trivy failed (exit code 2: database not found: run trivy --download-db-only)"
    garbage = stand_in(tmp_path, "grype", raw="hello\n")
    outcome = vulnerability_scan(str(garbage), oci_dir="/o", image_ref="r")
    assert outcome.description == ("scanner grype failed (its output is not usable: "
                                   "Expecting value: line 1 column 1 (char 0))")
    other_json = stand_in(tmp_path, "grype", report={"foo": 1})
    outcome = vulnerability_scan(str(other_json), oci_dir="/o", image_ref="r")
    assert outcome.description == ("scanner grype failed (its output is not usable: neither trivy JSON (Results) "
                                   "nor grype JSON (matches))")
    silent = stand_in(tmp_path, "grype", raw="")
    assert vulnerability_scan(str(silent), oci_dir="/o", image_ref="r").description == (
        "scanner grype failed (it printed no report on stdout)")
    slow = stand_in(tmp_path, "slowscan", report=TRIVY, sleep=30)
    outcome = vulnerability_scan(str(slow), oci_dir="/o", image_ref="r", timeout=0.5)
    assert outcome.description == "scanner slowscan did not finish within 0.5 s"
    outcome = vulnerability_scan(str(tmp_path / "missing-scanner"), oci_dir="/o", image_ref="r")
    assert outcome.description == f"scanner {tmp_path}/missing-scanner not found (ACCI_IMAGE_SCAN_COMMAND)"


def test_bad_configuration_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown placeholder \{digest\}; use \{oci_dir\} or \{image_ref\}"):
        scan_argv("trivy {digest}", oci_dir="/o", image_ref="r")
    with pytest.raises(ConfigError, match="cannot be split into words: No closing quotation"):
        scan_argv("trivy 'x", oci_dir="/o", image_ref="r")
    with pytest.raises(ConfigError, match="ACCI_IMAGE_SCAN_FAIL_ON 'SEVERE' is not one of UNKNOWN, NEGLIGIBLE"):
        vulnerability_scan("trivy", oci_dir="/o", image_ref="r", fail_on="SEVERE")
    assert scan_argv("s --x={{literal}} {oci_dir}", oci_dir="/o", image_ref="r") == ["s", "--x={literal}", "/o"]


def test_count_severities_shapes() -> None:
    assert count_severities(TRIVY) == ("trivy", {"CRITICAL": 1, "HIGH": 2})
    assert count_severities(GRYPE) == ("grype", {"HIGH": 1, "LOW": 1, "NEGLIGIBLE": 1})
    assert count_severities({"matches": [{"vulnerability": {"severity": "weird"}}]}) == ("grype", {"UNKNOWN": 1})
    with pytest.raises(ValueError):
        count_severities([])


def test_a_report_over_the_limit_is_refused_unread(tmp_path: Path) -> None:
    """A scanner (or an image that makes it talk) printing without end: stopped at the cap, one line."""
    endless = tmp_path / "endless"
    endless.write_text(f"#!{sys.executable}\nimport sys\nwhile True:\n    sys.stdout.write('[' * 65536)\n")
    endless.chmod(0o755)
    outcome = vulnerability_scan(str(endless), oci_dir="/o", image_ref="r", max_report_bytes=2**20, timeout=60)
    assert (outcome.passed, outcome.severity) == (False, "ERROR")
    assert outcome.description == "scanner endless wrote a report larger than 1 MiB; refused"
