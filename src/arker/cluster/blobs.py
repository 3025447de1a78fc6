"""The S3 store: goldens and checkpoints as immutable objects.

    BlobStore.from_url("s3://bucket/prefix", endpoint_url=..., access_key=..., secret_key=...)

One botocore client per store, and one store per host process: making a client
costs far more than a small upload (measured: the upload of a small checkpoint
is dominated by client start-up), and a botocore client is safe across threads.

Every write is a conditional create (`If-None-Match: *`): a key is never
overwritten. A stream larger than one part goes up as a multipart upload, which
S3 makes visible only when `CompleteMultipartUpload` succeeds, so a writer that
dies mid-way leaves no object at all (its parts are aborted, or expire).
Credentials and the endpoint come from the arguments, else from the standard
AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL[_S3]).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlsplit

from arker.errors import ArkerError, ErrorCode

__all__ = ["PART_BYTES", "BlobStore", "Readable"]

PART_BYTES = 8 * 1024 * 1024  # S3's minimum part is 5 MiB (except the last)


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class BlobStore:
    """Keys are relative to the store's prefix; `list` returns them the same way."""

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self._client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        endpoint_url: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str | None = None,
        retries: int = 3,
        timeout_s: float = 60.0,
    ) -> BlobStore:
        """A store for `s3://bucket[/prefix]`."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ArkerError(
                ErrorCode.INVALID_REQUEST, f"blob url must be s3://bucket/prefix: {url!r}"
            )
        import botocore.config
        import botocore.session

        session = botocore.session.get_session()
        endpoint = (
            endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        config = botocore.config.Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": retries + 1, "mode": "standard"},
            connect_timeout=min(timeout_s, 5.0),
            read_timeout=timeout_s,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=16,
        )
        client = session.create_client(
            "s3",
            region_name=region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            endpoint_url=endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=config,
        )
        return cls(client, parts.netloc, parts.path)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _key(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ArkerError(ErrorCode.INVALID_REQUEST, f"bad blob key: {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    # -- writes ------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        """Create `key` holding `data`; `conflict` if it exists."""
        with _translate(key):
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                    IfNoneMatch="*")  # fmt: skip

    def put_stream(
        self, key: str, fileobj: BinaryIO | Readable, part_bytes: int = PART_BYTES
    ) -> int:
        """Create `key` from everything `fileobj` yields, streaming in parts;
        returns the bytes stored. `conflict` if the key exists; nothing is
        visible under `key` unless the whole stream arrived."""
        part_bytes = max(part_bytes, 5 * 1024 * 1024)
        first = _read_full(fileobj, part_bytes)
        if len(first) < part_bytes:
            self.put_bytes(key, first)
            return len(first)
        full = self._key(key)
        with _translate(key):
            if self._exists(full):  # fail before uploading gigabytes; the complete re-checks
                raise ArkerError(ErrorCode.CONFLICT, f"blob {key!r} already exists")
            upload = self._client.create_multipart_upload(Bucket=self.bucket, Key=full)
        upload_id = upload["UploadId"]
        total, done = 0, list[dict[str, Any]]()
        try:
            chunk = first
            while chunk:
                with _translate(key):
                    part = self._client.upload_part(
                        Bucket=self.bucket, Key=full, UploadId=upload_id,
                        PartNumber=len(done) + 1, Body=chunk,
                    )  # fmt: skip
                done.append({"PartNumber": len(done) + 1, "ETag": part["ETag"]})
                total += len(chunk)
                chunk = _read_full(fileobj, part_bytes)
            with _translate(key):
                self._client.complete_multipart_upload(
                    Bucket=self.bucket, Key=full, UploadId=upload_id,
                    MultipartUpload={"Parts": done}, IfNoneMatch="*",
                )  # fmt: skip
        except BaseException:
            self._abort(full, upload_id)
            raise
        return total

    def _abort(self, full: str, upload_id: str) -> None:
        # If the store is down, the parts stay until its lifecycle rules expire
        # them; they are never visible as an object either way.
        with contextlib.suppress(Exception):
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)

    def delete(self, key: str) -> None:
        """Remove `key` (no error if it is already gone)."""
        with _translate(key):
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def create_bucket(self) -> None:
        """Make the store's bucket if it does not exist yet."""
        from botocore.exceptions import ClientError

        with _translate(self.bucket):
            try:
                self._client.create_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if _code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    # -- reads -------------------------------------------------------------

    def open_stream(self, key: str) -> Readable:
        """A readable of the object's bytes (`not_found` if there is none)."""
        with _translate(key):
            body = self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        return _Body(body, key)

    def get_bytes(self, key: str) -> bytes:
        stream = self.open_stream(key)
        try:
            return stream.read()
        finally:
            stream.close()

    def exists(self, key: str) -> bool:
        with _translate(key):
            return self._exists(self._key(key))

    def _exists(self, full: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._client.head_object(Bucket=self.bucket, Key=full)
        except ClientError as exc:
            if _status(exc) == 404:
                return False
            raise
        return True

    def list(self, prefix: str = "") -> list[str]:
        """Every key under `prefix` (relative to the store), sorted."""
        return sorted(self._iter(prefix))

    def _iter(self, prefix: str) -> Iterator[str]:
        from botocore.exceptions import ClientError

        base = f"{self.prefix}/" if self.prefix else ""
        paginator = self._client.get_paginator("list_objects_v2")
        with _translate(prefix or self.bucket):
            try:
                for page in paginator.paginate(Bucket=self.bucket, Prefix=base + prefix):
                    for item in page.get("Contents", ()):
                        yield item["Key"][len(base) :]
            except ClientError as exc:
                if _code(exc) != "NoSuchBucket":
                    raise


class _Body:
    """The object's bytes; errors mid-read become `unavailable`."""

    def __init__(self, body: Any, key: str) -> None:
        self._body, self._key = body, key

    def read(self, n: int = -1, /) -> bytes:
        with _translate(self._key):
            data: bytes = self._body.read(None if n < 0 else n)
            return data

    def close(self) -> None:
        self._body.close()


def _read_full(fileobj: BinaryIO | Readable, n: int) -> bytes:
    """Up to `n` bytes: short only at the end (a pipe returns what it has)."""
    chunks: list[bytes] = []
    have = 0
    while have < n:
        chunk = fileobj.read(n - have)
        if not chunk:
            break
        chunks.append(chunk)
        have += len(chunk)
    return b"".join(chunks)


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: Any) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


@contextlib.contextmanager
def _translate(key: str) -> Iterator[None]:
    """botocore's errors, translated once at the boundary into ArkerError."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        code, status = _code(exc), _status(exc)
        if status == 412 or code in ("PreconditionFailed", "ConditionalRequestConflict"):
            raise ArkerError(ErrorCode.CONFLICT, f"blob {key!r} already exists") from exc
        if status == 404 or code in ("NoSuchKey", "NoSuchBucket", "NotFound"):
            raise ArkerError(ErrorCode.NOT_FOUND, f"no blob {key!r}") from exc
        if status in (401, 403):
            raise ArkerError(ErrorCode.UNAVAILABLE, f"the blob store refused us: {code}") from exc
        raise ArkerError(
            ErrorCode.UNAVAILABLE, f"the blob store failed: {code} ({status})"
        ) from exc
    except (BotoCoreError, OSError) as exc:
        raise ArkerError(ErrorCode.UNAVAILABLE, f"the blob store is unreachable: {exc}") from exc
