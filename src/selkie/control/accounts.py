"""Making a compute's roles and databases match the store.

A start applies the branch's roles and databases to its compute. The usual resume finds
them there already: the digest of what was last applied is kept beside the data it describes
(in the datadir, when this machine holds it), and a start whose digest matches skips the
round trips.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from selkie.compute.base import ComputeDriver
from selkie.compute.mariadb import (
    ANY_HOST,
    CONNECTION_ID_STATEMENTS,
    INSPECT_DATABASES,
    INSPECT_USERS,
    DatabaseSpec,
    RoleSpec,
    sync_statements,
)
from selkie.store.tables import DatabaseRow, DroppedNameRow, RoleRow

# In a datadir: the digest of the roles and databases last applied to it.
SYNC_MARKER = "selkie-accounts.digest"


@dataclass(frozen=True)
class Dropped:
    """Names deleted through the API: the only ones sync drops from a compute."""

    roles: frozenset[str] = frozenset()
    databases: frozenset[str] = frozenset()


def dropped_names(rows: list[DroppedNameRow]) -> Dropped:
    return Dropped(
        roles=frozenset(r.name for r in rows if r.kind == "role"),
        databases=frozenset(r.name for r in rows if r.kind == "database"),
    )


def accounts_digest(
    roles: list[RoleSpec],
    databases: list[DatabaseSpec],
    dropped: Dropped = Dropped(),
    hosts: Sequence[str] = ANY_HOST,
) -> str:
    text = repr(
        (
            CONNECTION_ID_STATEMENTS,
            sorted((r.name, r.password_hash) for r in roles),
            sorted((d.name, d.owner) for d in databases),
            sorted(dropped.roles),
            sorted(dropped.databases),
            list(hosts),
        )
    )
    return hashlib.sha256(text.encode()).hexdigest()


def role_specs(rows: list[RoleRow]) -> list[RoleSpec]:
    return [RoleSpec(name=r.name, password_hash=r.password_hash) for r in rows]


def database_specs(rows: list[DatabaseRow]) -> list[DatabaseSpec]:
    return [DatabaseSpec(name=d.name, owner=d.owner_name) for d in rows]


async def sync_accounts(
    driver: ComputeDriver,
    endpoint_id: str,
    roles: list[RoleSpec],
    databases: list[DatabaseSpec],
    *,
    datadir: Path | None = None,
    force: bool = False,
    dropped: Dropped = Dropped(),
) -> None:
    """Make the compute's accounts and databases match ``roles`` and ``databases`` (and
    drop what ``dropped`` names); skipped when ``datadir`` holds the digest of exactly these
    (unless ``force``)."""
    digest = accounts_digest(roles, databases, dropped, driver.account_hosts)
    marker = datadir / SYNC_MARKER if datadir is not None else None
    if marker is not None:
        if force:
            marker.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            if marker.read_text() == digest:
                return
    users, dbs = await driver.execute(endpoint_id, [INSPECT_USERS, INSPECT_DATABASES])
    statements = sync_statements(
        roles=roles,
        databases=databases,
        existing_users=[(str(r[0]), str(r[1])) for r in users],
        existing_databases=[str(r[0]) for r in dbs],
        dropped_users=dropped.roles,
        dropped_databases=dropped.databases,
        hosts=driver.account_hosts,
    )
    # The proxy's connection-id routine: a datadir made before it existed gets it here (the
    # digest covers its text, so a changed routine is applied once too).
    await driver.execute(endpoint_id, [*statements, *CONNECTION_ID_STATEMENTS])
    if marker is not None:
        marker.write_text(digest)
