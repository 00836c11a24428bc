"""image_policy over real OCI layouts built with buildah (tiny FROM-scratch images, 0.3 s each)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from acci_ops.dev import fixture_app
from acci_ops.lib.core.errors import ConfigError
from acci_ops.lib.images.policy import PolicyConfig, hadolint, image_policy, secret_findings, user_problem
from acci_ops.lib.images.tools import ContainerTools
from acci_ops_tests.fixtures.oci_images import (
    AWS_KEY_ID,
    BASE,
    CLEAN_DOCKERFILE,
    ENTRY,
    HEALTHY_WWW,
    SECRET_VALUE,
    build_oci,
)

PASSWD_APP_ROOT = b"root:x:0:0:root:/root:/sbin/nologin\napp:x:00:0:app:/:/sbin/nologin\n"
PASSWD_APP_USER = b"root:x:0:0:root:/root:/sbin/nologin\napp:x:65532:65532:app:/:/sbin/nologin\n"
# /bin/sh -> /l1 -> ... -> /l20 -> the busybox: 21 symbolic links, more than 16, fewer than the kernel's 40.
CHAIN_21 = {"rootfs/bin/sh": "/l1", **{f"rootfs/l{i}": f"/l{i + 1}" for i in range(1, 20)},
            "rootfs/l20": "/usr/local/bin/httpd"}


@pytest.fixture(scope="module")
def images(container_tools: ContainerTools, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    made = {}
    specs = {
        "good": (CLEAN_DOCKERFILE, {}, None),
        "shell": (BASE + "COPY httpd /bin/sh\nUSER 65532\n" + ENTRY, {}, None),
        "applet_link": (BASE + "COPY rootfs/ /\nUSER 65532\n" + ENTRY, {}, {"rootfs/bin/sh": "/usr/local/bin/httpd"}),
        "dpkg": (BASE + "COPY httpd /usr/bin/dpkg\nUSER 65532\n" + ENTRY, {}, None),
        "root": (BASE + ENTRY, {}, None),
        "secret_env": (BASE + f"ENV DB_PASSWORD={SECRET_VALUE} PORT=8080\nUSER 65532\n" + ENTRY, {}, None),
        "user_plus_zero": (BASE + "USER +0\n" + ENTRY, {}, None),
        "passwd_root": (BASE + "COPY passwd /etc/passwd\nUSER app\n" + ENTRY, {"passwd": PASSWD_APP_ROOT}, None),
        "passwd_user": (BASE + "COPY passwd /etc/passwd\nUSER app\n" + ENTRY, {"passwd": PASSWD_APP_USER}, None),
        "chain21": (BASE + "COPY rootfs/ /\nUSER 65532\n" + ENTRY, {}, CHAIN_21),
        "setuid": (BASE + "COPY --chmod=4755 httpd /usr/local/bin/helper\nUSER 65532\n" + ENTRY, {}, None),
        "setgid": (BASE + "COPY --chmod=2755 httpd /usr/local/bin/helper\nUSER 65532\n" + ENTRY, {}, None),
    }
    for name, (dockerfile, files, links) in specs.items():
        made[name] = build_oci(container_tools, tmp_path_factory.mktemp(f"policy-{name}"), dockerfile,
                               {**HEALTHY_WWW, **files}, symlinks=links)
    return made


def test_good_image_passes(images: dict[str, Path], tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(CLEAN_DOCKERFILE)
    outcome = image_policy(images["good"], PolicyConfig(dockerfile=dockerfile, max_mb=50))
    assert outcome.passed, outcome.description
    assert outcome.description.startswith("policy passed for linux/amd64")
    assert outcome.metadata["violations"] == []
    assert 1_000_000 < outcome.metadata["size_bytes"]["linux/amd64"] < 3_000_000


@pytest.mark.parametrize(("image", "line"), [
    ("shell", "linux/amd64: shell /bin/sh present"),
    ("applet_link", "linux/amd64: shell /bin/sh present"),  # a symlink to busybox is a shell too
    ("dpkg", "linux/amd64: package manager /usr/bin/dpkg present"),
    ("root", "linux/amd64: runs as root (no USER set)"),
    ("user_plus_zero", "linux/amd64: runs as root (USER +0)"),  # runc reads "+0" as uid 0
    ("passwd_root", "linux/amd64: runs as root (USER app: uid 0 in the image's /etc/passwd)"),
    ("chain21", "linux/amd64: shell /bin/sh present"),  # the shell behind 21 links is found
    ("setuid", "linux/amd64: /usr/local/bin/helper is setuid"),  # a way to root for the unprivileged user
    ("setgid", "linux/amd64: /usr/local/bin/helper is setgid"),
])
def test_bad_image_refused_with_one_line(images: dict[str, Path], image: str, line: str) -> None:
    outcome = image_policy(images[image])
    assert not outcome.passed and outcome.severity == "ERROR"
    assert outcome.description == line
    assert outcome.metadata["violations"] == [line]


def test_a_policy_that_allows_a_shell_and_dpkg_still_refuses_root_and_setuid(images: dict[str, Path]) -> None:
    """The acci_ops image's policy (a shell and dpkg by necessity) lets those through and nothing else."""
    allowing = PolicyConfig(allow_shell=True, allow_package_manager=True, max_mb=0.5,
                            size_setting="ACCI_OPS_IMAGE_MAX_MB")
    for name in ("shell", "dpkg"):
        outcome = image_policy(images[name], dataclasses.replace(allowing, max_mb=None))
        assert outcome.passed, outcome.description
        assert "shell and package manager allowed for this image" in outcome.description
    setuid, size = image_policy(images["setuid"], allowing).metadata["violations"]
    assert setuid == "linux/amd64: /usr/local/bin/helper is setuid"
    assert size.endswith(" MB exceeds the 0.5 MB limit (ACCI_OPS_IMAGE_MAX_MB)")  # the image's own setting
    assert image_policy(images["root"], allowing).metadata["violations"][0] == "linux/amd64: runs as root (no USER set)"


