"""The one entry point of the acci_ops code location: each domain's definitions, merged."""

import dagster as dg

from acci_ops.defs.alerts import definitions as alerts
from acci_ops.defs.backups import definitions as backups
from acci_ops.defs.dr import definitions as dr
from acci_ops.defs.images import definitions as images
from acci_ops.defs.validation import definitions as validation
from acci_ops.settings import Settings, load_settings

DOMAINS = (backups, validation, dr, images, alerts)


def build_definitions(settings: Settings) -> dg.Definitions:
    """Everything for the declared environments; secrets stay EnvVar references."""
    return dg.Definitions.merge(*(domain.build_defs(settings) for domain in DOMAINS))


defs = build_definitions(load_settings())
