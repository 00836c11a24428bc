from __future__ import annotations

import pytest

from acci_ops.lib.postgres.urls import parse_database_url, redact_url


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


TRICKY = ["p#ss", "p?ss", "p/ss", "a@b", "p#q?r/s@t:u"]


@pytest.mark.parametrize("password", TRICKY)
def test_redact_url_never_needs_the_url_to_parse(password):
    url = f"postgresql://acci:{password}@db.internal:5432/acci?sslmode=require"
    shown = redact_url(url)
    assert password not in shown
    assert shown.startswith("postgresql://acci:***@")
    assert "sslmode=require" in shown


@pytest.mark.parametrize(
    "url,secret",
    [
        ("postgresql://acci@db/acci?password=Qs3cr3t-query", "Qs3cr3t-query"),
        ("postgresql://acci@db/acci?sslmode=require&sslpassword=Ks3cr3t&x=1", "Ks3cr3t"),
        ("postgresql://acci@db/acci?PASSWORD=Up-s3cr3t#frag", "Up-s3cr3t"),
        ("host=db user=acci password=kv-s3cr3t dbname=acci", "kv-s3cr3t"),
        ("acci:noscheme-s3cr3t@db/acci", "noscheme-s3cr3t"),
    ],
)
def test_redact_url_hides_password_parameters(url, secret):
    assert secret not in redact_url(url)


def test_query_password_is_the_password_and_never_in_repr():
    target = parse_database_url("postgresql://acci@db:5432/acci?password=Qs3cr3t-query&sslpassword=Ks3cr3t"
                                "&sslmode=verify-full")
    assert target.password == "Qs3cr3t-query"
    assert target.libpq_env()["PGPASSWORD"] == "Qs3cr3t-query"
    assert target.connect_kwargs()["password"] == "Qs3cr3t-query"
    assert target.connect_kwargs()["sslpassword"] == "Ks3cr3t"
    for text in (repr(target), str(target), target.describe(), repr(target.with_dbname("other"))):
        assert "Qs3cr3t" not in text and "Ks3cr3t" not in text
    assert "verify-full" in repr(target)


@pytest.mark.parametrize("password", ["a@b", "p@ss/w0rd", "x:y"])
def test_percent_encoded_or_at_sign_passwords_parse(password):
    from urllib.parse import quote

    for written in (quote(password, safe=""), password if "/" not in password and ":" not in password else None):
        if written is None:
            continue
        target = parse_database_url(f"postgresql://acci:{written}@db:5432/acci")
        assert (target.host, target.password, target.dbname) == ("db", password, "acci")
        assert password not in repr(target)
