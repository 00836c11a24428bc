"""The nightly backup as Dagster runs it, against real PostgreSQL and S3 over HTTP."""

from __future__ import annotations

import hashlib
import json

import dagster as dg
import pytest

from acci_ops.lib.backup.layout import manifest_key_for
from acci_ops.lib.backup.signing import Keyring
from acci_ops_tests.fixtures.backups import TEST_SIGNING_KEY
from acci_ops_tests.fixtures.defs import defs_from_env
from acci_ops_tests.fixtures.s3 import all_keys
from acci_ops_tests.fixtures.servers import DB_PASSWORD


def run_nightly(instance, partition: str = "2026-11-26", raise_on_error: bool = True):
    job = defs_from_env().resolve_job_def("nightly_backup")
    return job.execute_in_process(partition_key=partition, instance=instance, raise_on_error=raise_on_error)


def materialization_metadata(result, key: str = "db_backup") -> dict:
    events = result.asset_materializations_for_node(key.replace("/", "__"))
    assert len(events) == 1
    return {k: v.value for k, v in events[0].metadata.items()}


def everything_recorded(instance, result) -> str:
    """All that Dagster stored about a run: events, logs, run config and tags."""
    records = instance.all_logs(result.run_id)
    text = [dg.serialize_value(r) for r in records]
    run = instance.get_run_by_id(result.run_id)
    text += [json.dumps(run.run_config, default=str), json.dumps(run.tags)]
    return "\n".join(text)


def test_nightly_backup_materializes_with_metadata(single_env, s3, instance):
    bucket = single_env
    result = run_nightly(instance)
    assert result.success
    meta = materialization_metadata(result)
    key = meta["object_key"]
    assert meta["backup_uri"] == f"s3://{bucket}/acci/{key}"
    assert key.startswith("production/2026-11-26/acci-")
    body = s3.get_object(Bucket=bucket, Key=f"acci/{key}")["Body"].read()
    assert meta["sha256"] == hashlib.sha256(body).hexdigest()
    assert meta["stored_bytes"] == len(body)
    assert meta["dump_bytes"] > meta["stored_bytes"] > 0
    for plotted in ("dump_bytes", "stored_bytes", "compression_ratio", "duration_seconds", "throughput_mb_per_s"):
        assert isinstance(meta[plotted], (int, float)), plotted
    assert meta["total_rows"] == 7020 and meta["tables"] == 3
    assert meta["server_version"].startswith("15.")
    assert sorted(all_keys(s3, bucket)) == sorted([f"acci/{key}", f"acci/{manifest_key_for(key)}"])
    assert DB_PASSWORD not in everything_recorded(instance, result)


def test_failed_backup_names_its_cause_and_hides_the_password(monkeypatch, pg_server, bucket, s3, instance):
    monkeypatch.setenv("ACCI_DATABASE_URL", pg_server.url("acci", password=DB_PASSWORD + "-wrong"))
    monkeypatch.setenv("ACCI_BACKUP_URL", f"s3://{bucket}/acci")
    result = run_nightly(instance, raise_on_error=False)
    assert not result.success
    failure = result.failure_data_for_node("db_backup")
    description = failure.user_failure_data.description
    assert description.startswith("cannot connect to PostgreSQL acci@127.0.0.1:")
    assert 'password authentication failed for user "acci"' in description
    assert "\n" not in description
    recorded = everything_recorded(instance, result)
    assert DB_PASSWORD not in recorded
    assert all_keys(s3, bucket) == []


def test_missing_database_url_fails_with_the_variable_name(monkeypatch, bucket, instance):
    monkeypatch.delenv("ACCI_DATABASE_URL", raising=False)
    monkeypatch.setenv("ACCI_BACKUP_URL", f"s3://{bucket}/acci")
    # Dagster refuses to launch the run at all, naming the variable: nothing is attempted.
    with pytest.raises(dg.DagsterInvalidConfigError) as failure:
        run_nightly(instance)
    assert 'environment variable "ACCI_DATABASE_URL" which is not set' in str(failure.value)


