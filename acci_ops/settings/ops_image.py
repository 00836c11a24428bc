"""The ops_image section: acci_ops's own code-location image, built by acci_ops's image pipeline.

A second image source beside ACCI Framework's (``images``): its source is acci_ops's repository, its
Containerfile ``deploy/dagster/Containerfile``, its repository of its own; it shares the registry
credentials and the tools' storage with ``images``. Off until both the source and the repository are
named. Variables only: one image for the whole deployment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from acci_ops.lib.core.errors import ConfigError
from acci_ops.lib.images.build import check_build_network, parse_platforms
from acci_ops.lib.releases.deployers import parse_image_ref
from acci_ops.settings._fields import load_section, setting
from acci_ops.settings._registry import Section, register

DEFAULT_BASE = "docker.io/library/python:3.11-slim-bookworm"


@dataclass(frozen=True)
class OpsImageSpec:
    """acci_ops's own image: where its source is, where it goes, what it is built from."""

    source_repo: str | None = setting(None, var="ACCI_OPS_SOURCE_REPO",
                                      help="acci_ops's own source: a git URL or a local path.")
    source_tag_pattern: str = setting("v*", var="ACCI_OPS_SOURCE_TAG_PATTERN",
                                      help="acci_ops's release tags (glob); other refs are built as sha-<commit>.")
    image_repository: str | None = setting(
        None, var="ACCI_OPS_IMAGE_REPOSITORY",
        help="Where the acci_ops image goes, e.g. registry.example.com/acci/acci-ops (the registry credentials "
             "are ACCI_REGISTRY_USERNAME / ACCI_REGISTRY_PASSWORD).")
    base_image: str = setting(
        DEFAULT_BASE, var="ACCI_OPS_IMAGE_BASE",
        help="The Containerfile's BASE_IMAGE: a Debian with Python 3.11 (pin it by digest for repeatable builds).")
    platforms: tuple[str, ...] = setting(
        ("linux/amd64",), var="ACCI_OPS_IMAGE_PLATFORMS",
        help="Platforms of the acci_ops image; each other than the build host's needs qemu (its RUN steps run).")
    build_network: str = setting(
        "none", var="ACCI_OPS_IMAGE_BUILD_NETWORK",
        help=("What its RUN steps reach: none (the default; the base must hold postgresql-client-15 and zstd) or "
              "host / a podman network when they must be installed with apt-get (python:3.11-slim-bookworm)."))
    wheelhouse: tuple[str, ...] = setting(
        (), var="ACCI_OPS_IMAGE_WHEELHOUSE",
        help="Directories of wheels pip may take acci_ops's dependencies from, before its configured index.")
    offline: bool = setting(False, var="ACCI_OPS_IMAGE_OFFLINE",
                            help="Take every wheel from ACCI_OPS_IMAGE_WHEELHOUSE only (pip --no-index).")
    helm: str | None = setting(None, var="ACCI_OPS_IMAGE_HELM",
                               help="The helm binary copied into the image; unset: the one on PATH.")
    max_mb: float = setting(1000, var="ACCI_OPS_IMAGE_MAX_MB", minimum=1,
                            help="Largest allowed acci_ops image per platform, compressed, in MB (image policy).")
    smoke_timeout_seconds: float = setting(300, var="ACCI_OPS_IMAGE_SMOKE_TIMEOUT_SECONDS", minimum=1,
                                           help="How long the image's selfcheck may take in its smoke test.")
    running_image: str | None = setting(
        None, var="DAGSTER_CURRENT_IMAGE", resource=False,
        help=("The image this code server runs in, as the deployment tells Dagster (the Compose file and the "
              "Helm chart set it; run launchers start runs from it). Must be by digest: with a tag, a run could "
              "start another version of acci_ops than the code server that planned it."))

    @property
    def enabled(self) -> bool:
        return bool(self.source_repo and self.image_repository)


def _from_variables(environ: Mapping[str, str]) -> OpsImageSpec:
    spec = load_section(OpsImageSpec, environ, None, where="variables")
    parse_platforms(list(spec.platforms))
    check_build_network(spec.build_network)
    if bool(spec.source_repo) != bool(spec.image_repository):
        missing = "ACCI_OPS_IMAGE_REPOSITORY" if spec.source_repo else "ACCI_OPS_SOURCE_REPO"
        raise ConfigError(f"the acci_ops image needs both ACCI_OPS_SOURCE_REPO and ACCI_OPS_IMAGE_REPOSITORY; "
                          f"{missing} is unset")
    if spec.offline and not spec.wheelhouse:
        raise ConfigError("ACCI_OPS_IMAGE_OFFLINE=true needs ACCI_OPS_IMAGE_WHEELHOUSE (where the wheels are)")
    if spec.running_image:
        try:
            parse_image_ref(spec.running_image, "DAGSTER_CURRENT_IMAGE")
        except ConfigError:
            raise ConfigError(f"DAGSTER_CURRENT_IMAGE {spec.running_image!r} is not repo@sha256:<64 lowercase hex "
                              "digits>: runs start from this image by digest, never by a tag that can move") from None
    if any(ch.isspace() for ch in spec.base_image) or not spec.base_image:
        raise ConfigError(f"ACCI_OPS_IMAGE_BASE {spec.base_image!r} is not an image reference")
    return spec


register(Section(name="ops_image", spec=OpsImageSpec, per_environment=False, from_variables=_from_variables))
