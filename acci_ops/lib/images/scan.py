"""``vulnerability_scan``: the operator's scanner over the staged image, gated on a severity.

No vulnerability database can be fetched from here and none ships with acci_ops, so the scanner
and its database are the operator's: ``ACCI_IMAGE_SCAN_COMMAND`` is an argv template (split with
``shlex``, never run through a shell) with the placeholders ``{oci_dir}`` (the staged OCI layout)
and ``{image_ref}`` (the image's name), e.g.

    trivy image --quiet --format json --input {oci_dir}
    grype oci-dir:{oci_dir} -o json

Its JSON report on stdout (trivy's ``Results[].Vulnerabilities[].Severity`` or grype's
``matches[].vulnerability.severity``) is counted per severity; any finding at or above
``ACCI_IMAGE_SCAN_FAIL_ON`` (default CRITICAL) fails the check. Without a scanner the check says so
as a warning: it never passes, because "not scanned" must not look like "clean".
"""

from __future__ import annotations

import json
import os
import shlex
import string
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from acci_ops.lib.core.commands import CommandOutputTooLarge, CommandTimeout, human_size, run_command
from acci_ops.lib.core.errors import ConfigError
from acci_ops.lib.images.outcome import CheckOutcome

CHECK_NAME = "vulnerability_scan"
SEVERITIES = ("UNKNOWN", "NEGLIGIBLE", "LOW", "MEDIUM", "HIGH", "CRITICAL")
PLACEHOLDERS = ("oci_dir", "image_ref")
# What a scanner may inherit besides the base allow-list: its own settings (database and cache
# directories, offline switches) and proxies; never acci_ops's secrets.
SCANNER_ENV = ("TRIVY_*", "GRYPE_*", "SYFT_*", "XDG_*", "SSL_CERT_FILE", "SSL_CERT_DIR",
               "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy")
NOT_CONFIGURED = "no vulnerability scanner configured (set ACCI_IMAGE_SCAN_COMMAND)"
# The report is read whole and parsed: a scanner (or the image it reads, through it) gets no more
# of acci_ops's memory than this. trivy's JSON for a large Debian image is a few MiB.
MAX_REPORT_BYTES = 64 * 2**20


def fail_on_level(value: str | None) -> str:
    """``ACCI_IMAGE_SCAN_FAIL_ON`` normalised (default CRITICAL); a ConfigError names the choices."""
    level = (value or "CRITICAL").strip().upper()
    if level not in SEVERITIES:
        raise ConfigError(f"ACCI_IMAGE_SCAN_FAIL_ON {value!r} is not one of {', '.join(SEVERITIES)}")
    return level


def scan_argv(template: str, *, oci_dir: str | os.PathLike, image_ref: str) -> list[str]:
    """The scanner argv: ``template`` split like a shell would (quotes work, nothing else does),
    placeholders replaced inside each word. Unknown placeholders are a ConfigError."""
    try:
        words = shlex.split(template)
    except ValueError as exc:
        raise ConfigError(f"ACCI_IMAGE_SCAN_COMMAND cannot be split into words: {exc}") from None
    if not words:
        raise ConfigError("ACCI_IMAGE_SCAN_COMMAND is empty")
    values = {"oci_dir": str(oci_dir), "image_ref": image_ref}
    argv = []
    for word in words:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(word) if f is not None]
        except ValueError as exc:
            raise ConfigError(f"ACCI_IMAGE_SCAN_COMMAND word {word!r}: {exc} "
                              "(write {{ and }} for literal braces)") from None
        unknown = [f for f in fields if f not in PLACEHOLDERS]
        if unknown:
            raise ConfigError(f"ACCI_IMAGE_SCAN_COMMAND has unknown placeholder {{{unknown[0]}}}; "
                              f"use {{oci_dir}} or {{image_ref}}")
        argv.append(word.format(**values))
    return argv


def count_severities(report: Any) -> tuple[str, Counter[str]]:
    """``(format, counts per severity)`` of a trivy or grype JSON report; ValueError otherwise."""
    counts: Counter[str] = Counter()
    if isinstance(report, dict) and "matches" in report:
        for match in report.get("matches") or []:
            severity = str(((match or {}).get("vulnerability") or {}).get("severity") or "UNKNOWN").upper()
            counts[severity if severity in SEVERITIES else "UNKNOWN"] += 1
        return "grype", counts
    if isinstance(report, dict) and ("Results" in report or "SchemaVersion" in report):
        for result in report.get("Results") or []:
            for vulnerability in (result or {}).get("Vulnerabilities") or []:
                severity = str((vulnerability or {}).get("Severity") or "UNKNOWN").upper()
                counts[severity if severity in SEVERITIES else "UNKNOWN"] += 1
        return "trivy", counts
    raise ValueError("neither trivy JSON (Results) nor grype JSON (matches)")