def test_several_environments_back_up_separately(tmp_path, monkeypatch, pg_server, s3, instance):
    buckets = {}
    for env in ("staging", "production"):
        buckets[env] = f"acci-multi-{env}-{tmp_path.name[-6:].lower().replace('_', '-')}"
        s3.create_bucket(Bucket=buckets[env])
    path = tmp_path / "envs.yaml"
    path.write_text(
        "environments:\n"
        f"  staging: {{database_url_env: STAGING_DB_URL, backup_url: 's3://{buckets['staging']}/db'}}\n"
        f"  production: {{database_url_env: PROD_DB_URL, backup_url: 's3://{buckets['production']}/db'}}\n"
    )
    monkeypatch.setenv("ACCI_ENVIRONMENTS_FILE", str(path))
    monkeypatch.setenv("STAGING_DB_URL", pg_server.url())
    monkeypatch.setenv("PROD_DB_URL", pg_server.url())
    result = run_nightly(instance)
    assert result.success
    for env in ("staging", "production"):
        meta = materialization_metadata(result, f"{env}/db_backup")
        assert meta["backup_uri"].startswith(f"s3://{buckets[env]}/db/{env}/2026-11-26/")
        assert len(all_keys(s3, buckets[env])) == 2


def test_offsite_copy_is_verified(single_env, monkeypatch, s3, instance):
    offsite = single_env + "-off"
    s3.create_bucket(Bucket=offsite)
    monkeypatch.setenv("ACCI_OFFSITE_URL", f"s3://{offsite}/copy")
    result = run_nightly(instance)
    assert result.success
    primary = materialization_metadata(result)
    copied = materialization_metadata(result, "db_backup_offsite")
    key = primary["object_key"]
    assert copied["offsite_uri"] == f"s3://{offsite}/copy/{key}"
    body = s3.get_object(Bucket=offsite, Key=f"copy/{key}")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == primary["sha256"] == copied["sha256"]
    assert sorted(all_keys(s3, offsite)) == sorted([f"copy/{key}", f"copy/{manifest_key_for(key)}"])


def test_offsite_copy_refuses_a_corrupted_source(single_env, monkeypatch, s3, instance):
    bucket = single_env
    offsite = bucket + "-off"
    s3.create_bucket(Bucket=offsite)
    assert run_nightly(instance).success
    key = [k for k in all_keys(s3, bucket) if k.endswith(".zst")][0]
    body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    monkeypatch.setenv("ACCI_OFFSITE_URL", f"s3://{offsite}/copy")
    job = defs_from_env().resolve_job_def("nightly_backup")
    result = job.execute_in_process(partition_key="2026-11-26", instance=instance, raise_on_error=False,
                                    asset_selection=[dg.AssetKey("db_backup_offsite")])
    assert not result.success
    description = result.failure_data_for_node("db_backup_offsite").user_failure_data.description
    assert "does not match its manifest's sha256; not copied offsite" in description
    assert all_keys(s3, offsite) == []


@pytest.fixture(scope="module")
def offsite_provider(tmp_path_factory):
    """A second S3 endpoint that enforces IAM: only the offsite user's own key may write there,
    so a copy that lands proves the offsite credentials and endpoint were really used."""
    import json as _json
    import os
    import shutil
    import subprocess
    import sys
    import time

    import boto3

    from acci_ops.lib.core.net import free_port

    port = free_port()
    moto = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
    log = tmp_path_factory.mktemp("moto-offsite") / "moto.log"
    proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, env=dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="4"))
    endpoint = f"http://127.0.0.1:{port}"
    admin = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="AKIAADMINEXAMPLE0000",
                 aws_secret_access_key="admin")
    deadline = time.monotonic() + 30
    while True:
        try:
            boto3.client("s3", **admin).create_bucket(Bucket="acci-offsite")
            break
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"offsite moto_server did not start; see {log}") from None
            time.sleep(0.2)
    iam = boto3.client("iam", **admin)
    iam.create_user(UserName="offsite")
    key = iam.create_access_key(UserName="offsite")["AccessKey"]
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName="offsite", PolicyName="offsite-writer", PolicyDocument=_json.dumps(policy))
    yield endpoint, key["AccessKeyId"], key["SecretAccessKey"]
    proc.terminate()
    proc.wait(10)