def test_secret_in_env_refused_and_never_repeated(images: dict[str, Path]) -> None:
    outcome = image_policy(images["secret_env"])
    assert not outcome.passed
    assert outcome.description.startswith("linux/amd64: secret in config Env DB_PASSWORD (a secret-looking name")
    # buildah records the ENV instruction in the history as well: both are reported, by name only.
    assert any("secret in history entry" in v and "DB_PASSWORD" in v for v in outcome.metadata["violations"])
    assert SECRET_VALUE not in outcome.description
    assert SECRET_VALUE not in json.dumps(outcome.metadata)


def test_labels_and_size_limit(container_tools: ContainerTools, tmp_path: Path) -> None:
    oci = build_oci(container_tools, tmp_path, CLEAN_DOCKERFILE, HEALTHY_WWW,
                    labels={"org.opencontainers.image.title": "t"})
    outcome = image_policy(oci, PolicyConfig(max_mb=0.5))
    assert outcome.metadata["violations"] == [
        "linux/amd64: labels missing: org.opencontainers.image.source, org.opencontainers.image.revision, "
        "org.opencontainers.image.version, org.opencontainers.image.created",
        "linux/amd64: 1.1 MB exceeds the 0.5 MB limit (ACCI_IMAGE_MAX_MB)",
    ]
    assert outcome.description.endswith("(and 1 more)")


def test_every_platform_is_judged(container_tools: ContainerTools, tmp_path: Path) -> None:
    oci = build_oci(container_tools, tmp_path, BASE + ENTRY, HEALTHY_WWW, platforms="linux/amd64,linux/arm64")
    outcome = image_policy(oci)
    assert outcome.metadata["platforms"] == ["linux/amd64", "linux/arm64"]
    assert outcome.metadata["violations"] == ["linux/amd64: runs as root (no USER set)",
                                              "linux/arm64: runs as root (no USER set)"]


