"""acci_ops's own image, the parts that need no build: its settings, the build context it completes
(wheelhouse, helm) and the build arguments its Containerfile takes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from acci_ops.lib.core.errors import ConfigError
from acci_ops.lib.images.build import build_argv
from acci_ops.lib.images.source import Checkout
from acci_ops.lib.images.tools import ContainerTools
from acci_ops.lib.ops_image.context import CONTAINERFILE, HELM, WHEELS, ContextError, OpsContext, prepare_context
from acci_ops.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_base_image_is_a_build_argument_never_a_secret(tmp_path):
    storage = ContainerTools(tmp_path / "t")
    source = Checkout(tmp_path, "c" * 40, 0, "main", False, None, "r")
    argv = build_argv(storage, source, ["linux/amd64"], list_name="l", dockerfile=tmp_path / "Containerfile",
                      context=tmp_path, labels={}, build_args={"BASE_IMAGE": "reg.example/debian@sha256:" + "a" * 64})
    assert argv[argv.index("--build-arg", argv.index("--build-arg") + 1) + 1] == \
        "BASE_IMAGE=reg.example/debian@sha256:" + "a" * 64
    with pytest.raises(ConfigError, match=r"^build argument name 'BASE IMAGE' is not a name"):
        build_argv(storage, source, ["linux/amd64"], list_name="l", dockerfile=tmp_path / "Containerfile",
                   context=tmp_path, labels={}, build_args={"BASE IMAGE": "x"})


@pytest.mark.parametrize(("variables", "message"), [
    ({"ACCI_OPS_SOURCE_REPO": "/src/acci-ops"},
     "the acci_ops image needs both ACCI_OPS_SOURCE_REPO and ACCI_OPS_IMAGE_REPOSITORY; ACCI_OPS_IMAGE_REPOSITORY "
     "is unset"),
    ({"ACCI_OPS_IMAGE_REPOSITORY": "reg.example/acci-ops"},
     "the acci_ops image needs both ACCI_OPS_SOURCE_REPO and ACCI_OPS_IMAGE_REPOSITORY; ACCI_OPS_SOURCE_REPO is unset"),
    ({"ACCI_OPS_IMAGE_OFFLINE": "true"},
     "ACCI_OPS_IMAGE_OFFLINE=true needs ACCI_OPS_IMAGE_WHEELHOUSE (where the wheels are)"),
    ({"ACCI_OPS_IMAGE_BASE": "python 3.11"}, "ACCI_OPS_IMAGE_BASE 'python 3.11' is not an image reference"),
    # The code server of a container deployment told it runs from a tag: it refuses to load.
    ({"DAGSTER_CURRENT_IMAGE": "registry.example/acci/acci-ops:0.2.0"},
     "DAGSTER_CURRENT_IMAGE 'registry.example/acci/acci-ops:0.2.0' is not repo@sha256:<64 lowercase hex digits>: "
     "runs start from this image by digest, never by a tag that can move"),
    ({"ACCI_OPS_IMAGE_BUILD_NETWORK": "container:x"},
     "ACCI_IMAGE_BUILD_NETWORK 'container:x' is not a network: use none (the default: RUN steps get no network), "
     "host, or the name of a podman network"),
])
def test_a_bad_ops_image_setting_is_one_line(variables, message):
    with pytest.raises(ConfigError) as failure:
        load_settings(variables)
    assert str(failure.value) == message


def test_off_until_both_named_and_then_amd64_from_python_slim_with_no_network():
    spec = load_settings({}).ops_image
    assert not spec.enabled
    spec = load_settings({"ACCI_OPS_SOURCE_REPO": "/src", "ACCI_OPS_IMAGE_REPOSITORY": "reg.example/a"}).ops_image
    assert spec.enabled and spec.platforms == ("linux/amd64",) and spec.build_network == "none"
    assert spec.base_image == "docker.io/library/python:3.11-slim-bookworm"


def _export(tmp_path: Path) -> Path:
    """The files a build context of acci_ops has (the Containerfile and what pip wheel builds from)."""
    root = tmp_path / "src"
    for name in ("pyproject.toml", CONTAINERFILE):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, root / name)
    shutil.copytree(ROOT / "acci_ops", root / "acci_ops", ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.mark.integration
def test_the_context_gets_a_wheelhouse_and_helm_and_an_offline_miss_is_one_line(tmp_path):
    """Offline from a directory holding no dependency: pip's own one-line cause, and the build does not
    start; a committed wheelhouse is refused (the build makes it); a checkout without the Containerfile too."""
    root = _export(tmp_path)
    empty = tmp_path / "wheels"
    empty.mkdir()
    helm = shutil.which("helm")
    with pytest.raises(ContextError) as failure:
        prepare_context(root, OpsContext(wheel_dirs=(empty,), offline=True, helm=helm))
    assert str(failure.value).startswith("pip could not make the image's wheelhouse: ERROR: ")
    assert "\n" not in str(failure.value)
    with pytest.raises(ContextError, match=rf"^{WHEELS} is committed in the source"):
        prepare_context(root, OpsContext(wheel_dirs=(empty,), offline=True, helm=helm))
    os.remove(root / CONTAINERFILE)
    with pytest.raises(ConfigError, match=rf"^{CONTAINERFILE} is not in this checkout of acci_ops"):
        prepare_context(tmp_path / "src", OpsContext())


def test_without_helm_the_context_says_how_to_get_it(tmp_path):
    root = _export(tmp_path)
    fake_pip = tmp_path / "python"
    # A "python" whose pip wheel writes an acci_ops wheel: only the helm step is under test here.
    fake_pip.write_text(f"#!/bin/sh\ntouch {root / WHEELS}/acci_ops-0.1.0-py3-none-any.whl\n")
    fake_pip.chmod(0o755)
    with pytest.raises(ConfigError, match=r"^helm is not installed on the build host"):
        prepare_context(root, OpsContext(python=str(fake_pip), helm=str(tmp_path / "no-helm")))
    assert not (root / HELM).exists()
