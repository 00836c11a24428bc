"""The object store under transient failures: docs/backups.md promises that throttling and 5xx answers
are retried (boto3, 5 attempts). A small HTTP proxy in front of the real moto server answers
503 SlowDown to the first attempt of every request, and the backup must still land, verified."""

from __future__ import annotations

import hashlib
import http.client
import threading
from collections import Counter
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import botocore.retries.standard
import pytest

from acci_ops.lib.backup.dump import run_backup
from acci_ops.lib.backup.manifest import BackupManifest
from acci_ops.lib.backup.signing import Keyring
from acci_ops.lib.core.errors import TransientError
from acci_ops.lib.postgres.urls import parse_database_url
from acci_ops.lib.storage.objectstore import S3Store
from acci_ops_tests.fixtures.backups import TEST_SIGNING_KEY
from acci_ops_tests.fixtures.s3 import all_keys

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


class FlakyProxy:
    """Forwards to moto; fails the first ``failures`` attempts of each distinct request with 503."""

    def __init__(self, upstream: str, failures: int = 1) -> None:
        self.upstream = urlsplit(upstream)
        self.failures = failures
        self.attempts: Counter[str] = Counter()
        self.failed = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request_id = f"{self.command} {self.path}"
                with proxy.lock:
                    proxy.attempts[request_id] += 1
                    fail = proxy.attempts[request_id] <= proxy.failures
                    proxy.failed += fail
                if fail:
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(SLOW_DOWN)
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky(s3_server):
    proxy = FlakyProxy(s3_server.endpoint)
    yield proxy
    proxy.close()


def test_transient_errors_are_retried_and_the_backup_lands_verified(flaky, db_url, s3, bucket):
    store = S3Store(f"s3://{bucket}/acci", endpoint_url=flaky.endpoint)
    keyring = Keyring.from_secret(TEST_SIGNING_KEY)
    result = run_backup(environment="production", target=parse_database_url(db_url), store=store,
                        partition=date(2026, 11, 26), log=lambda line: None, keyring=keyring)
    # Every request (head bucket, upload, manifest) failed once with 503 and was retried.
    assert flaky.failed >= 3 and all(n == 2 for n in flaky.attempts.values()), flaky.attempts
    key = f"acci/{result.manifest.object_key}"
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == result.manifest.sha256 and len(body) == result.manifest.stored_bytes
    stored = BackupManifest.from_json(s3.get_object(Bucket=bucket, Key=key + ".manifest.json")["Body"].read())
    assert keyring.verify(stored.document()) == "signed"
    assert sorted(all_keys(s3, bucket)) == sorted([key, key + ".manifest.json"])


def test_a_store_that_keeps_failing_gives_a_transient_error(s3_server, bucket, monkeypatch):
    # botocore sleeps up to 20 s between throttled attempts (SlowDown); the attempts are what is
    # tested here, not its sleeping, so its backoff waits nothing.
    monkeypatch.setattr(botocore.retries.standard.ExponentialBackoff, "delay_amount", lambda self, context: 0.0)
    proxy = FlakyProxy(s3_server.endpoint, failures=100)
    try:
        store = S3Store(f"s3://{bucket}/acci", endpoint_url=proxy.endpoint)
        with pytest.raises(TransientError) as failure:
            store.put_bytes("production/x.json", b"{}")
        assert str(failure.value) == f"object store failed to write s3://{bucket}/acci/production/x.json: SlowDown"
        # botocore's retries={"max_attempts": 5} means 5 retries: 6 attempts in all, then our one line.
        assert proxy.attempts[f"PUT /{bucket}/acci/production/x.json"] == 6
    finally:
        proxy.close()
