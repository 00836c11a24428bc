"""The result of one image check, shared by every check (ELF, smoke, policy, scan) and the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["ERROR", "WARN"]


@dataclass(frozen=True)
class CheckOutcome:
    """What a check found: ``passed``; ``severity`` ERROR blocks the push, WARN only reports;
    ``description`` one readable line (the cause when it failed); ``metadata`` for the UI."""

    name: str
    passed: bool
    severity: Severity = "ERROR"
    description: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def blocks(self) -> bool:
        """True when this outcome must stop the push: a failed ERROR-severity check."""
        return not self.passed and self.severity == "ERROR"


@dataclass(frozen=True)
class Artifact:
    """Something stored with the image in the registry (an SBOM, a provenance statement): pushed
    as an OCI artifact under the tag ``sha256-<index hex>.<suffix>`` after the image itself."""

    suffix: str  # "sbom", "att"
    payload: bytes
    media_type: str  # e.g. "application/spdx+json", "application/vnd.in-toto+json"
    annotations: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)  # summary for the materialization
