"""Object storage behind one small interface: S3-compatible (boto3) or a local directory.

Both backends give the guarantee the backups rely on: an object appears under its final key only
when its whole stream was written; a failed stream leaves nothing behind (S3: the multipart
upload is aborted; files: a hidden partial file is removed, the final name is a rename).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import urlsplit

from acci_ops.lib.core.errors import BackupError, ConfigError, TransientError

MiB = 1024 * 1024
DEFAULT_PART_SIZE = 8 * MiB
_PARTIAL_MARK = ".partial-"


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object, keyed relative to the store's prefix."""

    key: str
    size: int
    last_modified: datetime


@dataclass(frozen=True)
class IncompleteUpload:
    """An upload that was started and never finished (S3: a multipart upload; files: a hidden
    partial file), keyed relative to the store's prefix. ``upload_id`` is what abort needs."""

    key: str
    upload_id: str
    initiated: datetime


# A listing of incomplete uploads stops here: retention runs daily, so what is beyond the bound
# is cleaned by the next runs, and one run's cost stays bounded whatever a bucket holds.
MAX_INCOMPLETE_UPLOADS = 10_000


@dataclass(frozen=True)
class Encryption:
    """Server-side encryption for S3 writes: ``AES256`` (SSE-S3) or ``aws:kms`` (SSE-KMS)."""

    mode: str | None = None
    kms_key_id: str | None = None

    def extra_args(self) -> dict[str, str]:
        if not self.mode:
            return {}
        args = {"ServerSideEncryption": self.mode}
        if self.kms_key_id:
            args["SSEKMSKeyId"] = self.kms_key_id
        return args

    @classmethod
    def parse(cls, mode: str | None, kms_key_id: str | None = None) -> Encryption:
        """Accept the spellings ops use (``sse-s3``, ``AES256``, ``sse-kms``, ``aws:kms``, ``none``)."""
        normal = (mode or "").strip().lower()
        if normal in ("", "none", "off"):
            if kms_key_id:
                raise ConfigError("a KMS key id was given but server-side encryption is off; set it to sse-kms")
            return cls()
        if normal in ("sse-s3", "aes256", "s3"):
            if kms_key_id:
                raise ConfigError("a KMS key id only applies to sse-kms, not sse-s3")
            return cls("AES256")
        if normal in ("sse-kms", "aws:kms", "kms"):
            return cls("aws:kms", kms_key_id or None)
        raise ConfigError(f"unknown server-side encryption {mode!r}; use none, sse-s3 or sse-kms")


class ObjectStore(Protocol):
    """What backups, retention, offsite copies and validation need from a store."""

    url: str

    def uri_for(self, key: str) -> str: ...
    def check_writable(self) -> None: ...
    def upload_stream(self, key: str, stream: BinaryIO, content_type: str = ...) -> None: ...
    def put_bytes(self, key: str, data: bytes, content_type: str = ...) -> None: ...
    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes: ...
    def open_read(self, key: str) -> BinaryIO: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]: ...
    def delete(self, key: str) -> None: ...
    def list_incomplete_uploads(self, prefix: str = "", limit: int = ...) -> Iterator[IncompleteUpload]: ...
    def abort_incomplete_upload(self, upload: IncompleteUpload) -> None: ...


