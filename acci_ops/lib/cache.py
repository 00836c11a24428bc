"""Invalidating the app's Redis cache after a restore (the guide's ``redis-cli FLUSHALL``)."""

from __future__ import annotations

from urllib.parse import urlsplit

import redis

from acci_ops.lib.errors import AcciOpsError, ConfigError


def redis_identity(url: str) -> tuple[str, int, int]:
    """(host, port, db) of a redis:// URL, with a clear error when malformed."""
    parts = urlsplit(url or "")
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigError("Redis URL must look like redis://[:password@]host:port/db")
    try:
        db = int(parts.path.strip("/") or 0)
        port = parts.port or 6379
    except ValueError:
        raise ConfigError("Redis URL has a malformed port or database number") from None
    return parts.hostname, port, db


def describe(url: str) -> str:
    host, port, db = redis_identity(url)
    return f"redis {host}:{port}/{db}"


def flush(url: str, *, everything: bool, protect: str | None = None) -> str:
    """FLUSHALL (``everything``) or FLUSHDB; refuse to touch the server holding ``protect``.

    A drill's Redis may share a server with production: then only its own database is flushed,
    since FLUSHALL would empty production's too."""
    target = redis_identity(url)
    if protect:
        guarded = redis_identity(protect)
        if target == guarded:
            raise ConfigError(f"refusing to flush {describe(url)}: it is production's Redis")
        if everything and target[:2] == guarded[:2]:
            everything = False
    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30)
    try:
        if everything:
            client.flushall()
        else:
            client.flushdb()
    except redis.AuthenticationError:
        raise AcciOpsError(f"{describe(url)} refused the credentials") from None
    except redis.RedisError as exc:
        raise AcciOpsError(f"cannot flush {describe(url)}: {exc}") from None
    finally:
        client.close()
    return "FLUSHALL" if everything else "FLUSHDB"
