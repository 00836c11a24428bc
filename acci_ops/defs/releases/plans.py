"""What a release or rollback will do, decided before anything is deployed.

Every check a Launchpad answer, a registry answer or the ledger must pass is here, apart from the
ops, and each refusal is a ``dg.Failure`` with one line raised before the deployer is called, so
"nothing was deployed" is true whenever one of these fails.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import dagster as dg

from acci_ops.defs._contracts import IMAGE_ASSET, BackupEnvironment, ImageRegistryAccess, StepContext
from acci_ops.defs._shared import engine_errors, section_resource
from acci_ops.lib.core.errors import AcciOpsError, ConfigError
from acci_ops.lib.images.registry import Registry
from acci_ops.lib.platform.backends import AppRuntime, ComposePlatform, HelmPlatform
from acci_ops.lib.platform.paths import resolve_deploy_path
from acci_ops.lib.releases.analysis import AnalysisResult, Target
from acci_ops.lib.releases.blue_green import BlueGreenRelease
from acci_ops.lib.releases.canary import CanaryRelease
from acci_ops.lib.releases.compose_release import ComposeRelease
from acci_ops.lib.releases.deployers import ReleaseTarget, parse_image_ref
from acci_ops.lib.releases.flow import is_breaking
from acci_ops.lib.releases.helm_release import HelmRelease
from acci_ops.lib.releases.ledger import ReleaseLedger
from acci_ops.lib.releases.policy import check_promotion_order
from acci_ops.settings import EnvironmentSpec, Settings

RELEASE_PLATFORMS = ("helm", "compose")
STRATEGY_PLATFORMS = {"blue_green": "compose", "canary": "helm"}  # rolling runs on both
VERSIONS = "acci_versions"


def releasable(settings: Settings) -> list[EnvironmentSpec]:
    """The environments releases deploy to: those whose DR section names helm or compose, or whose
    releases section names Compose files of its own."""
    return [spec for spec in settings.environments if spec.dr and release_platform(spec) in RELEASE_PLATFORMS]


def release_platform(spec: EnvironmentSpec) -> str:
    """What releases deploy with: compose when the releases section names Compose files, else DR's platform."""
    return "compose" if spec.releases.compose_files else spec.dr.platform


def compose_platform(spec: EnvironmentSpec) -> ComposePlatform:
    """The Compose project the releases section names (``compose_files``), with DR's project and app URL
    where it names none."""
    releases, dr = spec.releases, spec.dr
    app_url = releases.app_url or dr.app_url
    if not app_url:
        raise ConfigError(f"environment {spec.name!r}: releases.compose_files needs releases.app_url (where that "
                          "project serves the app, judged by the analysis)")
    return ComposePlatform(project=releases.compose_project or dr.compose_project,
                           files=[resolve_deploy_path(f) for f in releases.compose_files], app_url=app_url)


def promotion_order(settings: Settings, names: list[str]) -> tuple[str, ...]:
    """The declared order (``promotion_order``), else the order the environments are declared in,
    limited to the environments that release. A name this code location does not serve is refused
    when the settings load, not skipped: skipping it would let a version reach production unverified."""
    declared = settings.promotion.promotion_order
    if declared is None:
        return tuple(names)
    return check_promotion_order(list(declared), names, "promotion_order (ACCI_PROMOTION_ORDER or the file's "
                                                        "top-level promotion_order)")


def previous_in_order(order: tuple[str, ...], name: str) -> str | None:
    """The environment a version must be verified on before ``name`` takes it (None: first, or
    not in the order)."""
    position = order.index(name) if name in order else 0
    return order[position - 1] if position else None


@dataclass(frozen=True)
class Image:
    """A version's image as its build recorded it and the registry serves it now."""

    version: str
    image_ref: str
    labels: dict[str, str]

    @property
    def breaking(self) -> bool:
        return is_breaking(self.labels)


def built_image(context: StepContext, version: str) -> str:
    """The ``repo@sha256:...`` the version's build pushed (its latest acci_image materialization)."""
    instance = context.instance
    if version not in instance.get_dynamic_partitions(VERSIONS):
        known = instance.get_dynamic_partitions(VERSIONS)
        shown = ", ".join(sorted(known)[-8:]) or "none yet"
        raise dg.Failure(description=f"unknown version {version!r}: it is not a partition of {VERSIONS} "
                                     f"(newest known: {shown}); nothing was deployed")
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=IMAGE_ASSET, asset_partitions=[version]), limit=1).records
    materialization = records[0].asset_materialization if records else None
    if materialization is None:
        raise dg.Failure(description=(
            f"version {version} has no pushed image: its build_image run failed its checks or never ran (an "
            "image is pushed only after every blocking check passed); nothing was deployed"))
    entry = materialization.metadata.get("image_ref")
    value = getattr(entry, "value", entry)
    with engine_errors(f"version {version}: the image_ref its build recorded is unusable: "):
        return str(parse_image_ref(value, "recorded image_ref"))


