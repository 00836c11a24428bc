"""Sizes in run logs and reports read in a unit a person uses."""

from __future__ import annotations

import pytest

from acci_ops.lib.core.steps import human_bytes


@pytest.mark.parametrize(("size", "text"), [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (5 * 1024**2, "5.0 MiB"),
    (int(2.25 * 1024**3), "2.2 GiB"), (3 * 1024**4, "3.0 TiB"), (5000 * 1024**4, "5000.0 TiB"), (None, "n/a"),
])
def test_human_bytes(size, text):
    assert human_bytes(size) == text
