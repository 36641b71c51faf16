"""The safekeeper's replication accounts, and the secret they derive from.

Two kinds, both ``mysql_native_password`` accounts whose passwords are never stored:

- **on a compute**: ``selkie-safekeeper``, with ``REPLICATION SLAVE`` only, which the
  safekeeper logs in as to follow the compute's binary log over TCP (or the unix socket
  where it shares the host). It holds no other privilege: a safekeeper that is broken into
  reads the log it keeps anyway, and nothing else of a tenant's. The name cannot be a
  tenant role's (roles take no ``-``), so account syncs never touch it.
- **on the binlog server**: one per timeline, named by the timeline's id, that reads that
  timeline's history and no other.

Each password is an HMAC of the account's name under a secret key: ``SELKIE_SAFEKEEPER_KEY``
(hex; shared by every process of a scaled-out installation) or, embedded, a random key kept
in ``<data_dir>/safekeeper.key`` (0600). What a compute or the binlog server stores is only
``SHA1(SHA1(password))``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from selkie.errors import ConfigError

log = logging.getLogger(__name__)

COMPUTE_ACCOUNT = "selkie-safekeeper"
KEY_FILE = "safekeeper.key"
_KEY_BYTES = 32


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str

    @property
    def stage1(self) -> bytes:
        """``SHA1(password)``: what answers a server's scramble."""
        return hashlib.sha1(self.password.encode()).digest()  # noqa: S324 - the protocol's

    @property
    def native_hash(self) -> str:
        """``*HEX`` of ``SHA1(SHA1(password))``, as MariaDB stores it."""
        return "*" + hashlib.sha1(self.stage1).hexdigest().upper()  # noqa: S324


class ReplicationKey:
    """Derives the replication accounts' passwords from one secret."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ConfigError("the safekeeper key must be at least 16 bytes")
        self._key = key

    @classmethod
    def load(cls, configured: str, data_dir: Path) -> ReplicationKey:
        """The configured key (hex), or the data dir's key file, made on first use."""
        if configured:
            try:
                return cls(bytes.fromhex(configured))
            except ValueError as exc:
                raise ConfigError("SELKIE_SAFEKEEPER_KEY must be hexadecimal") from exc
        path = data_dir / KEY_FILE
        try:
            return cls(bytes.fromhex(path.read_text().strip()))
        except FileNotFoundError:
            pass
        except ValueError as exc:
            raise ConfigError(f"{path} does not hold a hexadecimal key") from exc
        key = secrets.token_bytes(_KEY_BYTES)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key.hex())
            fh.flush()
            os.fsync(fh.fileno())
        try:
            # Another process may have made one meanwhile: the first link wins.
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        return cls(bytes.fromhex(path.read_text().strip()))

    def credentials(self, user: str) -> Credentials:
        digest = hmac.new(self._key, b"replication:" + user.encode(), hashlib.sha256)
        return Credentials(user, digest.hexdigest()[:40])

    def compute_account(self) -> Credentials:
        return self.credentials(COMPUTE_ACCOUNT)

    def timeline_account(self, timeline_id: str) -> Credentials:
        return self.credentials(timeline_id)


def compute_account_statements(creds: Credentials, hosts: tuple[str, ...]) -> list[str]:
    """SQL (as the compute's admin) that makes the safekeeper's account on a compute, with
    this password and replication rights only. Idempotent."""
    statements = []
    for host in hosts:
        if not host or "'" in host or "\\" in host:
            raise ValueError(f"unsafe account host {host!r}")
        who = f"'{creds.user}'@'{host}'"
        statements += [
            f"CREATE USER IF NOT EXISTS {who} IDENTIFIED BY PASSWORD '{creds.native_hash}'",
            f"ALTER USER {who} IDENTIFIED BY PASSWORD '{creds.native_hash}'",
            f"GRANT REPLICATION SLAVE ON *.* TO {who}",
        ]
    return statements