def offsite_client(endpoint, access_key, secret_key):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, config=Config(s3={"addressing_style": "path"}))


def test_offsite_store_with_its_own_credentials_endpoint_and_sse(single_env, monkeypatch, s3, instance,
                                                                 offsite_provider):
    endpoint, access_key, secret_key = offsite_provider
    prefix = f"copy-{single_env[-8:]}"
    monkeypatch.setenv("ACCI_OFFSITE_URL", f"s3://acci-offsite/{prefix}")
    monkeypatch.setenv("ACCI_OFFSITE_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("ACCI_OFFSITE_AWS_ACCESS_KEY_ID", access_key)
    monkeypatch.setenv("ACCI_OFFSITE_AWS_SECRET_ACCESS_KEY", secret_key)
    monkeypatch.setenv("ACCI_OFFSITE_SSE", "sse-s3")
    results = [run_nightly(instance, partition) for partition in ("2026-11-25", "2026-11-26")]
    assert all(r.success for r in results)
    offsite = offsite_client(endpoint, access_key, secret_key)
    for result in results:
        key = materialization_metadata(result)["object_key"]
        head = offsite.head_object(Bucket="acci-offsite", Key=f"{prefix}/{key}")
        assert head["ServerSideEncryption"] == "AES256"
        # The manifest is copied byte for byte, signature included.
        primary = s3.get_object(Bucket=single_env, Key=f"acci/{manifest_key_for(key)}")["Body"].read()
        copied = offsite.get_object(Bucket="acci-offsite", Key=f"{prefix}/{manifest_key_for(key)}")["Body"].read()
        assert copied == primary and b'"signature": "hmac-sha256:' in copied
        recorded = everything_recorded(instance, result)
        assert secret_key not in recorded and TEST_SIGNING_KEY not in recorded
    # The primary credentials are not the offsite's: that server refuses them.
    with pytest.raises(Exception, match="InvalidAccessKeyId|AccessDenied|403"):
        offsite_client(endpoint, "testing", "testing").list_objects_v2(Bucket="acci-offsite")
    # (Retention on an offsite store: test_retention_job.py. Not here: this IAM-enforcing moto answers
    # SignatureDoesNotMatch to ListObjectsV2 made from the test process, while puts and gets verify.)


def test_offsite_with_a_wrong_secret_fails_in_one_line_without_the_secret(single_env, monkeypatch, instance,
                                                                         offsite_provider):
    endpoint, access_key, _ = offsite_provider
    wrong = "Wr0ng-offsite-SECRET-value-123"
    monkeypatch.setenv("ACCI_OFFSITE_URL", "s3://acci-offsite/wrong")
    monkeypatch.setenv("ACCI_OFFSITE_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("ACCI_OFFSITE_AWS_ACCESS_KEY_ID", access_key)
    monkeypatch.setenv("ACCI_OFFSITE_AWS_SECRET_ACCESS_KEY", wrong)
    result = run_nightly(instance, raise_on_error=False)
    assert not result.success
    description = result.failure_data_for_node("db_backup_offsite").user_failure_data.description
    assert description.startswith("access denied to s3://acci-offsite/wrong/production/2026-11-26/")
    assert "\n" not in description and wrong not in everything_recorded(instance, result)


def test_backup_manifest_is_signed_and_the_key_never_recorded(single_env, s3, instance):
    result = run_nightly(instance)
    meta = materialization_metadata(result)
    assert meta["signed"] is True
    manifest = json.loads(s3.get_object(Bucket=single_env, Key=f"acci/{manifest_key_for(meta['object_key'])}")
                          ["Body"].read())
    assert Keyring.from_secret(TEST_SIGNING_KEY).verify(manifest) == "signed"
    assert TEST_SIGNING_KEY not in everything_recorded(instance, result)
