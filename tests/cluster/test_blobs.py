"""The S3 store against a real SeaweedFS: streams in parts, never overwrites,
and a writer killed mid-upload leaves nothing a reader could take for whole."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arker.cluster.blobs import PART_BYTES, BlobStore
from arker.cluster.local import Seaweed
from arker.errors import ArkerError, ErrorCode


def test_small_and_multipart_round_trip(blob_store: BlobStore) -> None:
    blob_store.put_bytes("a/small", b"hello")
    big = os.urandom(2 * PART_BYTES + 12345)  # three parts, the last one short
    assert blob_store.put_stream("a/big", io.BytesIO(big)) == len(big)
    assert blob_store.get_bytes("a/small") == b"hello"
    stream = blob_store.open_stream("a/big")
    got = b"".join(iter(lambda: stream.read(1 << 20), b""))
    stream.close()
    assert got == big
    assert blob_store.list("a/") == ["a/big", "a/small"]
    assert blob_store.exists("a/big") and not blob_store.exists("a/none")


def test_a_key_is_never_overwritten(blob_store: BlobStore) -> None:
    blob_store.put_bytes("k", b"first")
    with pytest.raises(ArkerError) as err:
        blob_store.put_bytes("k", b"second")
    assert err.value.code == ErrorCode.CONFLICT
    with pytest.raises(ArkerError) as err:
        blob_store.put_stream("k", io.BytesIO(os.urandom(PART_BYTES + 1)))
    assert err.value.code == ErrorCode.CONFLICT
    assert blob_store.get_bytes("k") == b"first"
    # Two writers racing past the existence check: the complete itself is conditional.
    data = os.urandom(PART_BYTES + 1)
    assert blob_store.put_stream("race", io.BytesIO(data)) == len(data)
    client, full = blob_store._client, f"{blob_store.prefix}/race"
    upload = client.create_multipart_upload(Bucket=blob_store.bucket, Key=full)
    part = client.upload_part(Bucket=blob_store.bucket, Key=full, UploadId=upload["UploadId"],
                              PartNumber=1, Body=b"late")  # fmt: skip
    with pytest.raises(Exception, match="PreconditionFailed"):
        client.complete_multipart_upload(
            Bucket=blob_store.bucket, Key=full, UploadId=upload["UploadId"], IfNoneMatch="*",
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
        )  # fmt: skip
    assert blob_store.get_bytes("race") == data


def test_missing_keys_and_bad_keys(blob_store: BlobStore) -> None:
    with pytest.raises(ArkerError) as err:
        blob_store.open_stream("nothing/here")
    assert err.value.code == ErrorCode.NOT_FOUND
    blob_store.delete("nothing/here")  # already gone: no error
    for bad in ("", "/abs", "a/../b"):
        with pytest.raises(ArkerError) as err:
            blob_store.put_bytes(bad, b"x")
        assert err.value.code == ErrorCode.INVALID_REQUEST
    with pytest.raises(ArkerError) as err:
        BlobStore.from_url("http://bucket/x")
    assert err.value.code == ErrorCode.INVALID_REQUEST


def test_store_down_is_unavailable() -> None:
    store = BlobStore.from_url("s3://b/p", endpoint_url="http://127.0.0.1:18499",
                               access_key="a", secret_key="b", retries=0)  # fmt: skip
    for call in (lambda: store.put_bytes("k", b"x"), lambda: store.exists("k"),
                 lambda: store.list(), lambda: store.open_stream("k")):  # fmt: skip
        with pytest.raises(ArkerError) as err:
            call()
        assert err.value.code == ErrorCode.UNAVAILABLE


_WRITER = """
import json, os, sys, time
from arker.cluster.blobs import BlobStore, PART_BYTES
cfg = json.loads(sys.argv[1])
store = BlobStore.from_url(cfg["url"], endpoint_url=cfg["endpoint"],
                           access_key=cfg["ak"], secret_key=cfg["sk"])
class Slow:
    sent = 0
    def read(self, n):
        if self.sent >= 2 * PART_BYTES:       # two parts are up: say so, then hang
            open(cfg["marker"], "w").close()
            time.sleep(600)
        self.sent += n
        return os.urandom(n)
store.put_stream("victim", Slow())
"""


def test_a_writer_killed_mid_upload_leaves_no_object(
    blob_store: BlobStore, cluster_seaweed: Seaweed, tmp_path: Path
) -> None:
    marker = tmp_path / "two-parts-up"
    cfg = {"url": blob_store.url, "endpoint": cluster_seaweed.endpoint_url,
           "ak": cluster_seaweed.access_key, "sk": cluster_seaweed.secret_key,
           "marker": str(marker)}  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, json.dumps(cfg)], env=env)
    try:
        for _ in range(600):
            if marker.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert marker.exists(), "the writer never got two parts up"
        # Its parts are on the server now, in an upload that was never completed.
        uploads = blob_store._client.list_multipart_uploads(Bucket=blob_store.bucket,
                                                            Prefix=blob_store.prefix)  # fmt: skip
        assert any(u["Key"].endswith("/victim") for u in uploads.get("Uploads", ()))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not blob_store.exists("victim")
    assert "victim" not in blob_store.list()
    with pytest.raises(ArkerError) as err:
        blob_store.open_stream("victim")
    assert err.value.code == ErrorCode.NOT_FOUND
    # The orphaned upload does not block a later writer of the same key.
    blob_store.put_bytes("victim", b"whole")
    assert blob_store.get_bytes("victim") == b"whole"