def test_hadolint_error_fails_and_warnings_go_to_metadata(images: dict[str, Path], tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    # DL3000 (relative WORKDIR) is an error; DL3006 (untagged base image) a warning.
    dockerfile.write_text("FROM debian\nWORKDIR app\nUSER 65532\n" + ENTRY)
    outcome = image_policy(images["good"], PolicyConfig(dockerfile=dockerfile))
    assert not outcome.passed
    assert outcome.description == "Dockerfile:2 hadolint DL3000: Use absolute WORKDIR"
    assert outcome.metadata["hadolint_warnings"] == [
        "Dockerfile:1 warning DL3006: Always tag the version of an image explicitly"]


def test_hadolint_warnings_alone_pass(images: dict[str, Path], tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM debian\nUSER 65532\n" + ENTRY)
    outcome = image_policy(images["good"], PolicyConfig(dockerfile=dockerfile))
    assert outcome.passed, outcome.description
    assert "1 hadolint warning(s) in metadata" in outcome.description


def test_missing_dockerfile_and_bad_layout_fail_the_check(images: dict[str, Path], tmp_path: Path) -> None:
    outcome = image_policy(images["good"], PolicyConfig(dockerfile=tmp_path / "nope" / "Dockerfile"))
    assert not outcome.passed
    assert outcome.description == f"policy could not be evaluated: Dockerfile {tmp_path}/nope/Dockerfile not found"
    outcome = image_policy(tmp_path)
    assert outcome.description == f"policy could not be evaluated: {tmp_path} is not an OCI layout (no index.json)"
    with pytest.raises(ConfigError, match="not found"):
        hadolint(tmp_path / "Dockerfile")


@pytest.mark.unit
@pytest.mark.parametrize(("user", "problem"), [
    ("", "runs as root (no USER set)"), ("0", "runs as root (USER 0)"), ("root", "runs as root (USER root)"),
    ("0:1000", "runs as root (USER 0:1000)"), ("root:root", "runs as root (USER root:root)"),
    ("65532:65532", None), ("1000", None), ("app", None), ("app:0", None),
    ("00", "runs as root (USER 00)"), ("+0", "runs as root (USER +0)"), ("-0", "runs as root (USER -0)"),
    ("000:65532", "runs as root (USER 000:65532)"), (":65532", "runs as root (USER :65532)"), ("+1000", None),
])
def test_user_problem(user: str, problem: str | None) -> None:
    assert user_problem(user) == problem


@pytest.mark.unit
def test_user_problem_reads_the_images_passwd() -> None:
    passwd = PASSWD_APP_ROOT.decode()
    assert user_problem("app", passwd) == "runs as root (USER app: uid 0 in the image's /etc/passwd)"
    assert user_problem("app:65532", passwd) == "runs as root (USER app:65532: uid 0 in the image's /etc/passwd)"
    assert user_problem("app", PASSWD_APP_USER.decode()) is None
    assert user_problem("nobody", passwd) is None  # not in the file: runc refuses to start it, not root


def test_a_user_mapped_to_a_normal_uid_passes(images: dict[str, Path]) -> None:
    outcome = image_policy(images["passwd_user"])
    assert outcome.passed, outcome.description


def test_the_repositorys_hadolint_settings_do_not_lower_the_lint(images: dict[str, Path], tmp_path: Path) -> None:
    """A .hadolint.yaml beside the Dockerfile that ignores every rule, lowers DL3000 to info and
    sets no failure threshold, plus an inline ignore pragma: DL3000 still fails the policy."""
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM debian\n# hadolint ignore=DL3000\nWORKDIR app\nUSER 65532\n" + ENTRY)
    (tmp_path / ".hadolint.yaml").write_text(
        "ignored: [DL3000, DL3006, DL3002, DL3003]\noverride:\n  info: [DL3000]\nfailure-threshold: none\n")
    lines: list[str] = []
    outcome = image_policy(images["good"], PolicyConfig(dockerfile=dockerfile), log=lines.append)
    assert not outcome.passed
    assert outcome.description == "Dockerfile:3 hadolint DL3000: Use absolute WORKDIR"
    assert outcome.metadata["hadolint_repo_config_ignored"] == ".hadolint.yaml"
    assert outcome.metadata["hadolint_config"].startswith("acci_ops's own")
    assert "policy: the repository's .hadolint.yaml is not applied; hadolint runs with acci_ops's settings" in lines


@pytest.mark.unit
def test_secret_findings_name_only() -> None:
    config = {
        "config": {
            "Env": ["PATH=/usr/bin", "API_TOKEN=", "DB_PASSWORD_FILE=/run/secrets/db", f"AWS_KEY={AWS_KEY_ID}",
                    f"GITHUB_TOKEN={SECRET_VALUE}"],
            "Labels": {"org.opencontainers.image.title": "x", "deploy.key": "-----BEGIN RSA PRIVATE KEY-----\nx"},
        },
        "history": [{"created_by": "/bin/sh -c #(nop) ENV LOG_LEVEL=info"},
                    {"created_by": f"|1 SECRET_KEY={SECRET_VALUE} /bin/sh -c make"}],
    }
    found = secret_findings(config)
    assert found == [
        "secret in config Env AWS_KEY (an AWS access key id)",
        "secret in config Env GITHUB_TOKEN (a secret-looking name with a value)",
        "secret in label deploy.key (a private key)",
        "secret in history entry 2: SECRET_KEY (a secret-looking name with a value)",
    ]
    assert not any(SECRET_VALUE in f or AWS_KEY_ID in f for f in found)


def test_fixture_app_versions(fixture_builds, tmp_path: Path) -> None:  # noqa: ANN001
    """The ACCI-shaped fixture app as built by build.py (labels from the build): v1.0.0 passes with
    its own Dockerfile linted; v1.4.0 (no USER) is refused on both platforms."""
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(fixture_app.dockerfile())
    good = image_policy(fixture_builds("v1.0.0").oci_dir, PolicyConfig(dockerfile=dockerfile, max_mb=10))
    assert good.passed, good.description
    assert good.metadata["platforms"] == ["linux/amd64", "linux/arm64"]
    root = image_policy(fixture_builds("v1.4.0").oci_dir)
    assert root.metadata["violations"] == ["linux/amd64: runs as root (no USER set)",
                                           "linux/arm64: runs as root (no USER set)"]
