"""Launchpad answers that Dagster refuses before a run exists.

Dagster's config schema has no "non-empty string", and a ``dg.Config`` (pydantic) validator runs
only when the op builds its config object, i.e. inside a run that was already created. Two things
do run before: the schema check (Enum values, required fields; in the Launchpad as you type, and in
the webserver at launch) and the config types' ``post_process``, which Dagster runs wherever it
resolves a run config against the code: ``dg.validate_run_config``, ``execute_in_process`` and, for a
launch from the UI, the code location building the execution plan before the webserver records the
run. So: the environment is a ``dg.Enum`` of the declared names (the Launchpad marks anything else
at once), and typed answers are ``NonBlankString``, whose ``post_process`` refuses '' and blanks.

``NonBlankString`` subclasses ``dagster._config.ConfigScalar`` (not public API; dagster is pinned
in pyproject.toml, and ``test_dr_launchpad`` and the release Launchpad tests fail if an upgrade changes the behaviour).
"""

from __future__ import annotations

import dagster as dg
from dagster._config.config_type import ConfigScalar, ConfigScalarKind
from dagster._config.errors import PostProcessingError


class NonBlankString(ConfigScalar):
    """A string with at least one non-blank character; ``hint`` says what to type instead."""

    def __init__(self, key: str, hint: str) -> None:
        super().__init__(key=key, given_name=key, scalar_kind=ConfigScalarKind.STRING, description=hint)
        self.hint = hint

    def post_process(self, value: str) -> str:
        if not value.strip():
            raise PostProcessingError(f"empty or blank: {self.hint}")
        return value


def environment_enum(name: str, environments: list[str], what: str) -> dg.Enum:
    """The declared environments as the only accepted values (an empty or mistyped one is a config
    error in the Launchpad itself)."""
    return dg.Enum(name, [dg.EnumValue(env, description=f"{what} {env}") for env in environments])
