"""Invalidating the app's Redis cache after a restore (the guide's ``redis-cli FLUSHALL``).

Which server a URL reaches is decided by asking the server (``INFO server`` ``run_id``, random per
server process), never by how the URL is written: ``127.0.0.1`` and ``localhost``, a DNS alias or a
proxy all reach the same data. Which database is decided by what redis-py will really select
(``?db=`` wins over the path), read back from the client's own connection settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from redis.connection import parse_url

from acci_ops.lib.core.errors import AcciOpsError, ConfigError

FLUSHALL, FLUSHDB = "FLUSHALL", "FLUSHDB"
_TIMEOUTS = {"socket_connect_timeout": 5, "socket_timeout": 30}


def _settings(url: str) -> dict:
    """redis-py's own reading of the URL (the same code ``Redis.from_url`` uses)."""
    try:
        return parse_url(url or "")
    except ValueError:
        raise ConfigError("Redis URL must look like redis://[:password@]host:port/db (or rediss://, unix://)") from None


def describe(url: str) -> str:
    """Secret-free ``redis host:port/db`` naming the database the client will really use."""
    kwargs = _settings(url)
    where = kwargs.get("path") or f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
    return f"redis {where}/{kwargs.get('db', 0)}"


@dataclass(frozen=True)
class RedisIdentity:
    """The server (its ``run_id``) and the database a client talks to."""

    run_id: str
    db: int


def _client(url: str) -> redis.Redis:
    # One connection for identification and flush alike, so both reach the same server (redis-py
    # opens it here, so connection errors surface from this call).
    return redis.Redis.from_url(url, single_connection_client=True, **_TIMEOUTS)


def _why(exc: redis.RedisError) -> str:
    if isinstance(exc, redis.AuthenticationError):
        return "it refused the credentials"
    return " ".join(str(exc).split()) or type(exc).__name__


def _identify(client: redis.Redis, url: str, whose: str) -> RedisIdentity:
    try:
        run_id = client.info("server").get("run_id")
    except redis.RedisError as exc:
        raise ConfigError(f"cannot identify {whose} {describe(url)} (INFO server failed: {_why(exc)}); "
                          "refusing to drill") from None
    if not run_id:
        raise ConfigError(f"cannot identify {whose} {describe(url)}: INFO server reports no run_id; "
                          "refusing to drill")
    return RedisIdentity(str(run_id), int(client.connection_pool.connection_kwargs.get("db") or 0))


def identify(url: str, whose: str = "Redis") -> RedisIdentity:
    """Ask the server who it is; a server that cannot be asked is a refusal, not a guess."""
    try:
        client = _client(url)
    except redis.RedisError as exc:
        raise ConfigError(f"cannot identify {whose} {describe(url)} (INFO server failed: {_why(exc)}); "
                          "refusing to drill") from None
    try:
        return _identify(client, url, whose)
    finally:
        client.close()


def _mode(drill: RedisIdentity, production: RedisIdentity, drill_url: str) -> str:
    if drill.run_id != production.run_id:
        return FLUSHALL
    if drill.db == production.db:
        raise ConfigError(f"the drill's Redis {describe(drill_url)} is production's Redis (same server, "
                          f"database {drill.db}); give the drill its own database or server")
    return FLUSHDB


def drill_flush_mode(drill_url: str, production_url: str | None, *, variable: str = "ACCI_REDIS_URL") -> str:
    """How a drill may flush its Redis: FLUSHALL on a server of its own, FLUSHDB when it shares
    production's server (another database), refused when it is production's database or when
    production's Redis is unknown or cannot be asked who it is (then nothing can be proven)."""
    if not production_url:
        raise ConfigError(f"production's Redis is unknown: set {variable} so a drill can prove its Redis is not "
                          "production's; refusing to drill")
    production = identify(production_url, "production's Redis")
    drill = identify(drill_url, "the drill's Redis")
    return _mode(drill, production, drill_url)


def flush(url: str, *, everything: bool, protect: str | None = None) -> str:
    """FLUSHALL (``everything``) or FLUSHDB; refuse to touch the database of ``protect``.

    With ``protect`` (production's Redis, for drills) the server is identified on the very
    connection that flushes: a shared server gets FLUSHDB only, production's database nothing."""
    guarded = identify(protect, "production's Redis") if protect else None
    try:
        client = _client(url)
    except redis.RedisError as exc:
        raise AcciOpsError(f"cannot flush {describe(url)}: {_why(exc)}") from None
    try:
        if guarded is not None:
            if _mode(_identify(client, url, "the drill's Redis"), guarded, url) == FLUSHDB:
                everything = False
        if everything:
            client.flushall()
        else:
            client.flushdb()
    except redis.RedisError as exc:
        raise AcciOpsError(f"cannot flush {describe(url)}: {_why(exc)}") from None
    finally:
        client.close()
    return FLUSHALL if everything else FLUSHDB
