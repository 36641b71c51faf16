"""The Archive boundary: durable object storage for branch history (base images and log
segments), behind one small interface with two backends (a local directory, S3).

Keys are relative, ``/``-separated paths such as ``projects/p/chunks/ab12…``. Every backend
guarantees:

- ``put`` is atomic: a reader sees the whole object or no object, never a torn one, also
  when the writer dies midway (a local file is written aside, fsynced and renamed; an S3 PUT
  is atomic by the protocol).
- ``get`` raises :class:`ObjectMissing` for a key that does not exist.
- ``delete`` of a missing key is not an error.
- every other failure (unreachable, refused, out of space) is an :class:`ArchiveError`
  whose message names the operation and key but no credentials.

Nothing here blocks the event loop: the local backend works in threads, the S3 one is async.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from selkie.errors import ArchiveError


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: datetime | None = None


def check_key(key: str) -> str:
    """Keys are made by Selkie; refuse anything that could step outside the archive."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ArchiveError(f"invalid archive key {key!r}")
    return key


class Archive(ABC):
    #: Where the archive is, for logs and docs (never carries credentials).
    location: str

    @abstractmethod
    async def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically, replacing what was there."""

    @abstractmethod
    async def get(self, key: str) -> bytes:
        """The object's bytes; ObjectMissing when there is none."""

    @abstractmethod
    async def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (a folder, ending in ``/``),
        sorted by key."""

    @abstractmethod
    async def delete(self, keys: Iterable[str]) -> None:
        """Remove the objects; missing ones are skipped."""

    async def close(self) -> None:
        """Release connections."""
