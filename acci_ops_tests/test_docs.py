"""The documentation cannot drift from the code: the configuration reference is the one the settings
model renders, every setting is in it, the environments-file example loads, and every relative link
leads somewhere. Files are read, nothing is started (unit tests)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from acci_ops import settings as model
from acci_ops.settings import load_settings
from acci_ops_tests.fixtures.docs import generator as _generator

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = sorted([REPO / "README.md", REPO / "deploy" / "README.md", REPO / "benchmarks" / "README.md",
                *DOCS.rglob("*.md")])




def _model_variables() -> dict[str, str]:
    """Every variable a section field is set by (``var``, or the loader's for fields without one),
    with the field it sets."""
    generator = _generator()
    found = {}
    for section in generator._sections():
        for f in dataclasses.fields(section.cls):
            var = f.metadata.get("var") or generator.LOADER_VARIABLES.get((section.name, f.name))
            if var:
                found[var] = f"{section.cls.__name__}.{f.name}"
    found.update({var: f"BackupSpec.retention.{tier}" for tier, var in model.RETENTION_VARIABLES.items()})
    return found


def test_the_configuration_reference_is_what_the_model_renders_now():
    rendered = _generator().render()
    committed = (DOCS / "configuration.md").read_text()
    assert committed == rendered, ("docs/configuration.md is stale: run `python scripts/gen_configuration.py` "
                                   "and commit the result")


def test_check_mode_says_in_one_line_that_the_reference_is_stale(tmp_path, monkeypatch, capsys):
    generator = _generator()
    monkeypatch.setattr(generator, "OUTPUT", tmp_path / "configuration.md")
    monkeypatch.setattr(generator, "REPO", tmp_path)
    assert generator.main(["--check"]) == 1
    assert capsys.readouterr().out == "configuration.md is stale: run `python scripts/gen_configuration.py`\n"
    assert generator.main([]) == 0
    assert generator.main(["--check"]) == 0
    assert capsys.readouterr().out == ""


def test_every_section_and_every_variable_of_the_model_is_in_the_reference():
    reference = (DOCS / "configuration.md").read_text()
    sections = {s.cls for s in _generator()._sections()}
    assert {model.BackupSpec, model.OffsiteSpec, model.ValidationSpec, model.DrSpec, model.AlertSpec,
            model.ImagesSpec} <= sections
    for cls in sections:
        assert f"`{cls.__name__}`" in reference, cls.__name__
    variables = _model_variables()
    assert len(variables) > 60
    assert sorted(v for v in variables if f"`{v}`" not in reference) == []
    location_wide = ("ACCI_ENVIRONMENT", "ACCI_ENVIRONMENTS_FILE", "ACCI_TIMEZONE", "ACCI_BACKUP_START_DATE",
                     "ACCI_CHILD_ENV_ALLOW", "AWS_ENDPOINT_URL")
    assert [v for v in location_wide if f"`{v}`" not in reference] == []


def test_every_environments_file_key_is_in_the_reference():
    reference = (DOCS / "configuration.md").read_text()
    keys = set(model.ENVIRONMENT_KEYS) - {"validation", "dr", "offsite", "retention", "releases"}
    keys |= {f"releases.{k}" for k in model.file_keys(model.ReleasesSpec)}
    keys |= {f"validation.{k}" for k in model.file_keys(model.ValidationSpec, exclude=model.VALIDATION_TOP_LEVEL_KEYS)}
    keys |= {f"dr.{k}" for k in model.file_keys(model.DrSpec)}
    keys |= {f"offsite.{k}" for k in model.file_keys(model.OffsiteSpec)}
    keys |= {f"retention.{tier}" for tier in model.RETENTION_VARIABLES}
    assert sorted(k for k in keys if f"`{k}`" not in reference) == []


def test_a_field_the_generator_cannot_place_stops_it_naming_the_field(monkeypatch):
    generator = _generator()

    @dataclasses.dataclass(frozen=True)
    class NewSpec:
        """A section someone added."""

        knob: int = model.setting(1, help="A knob nobody can set.")

    section = generator.Section("new", NewSpec, True, "new.")
    with pytest.raises(SystemExit, match=r"NewSpec.knob has no variable"):
        generator.section_rows(section)


def test_the_environments_file_example_loads(tmp_path):
    """The YAML shown in docs/environments.md is a file load_settings accepts, as written."""
    text = (DOCS / "environments.md").read_text()
    example = re.search(r"```yaml\n(.*?)```", text[text.index("## Several environments"):], re.S).group(1)
    path = tmp_path / "envs.yaml"
    path.write_text(example)
    loaded = load_settings({"ACCI_ENVIRONMENTS_FILE": str(path)})
    assert [e.name for e in loaded.environments] == ["staging", "production"]
    assert loaded.environment("production").dr.platform == "helm"


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lower case, punctuation removed, spaces to -."""
    text = re.sub(r"`|\*\*?|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a markdown page's headings (outside code blocks); repeats get -1, -2, ..."""
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in page.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(2))
            out.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
    return out


def links(page: Path) -> list[tuple[int, str]]:
    """(line, target) of every markdown link outside code blocks and inline code."""
    found, fenced = [], False
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", re.sub(r"`[^`]*`", "", line)):
            found.append((number, target))
    return found


def test_the_slug_rules_are_githubs():
    assert slug("What `disaster_recovery` does") == "what-disaster_recovery-does"
    assert slug("Redis: production's and the drill's") == "redis-productions-and-the-drills"
    assert slug("Instance configuration (`dagster.yaml`)") == "instance-configuration-dagsteryaml"
    assert slug("At 3 a.m.: the `disaster_recovery` job") == "at-3-am-the-disaster_recovery-job"


def test_every_relative_link_in_the_docs_resolves():
    assert DOCS / "configuration.md" in PAGES and DOCS / "runbooks" / "disaster-recovery.md" in PAGES
    broken = []
    for page in PAGES:
        for number, target in links(page):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(REPO)}:{number} -> {target}"
            if not dest.exists():
                broken.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{where}: no such heading in {dest.relative_to(REPO)}")
    assert broken == []


def test_the_readme_stays_a_front_page():
    """Under ~10 KB, and it links every page of docs/ (so no page is an orphan)."""
    readme = (REPO / "README.md").read_text()
    assert len(readme.encode()) < 10_000
    linked = {(REPO / target.partition("#")[0]).resolve() for _, target in links(REPO / "README.md")}
    assert sorted(str(p.relative_to(REPO)) for p in DOCS.rglob("*.md") if p.resolve() not in linked) == []
