"""The kubernetes section: what a run pod of acci_ops's heavy jobs asks for under ``K8sRunLauncher``.

The jobs carry these as ``dagster-k8s/config`` tags whatever the launcher (other launchers ignore them),
so moving acci_ops onto Kubernetes changes ``dagster.yaml`` only. Each job's pod gets its resources from
here and an ``activeDeadlineSeconds`` from the job's own maximum runtime: Dagster's run monitor marks a
timed-out run failed but can leave its Kubernetes Job running (dagster#16535); the deadline makes
Kubernetes stop it too, and ``ttlSecondsAfterFinished`` removes finished Jobs and their pods.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from acci_ops.lib.core.errors import ConfigError
from acci_ops.settings._fields import setting
from acci_ops.settings._registry import Section, register

KINDS = ("backup", "validation", "image_build", "dr", "release")
RESOURCE_NAMES = ("cpu", "memory", "ephemeral-storage")
# A Kubernetes quantity: a number with an optional decimal or binary suffix (1, 0.5, 500m, 2Gi, 1e3).
_QUANTITY = re.compile(r"^(\d+(\.\d+)?|\.\d+)([eE][+-]?\d+|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def parse_resources(text: str, what: str) -> dict[str, str]:
    """``cpu=1,memory=2Gi,ephemeral-storage=20Gi`` -> {name: quantity}; one line naming the setting when not."""
    found: dict[str, str] = {}
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        name, sep, value = (s.strip() for s in part.partition("="))
        if not sep or name not in RESOURCE_NAMES:
            raise ConfigError(f"{what}: {part!r} is not NAME=QUANTITY with NAME one of {', '.join(RESOURCE_NAMES)} "
                              "(e.g. cpu=1,memory=2Gi,ephemeral-storage=20Gi)")
        if not _QUANTITY.fullmatch(value) or float(re.sub(r"[A-Za-z]+$", "", value) or 0) <= 0:
            raise ConfigError(f"{what}: {name}={value!r} is not a positive Kubernetes quantity (e.g. 500m, 2Gi)")
        if name in found:
            raise ConfigError(f"{what}: {name} is given twice")
        found[name] = value
    if "memory" not in found:
        raise ConfigError(f"{what}: memory is required (a pod without a memory limit can take the node's)")
    return found


@dataclass(frozen=True)
class KubernetesSpec:
    """Run pod sizes and lifetimes of the heavy jobs under K8sRunLauncher (one for the whole code location)."""

    backup_resources: str = setting(
        "cpu=1,memory=1Gi,ephemeral-storage=2Gi", var="ACCI_K8S_BACKUP_RESOURCES",
        help="nightly_backup's run pod: the dump streams to the store, so little disk.")
    validation_resources: str = setting(
        "cpu=2,memory=2Gi,ephemeral-storage=20Gi", var="ACCI_K8S_VALIDATION_RESOURCES",
        help="validate_backup's run pod: ephemeral storage must hold the downloaded dump (file mode); size it "
             "above your largest backup.")
    image_build_resources: str = setting(
        "cpu=2,memory=4Gi,ephemeral-storage=20Gi", var="ACCI_K8S_IMAGE_BUILD_RESOURCES",
        help="build_image's run pod: buildah's storage (every layer of every platform) lives on its disk.")
    dr_resources: str = setting(
        "cpu=2,memory=2Gi,ephemeral-storage=20Gi", var="ACCI_K8S_DR_RESOURCES",
        help="dr_drill and disaster_recovery run pods: like validation, they restore a whole dump.")
    release_resources: str = setting(
        "cpu=500m,memory=512Mi,ephemeral-storage=1Gi", var="ACCI_K8S_RELEASE_RESOURCES",
        help="release and rollback_release run pods (helm, the analysis; production's backup streams).")
    ttl_seconds_after_finished: int = setting(
        86400, var="ACCI_K8S_TTL_SECONDS_AFTER_FINISHED", minimum=0,
        help="How long a finished run's Kubernetes Job (and its pod's logs) stays before Kubernetes removes it.")

    def __post_init__(self) -> None:
        for kind in KINDS:
            parse_resources(getattr(self, f"{kind}_resources"), f"ACCI_K8S_{kind.upper()}_RESOURCES")

    def resources(self, kind: str) -> dict[str, str]:
        return parse_resources(getattr(self, f"{kind}_resources"), f"ACCI_K8S_{kind.upper()}_RESOURCES")


register(Section(name="kubernetes", spec=KubernetesSpec, per_environment=False))
