"""PostgreSQL connection URLs, split so the password never reaches argv, logs or messages."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from acci_ops.lib.core.errors import ConfigError

_SCHEMES = ("postgresql", "postgres")
# Parameter names whose values are secrets: password, sslpassword, PGPASSWORD-style spellings, tokens.
_SECRET_NAME = re.compile(r"pass(word|wd)?|pwd|secret|token", re.IGNORECASE)
_SECRET_PARAM = re.compile(r"(?i)([\w.-]*(?:pass(?:word|wd)?|pwd|secret|token)[\w.-]*\s*=\s*)('[^']*'|[^&\s]*)")
_ENCODE_HINT = "if the password contains # ? / @ : or %, percent-encode it (e.g. # as %23, / as %2F, @ as %40)"


def redact_url(url: str) -> str:
    """Replace any password in a URL (or libpq ``key=value`` string) with ``***`` for messages.

    Works on the text, never on a successful parse: a password with an unencoded ``#``, ``?`` or
    ``/`` is exactly what breaks URL parsing, and the error about it must not quote it. Everything
    between ``scheme://user:`` and the LAST ``@`` is treated as the password (so ``a@b`` is hidden
    whole), and any ``password=``/``sslpassword=``/``...secret=``/``...token=`` value is hidden.
    Over-redaction is accepted; under-redaction is not."""
    text = str(url)
    scheme_end = text.find("://")
    start = scheme_end + 3 if scheme_end >= 0 else 0
    at = text.rfind("@", start)
    if at >= 0:
        userinfo = text[start:at]
        colon = userinfo.find(":")
        if colon >= 0:
            text = f"{text[:start]}{userinfo[:colon]}:***{text[at:]}"
    return _SECRET_PARAM.sub(lambda m: m.group(1) + "***", text)


def is_secret_option(name: str) -> bool:
    """Connection options whose values must never be shown (``password``, ``sslpassword``, ...)."""
    return bool(_SECRET_NAME.search(name))


@dataclass(frozen=True, repr=False)
class DatabaseTarget:
    """Where a database lives. ``repr`` shows neither the password nor secret-looking options
    (``sslpassword=...``), so printing a target, or an object holding one, cannot leak them."""

    host: str
    port: int
    dbname: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    options: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:
        options = tuple((k, "***" if is_secret_option(k) else v) for k, v in self.options)
        return (f"DatabaseTarget(host={self.host!r}, port={self.port!r}, dbname={self.dbname!r}, "
                f"user={self.user!r}, password={'***' if self.password is not None else None}, options={options!r})")

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

    def to_url(self) -> str:
        """The URL back, for an app that takes DATABASE_URL (it carries the password: env only).

        User, password and database are percent-encoded (a password such as ``p@ss/w0rd#?%`` must
        not end the user part or start a path or query) and every option (sslmode, sslrootcert, ...)
        is kept as a query string, so ``parse_database_url(t.to_url()) == t``."""
        from urllib.parse import quote, urlencode

        auth = quote(self.user, safe="") if self.user else ""
        if self.password is not None:
            auth += ":" + quote(self.password, safe="")
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = f"?{urlencode(self.options, quote_via=quote)}" if self.options else ""  # %20, not +: libpq
        return f"postgresql://{auth}{'@' if auth else ''}{host}:{self.port}/{quote(self.dbname, safe='')}{query}"


def _malformed_why(exc: ValueError) -> str:
    """urllib's own messages can quote pieces of the password (``Port could not be cast to integer
    value as 'p'``): say what is wrong in our words instead."""
    text = str(exc)
    if "Port" in text:
        return "the port is not a number from 0 to 65535"
    if "IPv6" in text or "bracket" in text:
        return "the host is not a valid address"
    return "it cannot be split into user, host, port and database"


def parse_database_url(url: str, *, name: str = "database URL") -> DatabaseTarget:
    """Parse ``postgresql://user:pass@host:port/db?sslmode=...`` with a clear error when malformed.

    Messages quote the URL only through ``redact_url``. A ``?password=`` parameter is the password
    (as for libpq, it wins over one in the userinfo) and is kept out of the options."""
    if not url or not url.strip():
        raise ConfigError(f"{name} is empty; expected postgresql://user:password@host:port/dbname")
    shown = redact_url(url)
    url = url.strip()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{name} {shown} is malformed: {_malformed_why(exc)}; {_ENCODE_HINT}") from None
    if parts.scheme not in _SCHEMES:
        raise ConfigError(
            f"{name} {shown} must start with postgresql:// (got scheme {parts.scheme or 'none'!r})"
        )
    if "@" not in parts.netloc and "@" in url[len(parts.scheme) + 3:]:
        # The '@' ending the userinfo came after a '/', '?' or '#' that ended the host part early:
        # a password with those characters, unencoded. Parsing further would connect elsewhere.
        raise ConfigError(f"{name} {shown} is malformed: an '@' follows the host; {_ENCODE_HINT}")
    if not parts.hostname:
        raise ConfigError(f"{name} {shown} names no host; expected postgresql://user@host:port/dbname")
    dbname = unquote(parts.path.lstrip("/"))
    if not dbname or "/" in dbname:
        raise ConfigError(f"{name} {shown} names no database; add /dbname after the host")
    options = []
    password = unquote(parts.password) if parts.password is not None else None
    for key, value in parse_qsl(parts.query):
        if key == "password":
            password = value
        else:
            options.append((key, value))
    return DatabaseTarget(
        host=parts.hostname,
        port=port or 5432,
        dbname=dbname,
        user=unquote(parts.username) if parts.username else None,
        password=password,
        options=tuple(options),
    )
