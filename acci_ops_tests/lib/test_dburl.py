from __future__ import annotations

from acci_ops.lib.dburl import parse_database_url, redact_url


def test_parse_and_split_secret():
    target = parse_database_url("postgresql://acci:p%40ss@db.internal:6543/acci?sslmode=require")
    assert (target.host, target.port, target.dbname, target.user, target.password) == (
        "db.internal", 6543, "acci", "acci", "p@ss")
    assert "p@ss" not in repr(target)
    assert target.describe() == "acci@db.internal:6543/acci"
    env = target.libpq_env()
    assert env["PGPASSWORD"] == "p@ss" and env["PGSSLMODE"] == "require" and env["PGPORT"] == "6543"


def test_default_port_and_no_password():
    target = parse_database_url("postgres://postgres@127.0.0.1/acci")
    assert target.port == 5432 and target.password is None and "PGPASSWORD" not in target.libpq_env()


def test_redact_url():
    assert redact_url("postgresql://u:secret@h:1/db") == "postgresql://u:***@h:1/db"
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"
