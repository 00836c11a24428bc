"""PostgreSQL connection URLs, split so the password never reaches argv, logs or messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from acci_ops.lib.errors import ConfigError

_SCHEMES = ("postgresql", "postgres")


def redact_url(url: str) -> str:
    """Replace any password in a URL with ``***`` for messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


@dataclass(frozen=True)
class DatabaseTarget:
    """Where a database lives; ``password`` is excluded from repr so it cannot leak by printing."""

    host: str
    port: int
    dbname: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    options: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        """Secret-free identity used in messages: ``user@host:port/db``."""
        user = f"{self.user}@" if self.user else ""
        return f"{user}{self.host}:{self.port}/{self.dbname}"

    def libpq_env(self) -> dict[str, str]:
        """Connection settings as libpq environment variables, for child processes."""
        env = {"PGHOST": self.host, "PGPORT": str(self.port), "PGDATABASE": self.dbname}
        if self.user:
            env["PGUSER"] = self.user
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        mapping = {"sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT",
                   "connect_timeout": "PGCONNECT_TIMEOUT", "application_name": "PGAPPNAME"}
        for key, value in self.options:
            if key in mapping:
                env[mapping[key]] = value
        return env

    def connect_kwargs(self, connect_timeout: int = 10) -> dict[str, object]:
        """Keyword arguments for ``psycopg.connect`` (in-process, so the password may go here)."""
        kwargs: dict[str, object] = {"host": self.host, "port": self.port, "dbname": self.dbname,
                                     "connect_timeout": connect_timeout}
        if self.user:
            kwargs["user"] = self.user
        if self.password is not None:
            kwargs["password"] = self.password
        for key, value in self.options:
            kwargs.setdefault(key, value)
        return kwargs

    def with_dbname(self, dbname: str) -> DatabaseTarget:
        """The same server and role, another database (scratch databases, maintenance db)."""
        return DatabaseTarget(self.host, self.port, dbname, self.user, self.password, self.options)


def parse_database_url(url: str, *, name: str = "database URL") -> DatabaseTarget:
    """Parse ``postgresql://user:pass@host:port/db?sslmode=...`` with a clear error when malformed."""
    if not url or not url.strip():
        raise ConfigError(f"{name} is empty; expected postgresql://user:password@host:port/dbname")
    shown = redact_url(url)
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{name} {shown} is malformed: {exc}") from None
    if parts.scheme not in _SCHEMES:
        raise ConfigError(
            f"{name} {shown} must start with postgresql:// (got scheme {parts.scheme or 'none'!r})"
        )
    if not parts.hostname:
        raise ConfigError(f"{name} {shown} names no host; expected postgresql://user@host:port/dbname")
    dbname = unquote(parts.path.lstrip("/"))
    if not dbname or "/" in dbname:
        raise ConfigError(f"{name} {shown} names no database; add /dbname after the host")
    options = tuple(parse_qsl(parts.query))
    return DatabaseTarget(
        host=parts.hostname,
        port=port or 5432,
        dbname=dbname,
        user=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        options=options,
    )
