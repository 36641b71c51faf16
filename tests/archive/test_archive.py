"""Both archive backends against the real thing: a local directory and SeaweedFS's S3."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from selkie.archive import Archive, LocalArchive, open_archive
from selkie.errors import ArchiveError, ConfigError, ObjectMissing
from tests.conftest import s3_options
from tests.seaweedfs import S3Server


@pytest.fixture(params=["file", "s3"])
async def archive(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Archive]:
    if request.param == "file":
        a: Archive = open_archive(f"file://{tmp_path / 'archive'}")
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        a = open_archive(server.url(f"t-{secrets.token_hex(4)}"), **s3_options(server))
    yield a
    await a.close()


async def test_put_get_list_delete(archive: Archive) -> None:
    data = os.urandom(300_000)
    await archive.put("projects/p1/chunks/aa", data)
    await archive.put("projects/p1/chunks/bb", b"x")
    await archive.put("projects/p1/wal/1-2.seg", b"seg")
    await archive.put("projects/p2/chunks/cc", b"other project")
    assert await archive.get("projects/p1/chunks/aa") == data
    listed = await archive.list("projects/p1/chunks/")
    assert [(o.key, o.size) for o in listed] == [
        ("projects/p1/chunks/aa", 300_000),
        ("projects/p1/chunks/bb", 1),
    ]
    assert [o.key for o in await archive.list("projects/p1/")] == [
        "projects/p1/chunks/aa",
        "projects/p1/chunks/bb",
        "projects/p1/wal/1-2.seg",
    ]
    assert await archive.list("projects/nothing/") == []
    # Replacing an object is atomic and complete.
    await archive.put("projects/p1/chunks/bb", b"y" * 10)
    assert await archive.get("projects/p1/chunks/bb") == b"y" * 10
    await archive.delete(["projects/p1/chunks/aa", "projects/p1/never-existed"])
    with pytest.raises(ObjectMissing, match="projects/p1/chunks/aa"):
        await archive.get("projects/p1/chunks/aa")
    assert [o.key for o in await archive.list("projects/p1/chunks/")] == ["projects/p1/chunks/bb"]


async def test_concurrent_puts(archive: Archive) -> None:
    blobs = {f"projects/p/chunks/{i:03d}": os.urandom(1000 + i) for i in range(40)}
    await asyncio.gather(*(archive.put(k, v) for k, v in blobs.items()))
    got = await asyncio.gather(*(archive.get(k) for k in blobs))
    assert dict(zip(blobs, got, strict=True)) == blobs


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a"])
async def test_keys_cannot_escape(archive: Archive, key: str) -> None:
    with pytest.raises(ArchiveError, match="invalid archive key"):
        await archive.put(key, b"x")


async def test_local_put_is_atomic_and_leaves_no_parts(tmp_path: Path) -> None:
    archive = LocalArchive(tmp_path / "a")
    await archive.put("x/y", b"1" * 100)
    # A crash mid-write leaves only a .part file beside the target: never listed, and the
    # object keeps its last complete content.
    (tmp_path / "a" / "x" / ".y.dead.part").write_bytes(b"torn")
    assert [o.key for o in await archive.list("x/")] == ["x/y"]
    assert await archive.get("x/y") == b"1" * 100


async def test_unreachable_s3_is_an_archive_error() -> None:
    archive = open_archive(
        "s3://bucket/p",
        endpoint="http://127.0.0.1:9",  # discard port: nothing listens
        access_key_id="k",
        secret_access_key="secret-that-must-not-leak",
    )
    archive.store = type(archive.store)(  # type: ignore[attr-defined]
        "bucket",
        endpoint="http://127.0.0.1:9",
        access_key_id="k",
        secret_access_key="secret-that-must-not-leak",
        region="us-east-1",
        client_options={"allow_http": True, "connect_timeout": "1s", "timeout": "2s"},
        retry_config={
            "max_retries": 1,
            "retry_timeout": __import__("datetime").timedelta(seconds=2),
        },
    )
    with pytest.raises(ArchiveError) as info:
        await archive.put("a/b", b"x")
    assert "cannot write a/b" in info.value.message
    assert "secret-that-must-not-leak" not in info.value.message


async def test_wrong_credentials_are_an_archive_error(s3_server: S3Server) -> None:
    options = dict(s3_options(s3_server), secret_access_key="wrong")
    archive = open_archive(s3_server.url("creds"), **options)
    with pytest.raises(ArchiveError, match="cannot write"):
        await archive.put("a/b", b"x")


@pytest.mark.parametrize(
    "url", ["file://relative/path", "s3://", "http://example.com/x", "file://host/abs"]
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        open_archive(url)
