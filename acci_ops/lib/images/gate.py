"""The standard gate of an ACCI Framework image: what every version must pass before its push,
and what is stored with it, the same for the Dagster asset and for any caller without Dagster.

``standard_gate(settings, config)`` gives ``build_version`` its ``checks`` (smoke test,
image policy, vulnerability scan; the ELF architecture check is ``build_version``'s own) and its
``artifacts`` (``sbom``, and ``att``: the provenance statement). Each check function is named
after its check, so a check that crashes is reported (and blocks) under that name.

The smoke test never gets a database or Redis that holds anything: by default a private
PostgreSQL server and redis-server are started for it alone under the build's work directory,
reached only through their unix sockets mounted into the container, and deleted after whatever
happens (``sandbox``). The image under test is written by whoever can push a tag, and the
validation scratch server or a drill's Redis hold restored production data. An operator's
ACCI_IMAGE_SMOKE_DATABASE_URL / ACCI_IMAGE_SMOKE_REDIS_URL replace one or both, handed over as given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from acci_ops.lib.core.commands import LineSink
from acci_ops.lib.core.errors import AcciOpsError
from acci_ops.lib.images.build import LocalIndex
from acci_ops.lib.images.engines import container_engine
from acci_ops.lib.images.outcome import Artifact, CheckOutcome
from acci_ops.lib.images.pipeline import ArtifactProducer, Check, ImageSettings
from acci_ops.lib.images.policy import PolicyConfig
from acci_ops.lib.images.policy import image_policy as run_image_policy
from acci_ops.lib.images.sandbox import private_services
from acci_ops.lib.images.sbom import PROVENANCE_MEDIA_TYPE, provenance_statement, sbom_artifact
from acci_ops.lib.images.scan import vulnerability_scan as run_vulnerability_scan
from acci_ops.lib.images.smoke import CHECK_NAME as SMOKE_CHECK
from acci_ops.lib.images.smoke import SmokeConfig
from acci_ops.lib.images.smoke import smoke_test as run_smoke_test
from acci_ops.lib.images.source import Checkout, public_url
from acci_ops.lib.images.tools import ContainerTools, default_storage_dir


@dataclass(frozen=True)
class GateConfig:
    """What the standard checks need beyond ``ImageSettings``. ``policy.dockerfile`` is set per
    build (the checkout's Dockerfile); ``docker_host`` is for ``settings.engine`` docker."""

    smoke: SmokeConfig = field(default_factory=SmokeConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    scan_command: str | None = None
    scan_fail_on: str | None = "CRITICAL"
    docker_host: str | None = None


@dataclass(frozen=True)
class Gate:
    """``build_version(..., checks=gate.checks, artifacts=gate.artifacts)``; each check function is
    named after its check (``smoke_test``, ``image_policy``, ``vulnerability_scan``)."""

    checks: tuple[Check, ...]
    artifacts: dict[str, ArtifactProducer]


@contextmanager
def smoke_services(config: SmokeConfig, workdir: Path, cache_dir: Path) -> Iterator[tuple[SmokeConfig, dict[str, str]]]:
    """``config`` with the database and Redis the smoke-tested image gets (and their socket
    mounts), plus metadata saying what they are: the operator's URLs when ``config`` has them,
    private servers under ``workdir`` (their template cached under ``cache_dir``) for the rest."""
    database, redis = config.database_url or None, config.redis_url or None
    about: dict[str, str] = {}
    if database:
        about["throwaway_database"] = "ACCI_IMAGE_SMOKE_DATABASE_URL (the operator's; the container has no network)"
    if redis:
        about["throwaway_redis"] = "ACCI_IMAGE_SMOKE_REDIS_URL (the operator's; the container has no network)"
    if database and redis:
        yield dataclasses.replace(config, database_url=database, redis_url=redis), about
        return
    with private_services(workdir, cache_dir, database=database is None, redis=redis is None) as services:
        yield (dataclasses.replace(config, database_url=database or services.database_url or None,
                                   redis_url=redis or services.redis_url or None, mounts=services.mounts),
               {**services.about, **about, "throwaway_services_seconds": f"{services.seconds:.2f}"})


def standard_gate(settings: ImageSettings, config: GateConfig | None = None, *, tools: ContainerTools | None = None,
                  run_id: str | None = None, log: LineSink | None = None) -> Gate:
    """The checks and artifacts every ACCI Framework version gets. ``tools``: the container tools
    the smoke test's engine uses (default: those of ``settings.storage_dir``, as ``build_version``'s);
    ``run_id`` is recorded as the provenance's invocation id (the Dagster run, or whatever
    identifies the caller's run)."""
    config = config or GateConfig()
    cache_dir = Path(settings.storage_dir) if settings.storage_dir else default_storage_dir()

    def smoke_test(local: LocalIndex, checkout: Checkout) -> CheckOutcome:
        try:
            with smoke_services(config.smoke, Path(local.oci_dir).parent, cache_dir) as (smoke_config, about):
                engine = container_engine(settings.engine, tools or ContainerTools(cache_dir), config.docker_host)
                outcome = run_smoke_test(engine, local.oci_dir, smoke_config, log=log)
        except AcciOpsError as exc:
            return CheckOutcome(SMOKE_CHECK, False, "ERROR",
                                " ".join(f"could not start the smoke test's own database and Redis: {exc}".split()))
        return dataclasses.replace(outcome, metadata={**outcome.metadata, **about})

    def image_policy(local: LocalIndex, checkout: Checkout) -> CheckOutcome:
        cfg = dataclasses.replace(config.policy, dockerfile=checkout.path / settings.dockerfile)
        return run_image_policy(local.oci_dir, cfg, log=log)

    def vulnerability_scan(local: LocalIndex, checkout: Checkout) -> CheckOutcome:
        return run_vulnerability_scan(config.scan_command, oci_dir=local.oci_dir,
                                      image_ref=f"{settings.repository}@{local.index_digest}",
                                      fail_on=config.scan_fail_on, log=log)

    def sbom(local: LocalIndex, checkout: Checkout) -> list[Artifact]:
        # One document for every platform of the index (per-platform counts in its metadata).
        return [sbom_artifact(local.oci_dir, name=settings.repository, version=checkout.version or checkout.short,
                              log=log)]

    def provenance(local: LocalIndex, checkout: Checkout) -> list[Artifact]:
        statement = provenance_statement(
            subject_name=settings.repository, index_digest=local.index_digest,
            source_repo=public_url(settings.source_repo),
            revision=checkout.commit, source_ref=checkout.ref,
            build_parameters={"platforms": list(settings.platforms), "dockerfile": settings.dockerfile,
                              "context": settings.context, "source_date_epoch": checkout.commit_epoch},
            base_images=dict(local.base_image_digests),
            platform_digests={p: img.digest for p, img in local.platforms.items()},
            invocation_id=run_id)
        return [Artifact("att", statement, PROVENANCE_MEDIA_TYPE,
                         metadata={"provenance": "in-toto v1, SLSA provenance v1"})]

    # A check's function name is what build_version reports it as when it crashes: the check's own.
    return Gate((smoke_test, image_policy, vulnerability_scan), {"sbom": sbom, "att": provenance})
