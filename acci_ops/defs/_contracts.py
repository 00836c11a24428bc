"""What one domain relies on in another, declared once here so that no domain imports another.

A domain reaches another only through the code location: by an asset name (its key built with
``asset_key``), a group, or a resource key (``resource_key``) whose resource it reads from the run's
context. This module names those: the assets and the group other domains depend on, and, as
Protocols, the part of each resource that other domains call. The classes in each domain's
``resources.py`` implement them (``acci_ops_tests/defs/test_domain_imports.py`` checks that they
do); a domain's own methods stay its own.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import dagster as dg

from acci_ops.defs._shared import asset_key
from acci_ops.lib.backup.dump import BackupSettings
from acci_ops.lib.backup.signing import Keyring
from acci_ops.lib.images.pipeline import ImageSettings
from acci_ops.lib.postgres.urls import DatabaseTarget
from acci_ops.lib.storage.objectstore import ObjectStore
from acci_ops.settings import EnvironmentSpec, Settings

StepContext = dg.OpExecutionContext | dg.AssetExecutionContext | dg.AssetCheckExecutionContext

# --- assets and groups ---------------------------------------------------------------------------

BACKUP_ASSET = "db_backup"  # defs/backups; validation's restore check is a check of this asset
VALIDATED_ASSET = "db_backup_validated"  # defs/validation; DR's drill restores the backup it names
BACKUPS_GROUP = "backups"  # nightly_backup materializes this group: backup, validated and offsite assets
IMAGE_ASSET = dg.AssetKey("acci_image")  # defs/images; releases deploy the image a version's build pushed
VERSIONS_PARTITIONS = "acci_versions"  # defs/images adds a partition per version; releases share it
IMAGES_RESOURCE = "acci_images"  # defs/images' resource; releases read the registry through it


def backup_asset_key(spec: EnvironmentSpec, settings: Settings) -> dg.AssetKey:
    return asset_key(settings, spec.name, BACKUP_ASSET)


def validated_asset_key(spec: EnvironmentSpec, settings: Settings) -> dg.AssetKey:
    return asset_key(settings, spec.name, VALIDATED_ASSET)


# --- resources other domains use -----------------------------------------------------------------

@runtime_checkable
class BackupEnvironment(Protocol):
    """The backup resource (``acci_env_<env>``, defs/backups): the environment's database and the
    store its backups are in, and the keys that authenticate them. Validation and DR read it."""

    name: str
    pg_bin_dir: str | None

    def target(self) -> DatabaseTarget: ...

    def store(self) -> ObjectStore: ...

    def keyring(self) -> Keyring | None: ...

    def keyring_or_warn(self, context: StepContext) -> Keyring | None: ...

    def backup_settings(self) -> BackupSettings: ...


@runtime_checkable
class ImageRegistryAccess(Protocol):
    """The images resource (``acci_images``, defs/images) as releases use it: the registry the
    versions were pushed to, with its credentials."""

    def image_settings(self) -> ImageSettings: ...


@runtime_checkable
class ScratchServer(Protocol):
    """The validation resource (``acci_validation_<env>``, defs/validation) as DR's drill uses it:
    the scratch server a drill restores into."""

    scratch_allow_superuser: bool

    def scratch(self) -> DatabaseTarget: ...


@runtime_checkable
class Notifier(Protocol):
    """The alert webhook (``alert_webhook``, defs/alerts) as DR uses it: a notice that never stops
    the procedure that sends it."""

    def notify(self, context: dg.OpExecutionContext, text: str) -> None: ...
