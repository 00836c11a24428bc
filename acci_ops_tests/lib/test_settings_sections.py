"""Adding a settings section is one module and one registration: a section registered in-process,
and nothing else edited, is read from the variables and from the environments file, held by
``Settings``/``EnvironmentSpec`` and written into the generated reference. The section used is the
worked example of docs/development.md "Adding a settings section", run as written."""

from __future__ import annotations

import dataclasses
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from acci_ops import settings as model
from acci_ops.lib.core.errors import ConfigError
from acci_ops.settings import Section, load_settings, register, registered, setting, unregister
from acci_ops_tests.fixtures.docs import generator as _generator

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_MODULE = "acci_ops_tests_signoff_example"




def _example_source() -> str:
    text = (REPO / "docs" / "development.md").read_text()
    section = text[text.index("## Adding a settings section"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def signoff() -> Iterator[types.ModuleType]:
    """The docs' example module, imported (which registers it); unregistered afterwards."""
    module = types.ModuleType(EXAMPLE_MODULE)
    sys.modules[EXAMPLE_MODULE] = module  # the dataclass's annotations resolve in its module
    try:
        exec(compile(_example_source(), "docs/development.md", "exec"), module.__dict__)
        yield module
    finally:
        sys.modules.pop(EXAMPLE_MODULE, None)
        if "signoff" in {s.name for s in registered()}:
            unregister("signoff")


@pytest.fixture
def section() -> Iterator[list[str]]:
    """Registers sections the test declares, and unregisters each afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        unregister(name)


def _file(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "envs.yaml"
    path.write_text(text)
    return {"ACCI_ENVIRONMENTS_FILE": str(path)}


def test_the_worked_example_loads_from_the_variables(signoff):
    spec = load_settings({}).environments[0]
    assert spec.signoff == signoff.SignoffSpec() and spec.signoff.channel == "stable"
    spec = load_settings({"ACCI_SIGNOFF_CHANNEL": "candidate", "ACCI_SIGNOFF_APPROVALS": "2",
                          "ACCI_SIGNOFF_WEBHOOK_URL": "https://hooks.example.test/s3cr3t"}).environments[0]
    assert (spec.signoff.channel, spec.signoff.approvals) == ("candidate", 2)
    assert spec.signoff.notify_url_env == "ACCI_SIGNOFF_WEBHOOK_URL"  # the name, never the secret
    with pytest.raises(ConfigError) as failure:
        load_settings({"ACCI_SIGNOFF_APPROVALS": "two"})
    assert str(failure.value) == "ACCI_SIGNOFF_APPROVALS='two' must be a whole number"
    with pytest.raises(ConfigError) as failure:
        load_settings({"ACCI_SIGNOFF_CHANNEL": "nightly"})
    assert str(failure.value) == "ACCI_SIGNOFF_CHANNEL='nightly' must be one of stable, candidate"


def test_the_worked_example_loads_from_the_environments_file(signoff, tmp_path):
    environ = _file(tmp_path, "environments:\n"
                              "  staging:\n    database_url_env: STAGING_DB\n    backup_url: s3://b/staging\n"
                              "    signoff: {channel: candidate, approvals: 2, notify_url_env: STAGING_HOOK}\n"
                              "  production:\n    database_url_env: PROD_DB\n    backup_url: s3://b/prod\n")
    loaded = load_settings({**environ, "ACCI_SIGNOFF_HELM_TIMEOUT_SECONDS": "900", "ACCI_SIGNOFF_APPROVALS": "5"})
    staging, production = loaded.environment("staging").signoff, loaded.environment("production").signoff
    assert (staging.channel, staging.approvals, staging.notify_url_env) == ("candidate", 2, "STAGING_HOOK")
    # Not set in the file: the default, except an `inherit` field, whose variable is the default.
    assert (production.channel, production.approvals, production.notify_url_env) == ("stable", 1, None)
    assert staging.helm_timeout_seconds == production.helm_timeout_seconds == 900


@pytest.mark.parametrize(("releases_yaml", "expected"), [
    ("{chanel: candidate}", "signoff in {path} environment 'prod' has unknown keys ['chanel']"),
    ("candidate", "signoff in {path} environment 'prod' must be a mapping"),
    ("{approvals: two}", "{path} environment 'prod': signoff.approvals must be a whole number, not 'two'"),
    ("{notify_url_env: 'https://hooks.example.test/s3cr3t'}",
     "{path} environment 'prod': signoff.notify_url_env must be the NAME of an environment variable holding "
     "the value, not the value itself (letters, digits and _, not starting with a digit, e.g. "
     "PRODUCTION_DATABASE_URL; the value given is not shown, as it may be a secret)"),
])
def test_a_bad_value_of_the_worked_example_in_the_file_is_one_line(signoff, tmp_path, releases_yaml, expected):
    environ = _file(tmp_path, "environments:\n  prod:\n    database_url_env: PROD_DB\n    backup_url: s3://b/p\n"
                              f"    signoff: {releases_yaml}\n")
    with pytest.raises(ConfigError) as failure:
        load_settings(environ)
    assert str(failure.value) == expected.format(path=environ["ACCI_ENVIRONMENTS_FILE"])


def test_without_its_registration_the_section_does_not_exist(tmp_path):
    """What the tests above see comes from the registration alone: before it (and after
    unregistering) the file's key is refused and no environment has the attribute."""
    environ = _file(tmp_path, "environments:\n  prod:\n    database_url_env: PROD_DB\n    backup_url: s3://b/p\n"
                              "    signoff: {channel: candidate}\n")
    with pytest.raises(ConfigError, match=r"environment 'prod' has unknown keys \['signoff'\]; allowed: "):
        load_settings(environ)
    with pytest.raises(AttributeError, match="EnvironmentSpec has no attribute or section 'signoff'"):
        _ = load_settings({}).environments[0].signoff
    assert "signoff" not in _generator().render()


def test_the_worked_example_is_in_the_generated_reference_and_leaves_it_after(signoff):
    generator = _generator()
    rendered = generator.render()
    table = rendered[rendered.index("\n## signoff\n"):]
    assert table.startswith("\n## signoff\n\n`SignoffSpec`: Which image versions are released to an environment, "
                            "and who signs off. Per environment.\n")
    assert ("| `ACCI_SIGNOFF_CHANNEL` | `stable` | `signoff.channel` | one of `stable`, `candidate` | Which tags "
            "this environment receives: stable (vX.Y.Z) or candidate (-rcN too). |") in table
    assert "| `ACCI_SIGNOFF_WEBHOOK_URL` · secret | unset | `signoff.notify_url_env` (names the variable) |" in table
    assert ("| `ACCI_SIGNOFF_HELM_TIMEOUT_SECONDS` | `600` | `signoff.helm_timeout_seconds`; the variable is the "
            "default | at least 1 |") in table
    assert "[signoff](#signoff)" in rendered  # the list of sections at the top
    # Per-environment sections come before the location-wide ones, whatever the registration order.
    assert rendered.index("\n## Disaster recovery and drills\n") < rendered.index("\n## signoff\n") < rendered.index(
        "\n## Alerts\n")
    unregister("signoff")
    assert generator.render() == (REPO / "docs" / "configuration.md").read_text()


def test_a_location_wide_section_is_read_from_variables_only(section, tmp_path):
    @dataclasses.dataclass(frozen=True)
    class ProbeSpec:
        """A location-wide section a test added."""

        level: int = setting(3, var="ACCI_TEST_PROBE_LEVEL", minimum=1, help="How hard to probe.")

    register(Section(name="probe", spec=ProbeSpec, per_environment=False))
    section.append("probe")
    assert load_settings({}).probe == ProbeSpec(level=3)
    assert load_settings({"ACCI_TEST_PROBE_LEVEL": "7"}).probe.level == 7
    environ = _file(tmp_path, "environments:\n  prod:\n    database_url_env: PROD_DB\n    backup_url: s3://b/p\n")
    assert load_settings({**environ, "ACCI_TEST_PROBE_LEVEL": "7"}).probe.level == 7
    bad = _file(tmp_path, "environments:\n  prod:\n    database_url_env: PROD_DB\n    backup_url: s3://b/p\n"
                          "    probe: {level: 2}\n")
    with pytest.raises(ConfigError, match=r"has unknown keys \['probe'\]"):
        load_settings(bad)
    rendered = _generator().render()
    table = rendered[rendered.index("\n## probe\n"):]
    assert ("One value for the whole code location, from variables only (the environments file cannot set it)."
            in table.split("\n")[3])
    assert "| variable | default | limits | what it is |\n|---|---|---|---|\n" \
           "| `ACCI_TEST_PROBE_LEVEL` | `3` | at least 1 | How hard to probe. |" in table


def test_a_section_turned_on_by_a_variable_is_none_until_then(section, tmp_path):
    @dataclasses.dataclass(frozen=True)
    class GateSpec:
        """A section that is off until its variable is set."""

        url: str = setting("", var="ACCI_TEST_GATE_URL", help="Where the gate is.")
        strict: bool = setting(False, var="ACCI_TEST_GATE_STRICT", help="Fail closed.")

    register(Section(name="gate", spec=GateSpec, per_environment=True, enabled_by="ACCI_TEST_GATE_URL"))
    section.append("gate")
    assert load_settings({"ACCI_TEST_GATE_STRICT": "true"}).environments[0].gate is None
    assert load_settings({"ACCI_TEST_GATE_URL": "https://gate.test"}).environments[0].gate == GateSpec(
        url="https://gate.test")
    environ = _file(tmp_path, "environments:\n"
                              "  a:\n    database_url_env: A_DB\n    backup_url: s3://b/a\n    gate: {strict: true}\n"
                              "  b:\n    database_url_env: B_DB\n    backup_url: s3://b/b\n")
    loaded = load_settings(environ)
    assert loaded.environment("a").gate == GateSpec(strict=True) and loaded.environment("b").gate is None


def test_settings_and_environments_are_built_by_keyword_and_refuse_unknown_sections():
    AlertSpec, EnvironmentSpec, Settings = model.AlertSpec, model.EnvironmentSpec, model.Settings
    backup = model.BackupSpec(database_url_env="DB", backup_url="s3://b/p")
    spec = EnvironmentSpec(name="prod", backup=backup)
    assert (spec.validation, spec.dr) == (model.ValidationSpec(), None)  # registered defaults
    settings = Settings(environments=(spec,))
    assert (settings.alerts, settings.images, settings.timezone) == (AlertSpec(), model.ImagesSpec(), "UTC")
    assert dataclasses.replace(settings, timezone="Europe/Madrid").alerts == AlertSpec()
    assert dataclasses.replace(settings, alerts=AlertSpec(dagster_url="https://d.test")).alerts.dagster_url \
        == "https://d.test"
    assert load_settings({}) == load_settings({}) and hash(load_settings({})) == hash(load_settings({}))
    with pytest.raises(TypeError):
        Settings((spec,))  # no positional construction
    with pytest.raises(TypeError, match=r"^EnvironmentSpec has no section 'backups'; its sections: backup, "
                                        r"validation, dr, releases$"):
        EnvironmentSpec(name="prod", backups=backup)
    with pytest.raises(TypeError, match=r"^EnvironmentSpec needs the backup section$"):
        EnvironmentSpec(name="prod")
    with pytest.raises(TypeError,
                       match=r"^Settings has no section 'image'; its sections: alerts, images, promotion, kubernetes, "
                             r"ops_image$"):
        Settings(environments=(spec,), image=model.ImagesSpec())


COMPANIONS = {"promotion": "releases"}


def test_each_built_in_section_is_registered_by_its_one_import_line():
    """The registry is what loading, the two holders and the reference walk; the package's
    __init__ adds each built-in section with one import of its module."""
    init = (REPO / "acci_ops" / "settings" / "__init__.py").read_text()
    assert [s.name for s in registered()] == ["backup", "validation", "dr", "alerts", "images", "releases",
                                            "promotion", "kubernetes", "ops_image"]
    for registration in registered():
        module = registration.spec.__module__
        # A module may register a companion section (releases registers promotion, its order).
        assert module == f"acci_ops.settings.{COMPANIONS.get(registration.name, registration.name)}"
        assert len(re.findall(rf"^from {re.escape(module)} import ", init, re.M)) == 1, module
    assert model.ENVIRONMENT_KEYS == frozenset().union(*(s.keys() for s in registered(per_environment=True)))


class _Spec:
    pass


@dataclasses.dataclass(frozen=True)
class _GoodSpec:
    """A valid section."""

    knob: int = setting(1, var="ACCI_TEST_KNOB", help="A knob.")


@dataclasses.dataclass(frozen=True)
class _BareSpec:
    knob: int = 1


@pytest.mark.parametrize(("registration", "expected"), [
    (Section(name="backup", spec=_GoodSpec, per_environment=True),
     "settings section 'backup' is registered twice (by BackupSpec and _GoodSpec)"),
    (Section(name="timezone", spec=_GoodSpec, per_environment=False),
     "settings section 'timezone': the name must be lowercase letters, digits and _ and not one of "
     "environment, environments, from_file, name, sections, start_date, timezone, validates"),
    (Section(name="Knobs", spec=_GoodSpec, per_environment=False),
     "settings section 'Knobs': the name must be lowercase letters, digits and _ and not one of "
     "environment, environments, from_file, name, sections, start_date, timezone, validates"),
    (Section(name="knobs", spec=_Spec, per_environment=True),
     f"settings section 'knobs': spec {_Spec!r} is not a dataclass"),
    (Section(name="knobs", spec=_BareSpec, per_environment=True),
     "settings section 'knobs': _BareSpec.knob is not declared with setting(help=...)"),
    (Section(name="knobs", spec=_GoodSpec, per_environment=False, file_keys=frozenset({"knobs"})),
     "settings section 'knobs': top-level key 'knobs' must be one of its fields and not a key the file "
     "already has"),
    (Section(name="knobs", spec=_GoodSpec, per_environment=True, file_keys=frozenset({"knobs", "sse"})),
     "settings section 'knobs': environments file key 'sse' is already read by section 'backup'"),
    (Section(name="knobs", spec=_GoodSpec, per_environment=True, required=True, enabled_by="ACCI_TEST_KNOB"),
     "settings section 'knobs' cannot be both required and turned on by ACCI_TEST_KNOB"),
])
def test_a_mistaken_registration_is_refused_in_one_line(registration, expected):
    before = registered()
    with pytest.raises(ValueError) as failure:
        register(registration)
    assert str(failure.value) == expected
    assert registered() == before


def test_unregistering_an_unknown_section_is_one_line():
    with pytest.raises(ValueError) as failure:
        unregister("signoff")
    assert str(failure.value) == "settings section 'signoff' is not registered"
