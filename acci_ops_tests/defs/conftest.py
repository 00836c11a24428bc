from __future__ import annotations

import dagster as dg
import pytest

from acci_ops.definitions import build_definitions
from acci_ops.settings import load_settings


@pytest.fixture
def instance(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as inst:
        yield inst


@pytest.fixture
def single_env(monkeypatch, db_url, bucket):
    """The default deployment shape: one environment from ACCI_* variables."""
    monkeypatch.setenv("ACCI_DATABASE_URL", db_url)
    monkeypatch.setenv("ACCI_BACKUP_URL", f"s3://{bucket}/acci")
    return bucket


def defs_from_env() -> dg.Definitions:
    return build_definitions(load_settings())
