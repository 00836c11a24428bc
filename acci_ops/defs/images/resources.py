"""The image-build resource (``acci_images``): source, registry and build settings from ImagesSpec;
the registry password stays an EnvVar reference until a run starts."""

from __future__ import annotations

import shlex
from pathlib import Path

from acci_ops.defs._shared import resource_from_spec, spec_resource
from acci_ops.lib.core.errors import ConfigError
from acci_ops.lib.images.engines import ContainerEngine, container_engine
from acci_ops.lib.images.pipeline import ImageSettings
from acci_ops.lib.images.policy import PolicyConfig
from acci_ops.lib.images.smoke import SmokeConfig
from acci_ops.lib.images.tools import ContainerTools, default_storage_dir
from acci_ops.settings import ImagesSpec

RESOURCE_KEY = "acci_images"


class ImageBuilder(spec_resource(ImagesSpec, "ImageBuilderFields")):
    """Where ACCI Framework's source and images live, and how images are built and checked."""

    def image_settings(self) -> ImageSettings:
        if not self.source_repo or not self.image_repository:
            raise ConfigError("image builds need ACCI_SOURCE_REPO and ACCI_IMAGE_REPOSITORY")
        return ImageSettings(
            source_repo=self.source_repo, repository=self.image_repository, tag_pattern=self.source_tag_pattern,
            username=self.registry_username or None, password=self.registry_password or None,
            tls_verify=self.registry_tls_verify, platforms=tuple(self.platforms), dockerfile=self.dockerfile,
            context=self.build_context, backend=self.build_backend, engine=self.container_engine,
            storage_dir=self.storage_path(), latest_tag="latest" if self.latest_tag else None,
            build_timeout_seconds=self.build_timeout_seconds, build_network=self.build_network)

    def storage_path(self) -> Path:
        return Path(self.storage_dir) if self.storage_dir else default_storage_dir()

    def tools(self) -> ContainerTools:
        return ContainerTools(self.storage_path())

    def engine(self, tools: ContainerTools) -> ContainerEngine:
        """The engine that runs the smoke test (ACCI_CONTAINER_ENGINE; docker at ACCI_DOCKER_HOST)."""
        return container_engine(self.container_engine, tools, self.docker_host or None)

    def smoke_config(self) -> SmokeConfig:
        command = None
        if self.smoke_command:
            try:
                command = tuple(shlex.split(self.smoke_command))
            except ValueError as exc:
                raise ConfigError(f"ACCI_IMAGE_SMOKE_COMMAND cannot be split into arguments: {exc}") from None
        if self.smoke_port is not None and not 1 <= self.smoke_port <= 65535:
            raise ConfigError(f"ACCI_IMAGE_SMOKE_PORT={self.smoke_port} is not a TCP port (1-65535)")
        return SmokeConfig(required_metrics=tuple(self.required_metrics), timeout_seconds=self.smoke_timeout_seconds,
                           command=command, port=self.smoke_port, database_url=self.smoke_database_url or None,
                           redis_url=self.smoke_redis_url or None)

    def policy_config(self, dockerfile: Path | None) -> PolicyConfig:
        return PolicyConfig(max_mb=self.max_mb, dockerfile=dockerfile)


def images_resource(spec: ImagesSpec) -> ImageBuilder:
    return resource_from_spec(ImageBuilder, spec)
