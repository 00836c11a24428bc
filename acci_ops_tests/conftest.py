"""Fixtures live in acci_ops_tests/fixtures/ (see its __init__); this file only loads them."""

import pytest

# The fixtures package's helpers (plain modules tests import) get pytest's assertion messages too.
pytest.register_assert_rewrite("acci_ops_tests.fixtures")

pytest_plugins = [
    "acci_ops_tests.fixtures.env",
    "acci_ops_tests.fixtures.servers",
    "acci_ops_tests.fixtures.s3",
    "acci_ops_tests.fixtures.webhook",
    "acci_ops_tests.fixtures.defs",
    "acci_ops_tests.fixtures.dr",
    "acci_ops_tests.fixtures.deploy",
    "acci_ops_tests.fixtures.images",
    "acci_ops_tests.fixtures.image_defs",
    "acci_ops_tests.fixtures.fake_registry",
    "acci_ops_tests.fixtures.git_http",
    "acci_ops_tests.fixtures.release_servers",
    "acci_ops_tests.fixtures.release_images",
    "acci_ops_tests.fixtures.ops_image",
    "acci_ops_tests.fixtures.markers",
    "acci_ops_tests.fixtures.schedule",
]