class HashingReader:
    """A read-through wrapper that counts and hashes the bytes as they pass, so the checksum is
    of exactly what was stored, computed without a second read."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        if data:
            self.sha256.update(data)
            self.bytes += len(data)
        return data

    def readable(self) -> bool:
        return True


def sha256_of_stream(stream: BinaryIO, chunk: int = 4 * MiB) -> tuple[str, int]:
    """Stream a readable to the end; return its sha256 hex digest and byte count."""
    digest = hashlib.sha256()
    total = 0
    while True:
        data = stream.read(chunk)
        if not data:
            return digest.hexdigest(), total
        digest.update(data)
        total += len(data)


def too_large(uri: str, max_bytes: int) -> BackupError:
    return BackupError(f"{uri} is larger than {max_bytes} bytes; not reading it")


def _join(prefix: str, key: str) -> str:
    key = key.lstrip("/")
    return f"{prefix}/{key}" if prefix else key


class FileStore:
    """A directory used as an object store (the embedded default, and for NAS mounts)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigError(f"backup URL {url} must be file:///absolute/path")
        self.url = url.rstrip("/")
        self.root = Path(parts.path)

    def _path(self, key: str) -> Path:
        path = (self.root / key.lstrip("/")).resolve()
        if self.root.resolve() not in path.parents:
            raise ConfigError(f"object key {key!r} escapes the backup directory {self.root}")
        return path

    def uri_for(self, key: str) -> str:
        return f"file://{self._path(key)}"

    def check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f"{_PARTIAL_MARK}probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise BackupError(f"backup directory {self.root} is not writable: {exc.strerror}") from None

    def upload_stream(self, key: str, stream: BinaryIO, content_type: str = "application/octet-stream") -> None:
        final = self._path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.with_name(f"{_PARTIAL_MARK}{final.name}-{uuid.uuid4().hex}")
        try:
            with open(partial, "wb") as out:
                while True:
                    data = stream.read(4 * MiB)
                    if not data:
                        break
                    out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(partial, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
            raise

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/json") -> None:
        import io

        self.upload_stream(key, io.BytesIO(data), content_type)

    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        """The whole object; with ``max_bytes``, refuse (one line) anything larger instead of reading it."""
        try:
            with open(self._path(key), "rb") as handle:
                data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
        except FileNotFoundError:
            raise BackupError(f"{self.uri_for(key)} does not exist") from None
        if max_bytes is not None and len(data) > max_bytes:
            raise too_large(self.uri_for(key), max_bytes)
        return data

    def open_read(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise BackupError(f"{self.uri_for(key)} does not exist") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        if not self.root.is_dir():
            return
        keys = []
        for path in self.root.rglob("*"):
            if path.is_file() and not path.name.startswith(_PARTIAL_MARK):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix) and (start_after is None or key > start_after):
                    keys.append((key, path))
        for key, path in sorted(keys):
            stat = path.stat()
            yield ObjectInfo(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC))

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def list_incomplete_uploads(self, prefix: str = "",
                                limit: int = MAX_INCOMPLETE_UPLOADS) -> Iterator[IncompleteUpload]:
        """Hidden partial files (a killed writer leaves them behind), oldest first. ``initiated`` is
        the file's last write: a live writer keeps it fresh, so age is a safe lower bound on how long
        the writer has been gone. ``key`` is the key it would have been stored under."""
        if not self.root.is_dir():
            return
        found = []
        for path in self.root.rglob(f"{_PARTIAL_MARK}*"):
            if not path.is_file():
                continue
            relative = path.relative_to(self.root).as_posix()
            final_name = path.name[len(_PARTIAL_MARK):].rsplit("-", 1)[0]
            key = (path.parent / final_name).relative_to(self.root).as_posix()
            if key.startswith(prefix):
                with contextlib.suppress(FileNotFoundError):
                    found.append(IncompleteUpload(key, relative,
                                                  datetime.fromtimestamp(path.stat().st_mtime, UTC)))
        yield from sorted(found, key=lambda u: (u.initiated, u.upload_id))[:limit]

    def abort_incomplete_upload(self, upload: IncompleteUpload) -> None:
        """Remove the partial file (``upload_id`` is its path under the root)."""
        path = self._path(upload.upload_id)
        if not path.name.startswith(_PARTIAL_MARK):
            raise ConfigError(f"{upload.upload_id!r} is not a partial upload of {self.url}")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _s3_error_line(exc: Exception, action: str, where: str) -> Exception:
    """Turn a botocore exception into one of ours with a line an operator can act on."""
    from botocore import exceptions as bex

    if isinstance(exc, bex.NoCredentialsError):
        return ConfigError(f"no S3 credentials for {where}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile")
    if isinstance(exc, (bex.EndpointConnectionError, bex.ConnectTimeoutError)):
        return BackupError(f"cannot reach object store for {where} while trying to {action}: {exc}")
    if isinstance(exc, (bex.ConnectionClosedError, bex.ReadTimeoutError, bex.ConnectionError)):
        return TransientError(f"connection to object store dropped while trying to {action} {where}: {exc}")
    if isinstance(exc, bex.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in ("NoSuchBucket",):
            return BackupError(f"bucket for {where} does not exist ({code}); create it or fix the backup URL")
        if code in ("AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                    "AllAccessDisabled") or status == 403:
            return BackupError(f"access denied to {where} while trying to {action} ({code or status}); "
                               "check the credentials and the bucket policy")
        if code in ("NoSuchKey", "404", "NotFound"):
            return BackupError(f"{where} does not exist")
        if code in ("SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable") or status >= 500:
            return TransientError(f"object store failed to {action} {where}: {code or status}")
        return BackupError(f"object store refused to {action} {where}: {code} {err.get('Message', '')}".strip())
    return exc


class S3Store:
    """An S3-compatible bucket and prefix, addressed path-style so MinIO/R2/Ceph work too.

    Honours the standard AWS variables (credentials, region, ``AWS_ENDPOINT_URL``). Parts are a
    fixed size and at most ``max_in_memory_parts`` are buffered, so memory stays bounded no
    matter how large the stream is.
    """

    def __init__(self, url: str, *, encryption: Encryption | None = None, endpoint_url: str | None = None,
                 part_size: int = DEFAULT_PART_SIZE, concurrency: int = 4, client: object | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ConfigError(f"backup URL {url} must look like s3://bucket/prefix")
        if part_size < 5 * MiB:
            raise ConfigError("S3 multipart part size must be at least 5 MiB")
        self.url = url.rstrip("/")
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self.encryption = encryption or Encryption()
        self.part_size = part_size
        self.concurrency = concurrency
        self._client = client or self._make_client(endpoint_url)

    @staticmethod
    def _make_client(endpoint_url: str | None) -> object:
        import boto3
        from botocore.config import Config

        config = Config(
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "max_attempts": 5},
            connect_timeout=10,
            read_timeout=120,
            # S3-compatible stores (and moto) reject the CRC checksums AWS SDKs send since 2025.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        return boto3.client("s3", endpoint_url=endpoint_url or None, config=config)

    @property
    def client(self) -> object:
        return self._client

    def _key(self, key: str) -> str:
        return _join(self.prefix, key)

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _fail(self, exc: Exception, action: str, key: str | None = None) -> Exception:
        where = self.uri_for(key) if key is not None else f"s3://{self.bucket}/{self.prefix}"
        return _s3_error_line(exc, action, where)

    def check_writable(self) -> None:
        """Fail before any dump starts if the bucket is missing or we may not write to it."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 403:
                # HeadBucket needs s3:ListBucket, which a least-privilege writer may lack: let the
                # upload itself decide (it aborts cleanly and names the denial).
                return
            if status == 404:
                raise BackupError(f"bucket {self.bucket} does not exist (s3://{self.bucket}/{self.prefix}); "
                                  "create it or fix the backup URL") from None
            raise self._fail(exc, "open the bucket") from None
        except BotoCoreError as exc:
            raise self._fail(exc, "open the bucket") from None

    def upload_stream(self, key: str, stream: BinaryIO, content_type: str = "application/octet-stream") -> None:
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import BotoCoreError, ClientError

        config = TransferConfig(
            multipart_threshold=self.part_size,
            multipart_chunksize=self.part_size,
            max_concurrency=self.concurrency,
            use_threads=True,
        )
        # Not a constructor argument in boto3, but honoured by s3transfer: a non-seekable stream
        # buffers at most this many parts, which is what bounds memory.
        config.max_in_memory_upload_chunks = self.concurrency + 2
        extra = {"ContentType": content_type, **self.encryption.extra_args()}
        full_key = self._key(key)
        try:
            self._client.upload_fileobj(stream, self.bucket, full_key, ExtraArgs=extra, Config=config)
        except BaseException as exc:
            self._abort_uploads(full_key)
            if isinstance(exc, (BotoCoreError, ClientError)):
                raise self._fail(exc, "upload", key) from None
            raise

    def _abort_uploads(self, full_key: str) -> None:
        """Belt and braces on top of the transfer manager's own abort: no orphaned parts."""
        with contextlib.suppress(Exception):
            listing = self._client.list_multipart_uploads(Bucket=self.bucket, Prefix=full_key)
            for upload in listing.get("Uploads", []):
                if upload["Key"] == full_key:
                    self._client.abort_multipart_upload(Bucket=self.bucket, Key=full_key, UploadId=upload["UploadId"])

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/json") -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type,
                                    **self.encryption.extra_args())
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(exc, "write", key) from None

    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        """The whole object; with ``max_bytes``, refuse (one line) anything larger instead of reading it."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(exc, "read", key) from None
        with response["Body"] as body:
            if max_bytes is not None and int(response.get("ContentLength") or 0) > max_bytes:
                raise too_large(self.uri_for(key), max_bytes)
            try:
                data = body.read() if max_bytes is None else body.read(max_bytes + 1)
            except (BotoCoreError, ClientError) as exc:
                raise self._fail(exc, "read", key) from None
        if max_bytes is not None and len(data) > max_bytes:
            raise too_large(self.uri_for(key), max_bytes)
        return data

    def open_read(self, key: str) -> BinaryIO:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(exc, "read", key) from None

    def exists(self, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise self._fail(exc, "inspect", key) from None
        except BotoCoreError as exc:
            raise self._fail(exc, "inspect", key) from None

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Keys in lexical order, one page at a time: a cursor (``start_after``) bounds the work."""
        from botocore.exceptions import BotoCoreError, ClientError

        base = f"{self.prefix}/" if self.prefix else ""
        kwargs = {"Bucket": self.bucket, "Prefix": base + prefix}
        if start_after:
            kwargs["StartAfter"] = base + start_after
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(**kwargs):
                for item in page.get("Contents", []):
                    yield ObjectInfo(item["Key"][len(base):], int(item["Size"]), item["LastModified"])
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(exc, "list", prefix) from None

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(exc, "delete", key) from None

    def list_incomplete_uploads(self, prefix: str = "",
                                limit: int = MAX_INCOMPLETE_UPLOADS) -> Iterator[IncompleteUpload]:
        """Unfinished multipart uploads under the prefix (ListMultipartUploads, page by page, at most
        ``limit``). They are invisible in object listings but billed until aborted."""
        from botocore.exceptions import BotoCoreError, ClientError

        base = f"{self.prefix}/" if self.prefix else ""
        paginator = self._client.get_paginator("list_multipart_uploads")
        seen = 0
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base + prefix):
                for item in page.get("Uploads", []):
                    if seen >= limit:
                        return
                    seen += 1
                    yield IncompleteUpload(item["Key"][len(base):], item["UploadId"], item["Initiated"])
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(exc, "list incomplete multipart uploads", prefix) from None

    def abort_incomplete_upload(self, upload: IncompleteUpload) -> None:
        """Abort one multipart upload: its parts are freed. One already gone is not an error."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=self._key(upload.key),
                                                UploadId=upload.upload_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
                return
            raise self._fail(exc, "abort an incomplete multipart upload", upload.key) from None
        except BotoCoreError as exc:
            raise self._fail(exc, "abort an incomplete multipart upload", upload.key) from None


def open_store(url: str, *, encryption: Encryption | None = None, endpoint_url: str | None = None,
               part_size: int = DEFAULT_PART_SIZE) -> ObjectStore:
    """Open ``s3://bucket/prefix`` or ``file:///path``; anything else is a clear config error."""
    if not url or not url.strip():
        raise ConfigError("backup URL is empty; expected s3://bucket/prefix or file:///absolute/path")
    scheme = urlsplit(url).scheme
    if scheme == "s3":
        return S3Store(url, encryption=encryption, endpoint_url=endpoint_url, part_size=part_size)
    if scheme == "file":
        if encryption and encryption.mode:
            raise ConfigError("server-side encryption applies to s3:// backup URLs only")
        return FileStore(url)
    raise ConfigError(f"backup URL {url} has unsupported scheme {scheme or 'none'!r}; use s3:// or file://")
