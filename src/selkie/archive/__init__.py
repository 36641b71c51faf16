"""Durable object storage for branch history: a local directory or an S3 bucket."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from selkie.archive.base import Archive, ObjectInfo, check_key
from selkie.archive.local import LocalArchive
from selkie.errors import ConfigError

ARCHIVE_OFF = "off"


def open_archive(
    url: str,
    *,
    endpoint: str = "",
    region: str = "",
    access_key_id: str = "",
    secret_access_key: str = "",
    session_token: str = "",
) -> Archive:
    """The archive a URL names: ``file:///abs/path`` or ``s3://bucket[/prefix]`` (S3
    credentials and endpoint are passed in, read by the settings from the AWS variables)."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise ConfigError(f"archive_url {url!r}: use file:///absolute/path")
        return LocalArchive(Path(parsed.path))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"archive_url {url!r}: use s3://bucket/prefix")
        from selkie.archive.s3 import S3Archive, S3Config

        return S3Archive(
            S3Config(
                bucket=parsed.netloc,
                prefix=parsed.path.strip("/"),
                endpoint=endpoint,
                region=region,
                access_key_id=access_key_id,
                secret_access_key=secret_access_key,
                session_token=session_token,
            )
        )
    raise ConfigError(f"archive_url {url!r}: must be file:///path, s3://bucket/prefix or off")


__all__ = ["ARCHIVE_OFF", "Archive", "LocalArchive", "ObjectInfo", "check_key", "open_archive"]
