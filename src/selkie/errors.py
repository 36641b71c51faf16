"""Selkie's exception tree. Foreign exceptions are mapped to these at layer boundaries.

::

    SelkieError                      code            HTTP
    ├── ConfigError                  config_error    500 (startup only)
    ├── InvalidInput                 invalid_input   422
    ├── Unauthorized                 unauthorized    401
    ├── Forbidden                    forbidden       403
    ├── NotFound                     not_found       404
    ├── Conflict                     conflict        409
    │   └── StateConflict            state_conflict  409  (CAS on (state, generation) lost)
    ├── QuotaExceeded                quota_exceeded  429
    ├── StoreError                   store_error     503  (state store unreachable, …)
    ├── ComputeError                 compute_error   502  (a compute failed to start, …)
    │   └── DiskFull                 disk_full       507  (its disk is full: not retried)
    ├── StorageError                 storage_error   502  (a branch's data could not be made, …)
    └── ArchiveError                 archive_error   503  (object storage unreachable, …)
        └── ObjectMissing            object_missing  503  (an object a restore needs is gone)
"""

from __future__ import annotations

import asyncio
import re


class SelkieError(Exception):
    """Base of every error Selkie raises on purpose."""

    code = "internal_error"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(SelkieError):
    code = "config_error"


class InvalidInput(SelkieError):
    code = "invalid_input"
    http_status = 422


class Unauthorized(SelkieError):
    code = "unauthorized"
    http_status = 401


class Forbidden(SelkieError):
    code = "forbidden"
    http_status = 403


class NotFound(SelkieError):
    code = "not_found"
    http_status = 404


class Conflict(SelkieError):
    code = "conflict"
    http_status = 409


class StateConflict(Conflict):
    """A compare-and-set transition lost: the row changed under us."""

    code = "state_conflict"


class QuotaExceeded(SelkieError):
    code = "quota_exceeded"
    http_status = 429


class RateLimited(QuotaExceeded):
    """Too many requests from one API key: try again after ``retry_after`` seconds."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreError(SelkieError):
    code = "store_error"
    http_status = 503


class ComputeError(SelkieError):
    code = "compute_error"
    http_status = 502


class DiskFull(ComputeError):
    """A compute's disk is full: starting it again does not help until room is made."""

    code = "disk_full"
    http_status = 507


class StorageError(SelkieError):
    code = "storage_error"
    http_status = 502


class ArchiveError(SelkieError):
    code = "archive_error"
    http_status = 503


class ObjectMissing(ArchiveError):
    """An archive object that should exist does not (or cannot be read back intact)."""

    code = "object_missing"


def error_class(code: str) -> type[SelkieError] | None:
    """The error class with this ``code`` (for errors that crossed HTTP), or None."""
    todo: list[type[SelkieError]] = [SelkieError]
    while todo:
        cls = todo.pop()
        if cls.code == code:
            return cls
        todo.extend(cls.__subclasses__())
    return None


# What a tenant never reads of a host: absolute paths (after a space, quote, bracket or
# '='; not a URL's path nor an API route, which follow a host or a word) and addresses.
_FILE_URL = re.compile(r"file://[^\s'\";,)]*")
_PATH = re.compile(r"(?<![\w/.:~-])/(?!v1/|internal/)[\w.@+~-]+(?:/[\w.@+~-]*)*")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?(?![\w.])")
_IPV6 = re.compile(r"\[[0-9A-Fa-f:.]+\](?::\d+)?")


def scrub(text: str) -> str:
    """``text`` without host paths and network addresses: what a compute's error log or a
    socket error says is for the operator's log, the tenant reads the rest."""
    text = _FILE_URL.sub("file://<path>", text)
    text = _PATH.sub("<path>", text)
    text = _IPV6.sub("<address>", text)
    return _IPV4.sub("<address>", text)


def public_message(exc: BaseException) -> str:
    """What a tenant may read about a failure: a SelkieError's own message, scrubbed of
    host paths and addresses; for anything else (a bug, a library's error) no repr, no
    paths, no remote bodies — the caller logs the exception for the operator."""
    if isinstance(exc, SelkieError):
        return scrub(exc.message)
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return f"internal error ({type(exc).__name__}); the operator's log has the details"