def registry_image(images: ImageRegistryAccess, version: str, image_ref: str) -> Image:
    """Check the registry still serves the digest (deploying a digest it lost would fail half-way)
    and read its labels (``io.acci.migrations``)."""
    ref = parse_image_ref(image_ref)
    with engine_errors(f"registry check of {version}: "):
        settings = images.image_settings()
        registry = Registry(ref.repository, settings.username, settings.password, settings.tls_verify)
        if registry.get_manifest(ref.digest) is None:
            raise AcciOpsError(f"the registry does not serve {image_ref} (deleted or garbage-collected); rebuild "
                               f"{version} with build_image (force: true) and release again; nothing was deployed")
        labels = registry.labels(ref.digest)
    return Image(version, image_ref, labels)


def check_strategy(spec: EnvironmentSpec) -> None:
    """blue_green is a Compose strategy and canary a Helm one: refused when the code location loads,
    naming the environment, instead of at the first release."""
    strategy, platform = spec.releases.strategy, release_platform(spec)
    needs = STRATEGY_PLATFORMS.get(strategy)
    if needs and platform != needs:
        raise ConfigError(f"environment {spec.name!r}: release strategy {strategy} needs the {needs} platform, and "
                          f"its releases deploy with {platform}; use rolling, or "
                          + ("canary" if platform == "helm" else "blue_green") + f" on {platform}")
    if spec.releases.compose_files:
        compose_platform(spec)  # its files exist, and it has an app URL


def deployer(context: StepContext, spec: EnvironmentSpec, timeout_seconds: int,
             analyse: Callable[[Target], AnalysisResult] | None = None) -> ReleaseTarget:
    """The environment's platform, as DR deploys it, as a release target with the environment's
    strategy. ``analyse`` judges what blue/green's idle color or a canary step serves (both analyse
    before traffic moves); rolling is analysed by the release flow after the deploy."""
    dr = section_resource(context, "dr", spec.name)
    releases = spec.releases
    with engine_errors(f"{spec.name}: "):
        platform = compose_platform(spec) if spec.releases.compose_files else dr.platform_for(drill=False)
        if releases.strategy != "rolling" and analyse is None:
            raise ConfigError(f"strategy {releases.strategy} judges each step itself and needs the analysis")
        if isinstance(platform, HelmPlatform):
            if releases.strategy == "canary":
                canary = CanaryRelease.from_platform(platform, timeout_seconds=timeout_seconds, steps=releases.steps)
                # Each step is judged where users reach the app: at 100 % that is the canary alone.
                step = Target(canary.url, releases.metrics_url, releases.prometheus_url)
                canary.analyse = lambda weight: analyse(step)
                return canary
            return HelmRelease.from_platform(platform, timeout_seconds=timeout_seconds)
        if isinstance(platform, ComposePlatform):
            if releases.strategy == "blue_green":
                return BlueGreenRelease(
                    project=platform.project, run_dir=releases.blue_green_run_dir(spec.name),
                    proxy_port=app_port(platform.app_url, spec.name), ports=releases.color_ports,
                    files=tuple(resolve_deploy_path(f) for f in releases.blue_green_files),
                    # The idle color on its own port: its /health and /metrics there, PromQL as configured.
                    analyse=lambda color: analyse(Target(color.app_url, None, releases.prometheus_url)),
                    rollback_window_minutes=releases.rollback_window_minutes, timeout_seconds=timeout_seconds,
                    runner=platform.runner)
            return ComposeRelease.from_platform(platform, timeout_seconds=timeout_seconds)
    raise dg.Failure(description=(f"environment {spec.name} is deployed by the {release_platform(spec)} platform; "
                                  f"releases deploy with {' or '.join(RELEASE_PLATFORMS)} only"))


def app_port(app_url: str, environment: str) -> int:
    """The port haproxy serves a blue/green environment on: the one its app URL names (where users and
    the analysis reach the app), 80 or 443 when the URL gives none."""
    parts = urlsplit(app_url)
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"environment {environment!r}: app URL {app_url!r} has no valid port") from None
    return port or (443 if parts.scheme == "https" else 80)


def runtime(context: StepContext, spec: EnvironmentSpec) -> AppRuntime | None:
    """What the app is wired to (its database and Redis), when the environment names its Redis."""
    env: BackupEnvironment = section_resource(context, "backup", spec.name)
    dr = section_resource(context, "dr", spec.name)
    if not getattr(dr, "redis_url", None):
        return None
    return AppRuntime(database=env.target(), redis_url=dr.redis_url)


def ledger_of(context: StepContext, environment: str) -> ReleaseLedger:
    env: BackupEnvironment = section_resource(context, "backup", environment)
    with engine_errors(f"release ledger of {environment}: "):
        return ReleaseLedger(env.store(), env.keyring(), warn=context.log.warning)


def utc_now() -> datetime:
    return datetime.now(UTC)
