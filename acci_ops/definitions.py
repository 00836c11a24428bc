"""The one entry point of the acci_ops code location: each domain's definitions, merged.

This is the only module that knows every domain (``acci_ops_tests/defs/test_domain_imports.py``
holds the domains to that). DR and releases are built last because their guarded jobs
(disaster_recovery, release, rollback_release) bind every resource of the code location as a fixed
copy, so that their Launchpad cannot edit one: they receive the others' resources from here
instead of importing them, and a new domain is one line in ``DOMAINS``.
"""

from types import ModuleType

import dagster as dg

from acci_ops.defs.alerts import definitions as alerts
from acci_ops.defs.backups import definitions as backups
from acci_ops.defs.dr import definitions as dr
from acci_ops.defs.images import definitions as images
from acci_ops.defs.releases import definitions as releases
from acci_ops.defs.validation import definitions as validation
from acci_ops.settings import Settings, load_settings

DOMAINS = (backups, validation, images, alerts)  # each builds alone: build_defs(settings)
# Built last, in this order: build_defs(settings, the resources of every domain built before it).
LATE = (dr, releases)


def domain_name(module: ModuleType) -> str:
    """``acci_ops.defs.<domain>.definitions`` -> ``<domain>``."""
    return module.__name__.split(".")[-2]


def build_domains(settings: Settings) -> dict[str, dg.Definitions]:
    """Each domain's definitions by name: ``DOMAINS`` first, then ``LATE``, each with the resources of
    all built before it."""
    parts = {domain_name(domain): domain.build_defs(settings) for domain in DOMAINS}
    resources = {key: resource for part in parts.values() for key, resource in (part.resources or {}).items()}
    for late in LATE:  # their guarded jobs bind every resource of the code location, fixed
        parts[domain_name(late)] = part = late.build_defs(settings, resources)
        resources = {**resources, **(part.resources or {})}
    return parts


def build_definitions(settings: Settings) -> dg.Definitions:
    """Everything for the declared environments; secrets stay EnvVar references."""
    return dg.Definitions.merge(*build_domains(settings).values())


defs = build_definitions(load_settings())
