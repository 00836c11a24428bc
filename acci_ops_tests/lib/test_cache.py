"""Which Redis a drill may flush, decided by what the servers say (INFO server run_id) and by the
database the client really uses, never by how the URLs are written.

FLUSHALL is what is under test here, so every test runs against redis-servers of its own, never
the session-wide one."""

from __future__ import annotations

import pytest
import redis

from acci_ops.dev.servers import start_redis
from acci_ops.lib.core.errors import ConfigError
from acci_ops.lib.core.net import free_port
from acci_ops.lib.dr import redis_cache as cache


@pytest.fixture
def other_redis(tmp_path):
    (tmp_path / "other").mkdir()
    server = start_redis(tmp_path / "other")
    yield server
    server.stop()


def fill(url: str, key: str = "k") -> redis.Redis:
    client = redis.Redis.from_url(url)
    client.set(key, "v")
    return client


@pytest.mark.integration  # starts redis-servers of its own
def test_same_server_spelled_differently_flushes_only_the_drill_database(own_redis):
    port = own_redis.port
    production, drill = f"redis://127.0.0.1:{port}/0", f"redis://localhost:{port}/1"
    prod_client, drill_client = fill(production, "session"), fill(drill, "stale")
    assert cache.drill_flush_mode(drill, production) == "FLUSHDB"
    assert cache.flush(drill, everything=True, protect=production) == "FLUSHDB"
    assert prod_client.get("session") == b"v" and drill_client.dbsize() == 0


@pytest.mark.integration  # starts redis-servers of its own
def test_query_db_is_the_database_the_client_uses(own_redis):
    port = own_redis.port
    production, drill = f"redis://127.0.0.1:{port}/0", f"redis://127.0.0.1:{port}/5?db=0"
    prod_client = fill(production, "session")
    with pytest.raises(ConfigError, match=r"is production's Redis \(same server, database 0\)"):
        cache.drill_flush_mode(drill, production)
    with pytest.raises(ConfigError, match="is production's Redis"):
        cache.flush(drill, everything=True, protect=production)
    assert prod_client.get("session") == b"v"


@pytest.mark.integration  # starts redis-servers of its own
def test_unknown_production_redis_is_refused(own_redis):
    drill = own_redis.url(1)
    fill(drill)
    with pytest.raises(ConfigError, match=r"production's Redis is unknown: set ACCI_REDIS_URL"):
        cache.drill_flush_mode(drill, None)
    with pytest.raises(ConfigError, match=r"set PROD_REDIS"):
        cache.drill_flush_mode(drill, "", variable="PROD_REDIS")
    assert redis.Redis.from_url(drill).dbsize() == 1


@pytest.mark.integration  # starts redis-servers of its own
def test_unreachable_production_redis_is_refused(own_redis):
    drill = own_redis.url(1)
    fill(drill)
    dead = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
    with pytest.raises(ConfigError) as caught:
        cache.drill_flush_mode(drill, dead)
    message = str(caught.value)
    assert message.startswith(f"cannot identify production's Redis redis 127.0.0.1:{dead.rsplit(':', 1)[1]}")
    assert "refusing to drill" in message and "hunter2" not in message and "\n" not in message
    assert redis.Redis.from_url(drill).dbsize() == 1


@pytest.mark.integration  # starts redis-servers of its own
def test_a_separate_server_gets_flushall_and_production_is_untouched(own_redis, other_redis):
    production, drill = own_redis.url(0), other_redis.url(2)
    prod_client = fill(production, "session")
    fill(other_redis.url(7), "other-db")
    fill(drill, "stale")
    assert cache.drill_flush_mode(drill, production) == "FLUSHALL"
    assert cache.flush(drill, everything=True, protect=production) == "FLUSHALL"
    assert prod_client.get("session") == b"v"
    assert redis.Redis.from_url(other_redis.url(7)).dbsize() == 0


def test_describe_never_shows_the_password_and_follows_the_client():
    assert cache.describe("redis://:pw-secret@cache.internal:6380/5?db=2") == "redis cache.internal:6380/2"
    with pytest.raises(ConfigError, match="Redis URL must look like redis://"):
        cache.describe("http://cache:6379")
