"""The one reading of a Dockerfile's FROM lines (``dockerfile.from_images``) that the build, its
base-image digests and its provenance share: which external images, in which order, and whether a
line pins ``--platform``."""

from __future__ import annotations

import pytest

from acci_ops.lib.images.dockerfile import from_images


@pytest.mark.unit
def test_external_bases_in_first_use_order_with_arg_defaults_and_build_args() -> None:
    """Stage names and ``scratch`` are not images; an ARG default declared before the first FROM is
    substituted and a build arg wins over it; a ``--platform`` line is flagged."""
    text = ("ARG RUST=1.80\nFROM rust:${RUST} AS build\nFROM --platform=$BUILDPLATFORM node:20 as web\n"
            "FROM scratch AS assets\nFROM gcr.io/distroless/cc@sha256:abc\nCOPY --from=build /x /x\nFROM build\n")
    assert from_images(text) == [("rust:1.80", False), ("node:20", True), ("gcr.io/distroless/cc@sha256:abc", False)]
    assert from_images(text, {"RUST": "1.81"})[0] == ("rust:1.81", False)


@pytest.mark.unit
def test_an_arg_without_a_default_leaves_the_base_as_written() -> None:
    """``ARG BASE`` with no default and no build arg: the base is recorded under the name the
    Dockerfile gives it, never as an empty one; a build arg fills it in. An ARG after the first
    FROM belongs to that stage and names no base."""
    assert from_images("ARG BASE\nFROM ${BASE}\n") == [("${BASE}", False)]
    assert from_images("ARG BASE\nFROM ${BASE}\n", {"BASE": "debian:12"}) == [("debian:12", False)]
    assert from_images("FROM scratch AS first\nARG LATE=debian:12\nFROM $LATE\n") == [("$LATE", False)]


@pytest.mark.unit
def test_a_base_named_twice_is_listed_once_and_flagged_if_any_line_pins_a_platform() -> None:
    """Its digest is recorded once; the flag says at least one pull was for one platform only."""
    text = "FROM debian:12 AS a\nFROM --platform=linux/amd64 debian:12 AS b\nFROM debian:12\n"
    assert from_images(text) == [("debian:12", True)]