def vulnerability_scan(command: str | None, *, oci_dir: str | os.PathLike, image_ref: str,
                       fail_on: str | None = "CRITICAL", timeout: float = 900.0,
                       log: Callable[[str], None] | None = None,
                       max_report_bytes: int = MAX_REPORT_BYTES) -> CheckOutcome:
    """Run the configured scanner and gate on ``fail_on``.

    Outcomes: no scanner -> not passed, WARN (never a pass); findings at/above ``fail_on`` ->
    failed ERROR naming the counts; scanner crash, timeout or unreadable report -> failed ERROR with
    one line (also a report over ``max_report_bytes``, refused unread); otherwise passed with the
    counts in metadata. Bad configuration (template, level) raises ConfigError: it is the
    operator's to fix, not a property of the image."""
    level = fail_on_level(fail_on)
    if not command or not command.strip():
        return CheckOutcome(CHECK_NAME, False, "WARN", NOT_CONFIGURED, {"scanner": None, "fail_on": level})
    argv = scan_argv(command, oci_dir=Path(oci_dir).resolve(), image_ref=image_ref)
    name = os.path.basename(argv[0])
    metadata: dict[str, Any] = {"scanner": name, "fail_on": level}
    if log:
        log(f"vulnerability scan: {shlex.join(argv)}")
    started = time.monotonic()
    try:
        # stdout is the report; stderr is streamed to the log as it comes.
        result = run_command(argv, timeout=timeout, check=False, capture_stdout=True, allow_env=SCANNER_ENV,
                             max_stdout_bytes=max_report_bytes,
                             on_line=(lambda line: log(f"scanner: {line}")) if log else None)
    except CommandOutputTooLarge:
        return CheckOutcome(CHECK_NAME, False, "ERROR",
                            f"scanner {name} wrote a report larger than {human_size(max_report_bytes)}; refused",
                            metadata)
    except CommandTimeout:
        return CheckOutcome(CHECK_NAME, False, "ERROR", f"scanner {name} did not finish within {timeout:g} s",
                            metadata)
    except ConfigError:  # the runner's "not found"
        return CheckOutcome(CHECK_NAME, False, "ERROR", f"scanner {argv[0]} not found (ACCI_IMAGE_SCAN_COMMAND)",
                            metadata)
    except PermissionError:
        return CheckOutcome(CHECK_NAME, False, "ERROR", f"scanner {argv[0]} is not executable", metadata)
    returncode, stdout, last_err = result.returncode, result.stdout, result.last_line
    metadata["seconds"] = round(time.monotonic() - started, 2)
    metadata["exit_code"] = returncode
    try:
        report_format, counts = count_severities(json.loads(stdout))
    except ValueError as exc:  # JSONDecodeError is a ValueError
        why = f"exit code {returncode}: {last_err}" if returncode != 0 else f"its output is not usable: {exc}"
        if returncode == 0 and not stdout.strip():
            why = "it printed no report on stdout"
        return CheckOutcome(CHECK_NAME, False, "ERROR", " ".join(f"scanner {name} failed ({why})".split())[:300],
                            metadata)
    ordered = {s: counts.get(s, 0) for s in reversed(SEVERITIES) if counts.get(s, 0)}
    metadata.update(format=report_format, findings=ordered, total=sum(counts.values()))
    threshold = SEVERITIES.index(level)
    blocking = {s: n for s, n in ordered.items() if SEVERITIES.index(s) >= threshold}
    summary = ", ".join(f"{n} {s}" for s, n in ordered.items()) or "no findings"
    if blocking:
        worst = ", ".join(f"{n} {s}" for s, n in blocking.items())
        return CheckOutcome(CHECK_NAME, False, "ERROR",
                            f"{name} found {worst} (ACCI_IMAGE_SCAN_FAIL_ON={level}); all: {summary}", metadata)
    return CheckOutcome(CHECK_NAME, True, "ERROR", f"{name}: {summary}; nothing at or above {level}", metadata)
