"""The archive in an S3 bucket (``s3://bucket/prefix``), through obstore.

obstore (the Rust ``object_store`` crate behind a small Python API) was chosen over boto3
and aiobotocore: its calls are natively async (no thread per request, nothing blocks the
loop), it has no Python dependencies to pin against ours, it retries with backoff by itself
and does multipart uploads for large objects. It speaks to AWS and to S3-compatible servers
(SeaweedFS in the tests, MinIO, R2) alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import obstore
from obstore.store import S3Store

from selkie.archive.base import Archive, ObjectInfo, check_key
from selkie.errors import ArchiveError, ObjectMissing

# One request may take this long before it is retried; the whole retry this long.
REQUEST_TIMEOUT = "30s"
RETRY_TIMEOUT = timedelta(seconds=60)
DELETE_BATCH = 1000


@dataclass(frozen=True, kw_only=True)
class S3Config:
    bucket: str
    prefix: str = ""
    endpoint: str = ""  # empty: AWS's own, from the region
    region: str = ""
    access_key_id: str = ""
    secret_access_key: str = ""
    session_token: str = ""


def _short(exc: Exception) -> str:
    """The first line of an obstore error: the operation and status, without its debug
    dump (which repeats request details)."""
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


class S3Archive(Archive):
    def __init__(self, config: S3Config) -> None:
        self.config = config
        prefix = config.prefix.strip("/")
        self.location = f"s3://{config.bucket}/{prefix}" if prefix else f"s3://{config.bucket}"
        options: dict[str, Any] = {
            "region": config.region or "us-east-1",
            "client_options": {
                "allow_http": config.endpoint.startswith("http://"),
                "timeout": REQUEST_TIMEOUT,
                "connect_timeout": "5s",
            },
            "retry_config": {"max_retries": 5, "retry_timeout": RETRY_TIMEOUT},
        }
        if config.endpoint:
            options["endpoint"] = config.endpoint
            # S3-compatible servers on an address or a plain host name want path-style URLs.
            options["virtual_hosted_style_request"] = False
        if config.access_key_id:
            options["access_key_id"] = config.access_key_id
            options["secret_access_key"] = config.secret_access_key
            if config.session_token:
                options["session_token"] = config.session_token
        if prefix:
            options["prefix"] = prefix
        self.store = S3Store(config.bucket, **options)

    async def put(self, key: str, data: bytes) -> None:
        try:
            await obstore.put_async(self.store, check_key(key), data)
        except Exception as exc:
            raise ArchiveError(f"archive: cannot write {key}: {_short(exc)}") from exc

    async def get(self, key: str) -> bytes:
        try:
            result = await obstore.get_async(self.store, check_key(key))
            return bytes(await result.bytes_async())
        except FileNotFoundError as exc:
            raise ObjectMissing(f"archive object {key} is missing") from exc
        except Exception as exc:
            raise ArchiveError(f"archive: cannot read {key}: {_short(exc)}") from exc

    async def list(self, prefix: str) -> list[ObjectInfo]:
        out: list[ObjectInfo] = []
        try:
            async for batch in obstore.list(self.store, prefix, chunk_size=1000):
                for meta in batch:
                    path = str(meta["path"])
                    if path.startswith(prefix):
                        out.append(ObjectInfo(path, int(meta["size"]), meta.get("last_modified")))
        except Exception as exc:
            raise ArchiveError(f"archive: cannot list {prefix}: {_short(exc)}") from exc
        return sorted(out, key=lambda o: o.key)

    async def delete(self, keys: Iterable[str]) -> None:
        todo = [check_key(k) for k in keys]
        try:
            for i in range(0, len(todo), DELETE_BATCH):
                await obstore.delete_async(self.store, todo[i : i + DELETE_BATCH])
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise ArchiveError(f"archive: cannot delete: {_short(exc)}") from exc
