"""MariaDB specifics shared by every compute driver: the server configuration rendered from an
endpoint's size, and the SQL that makes a compute's accounts and databases match the store.
Pure functions only: no processes, no sockets."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql

from selkie.errors import ComputeError
from selkie.mysql.wire import SYSTEM_DATABASES

GIB = 1024**3
MIB = 1024**2
CU_MEMORY = 4 * GIB
# One size for every datadir: changing it makes the server rebuild its redo log at start.
REDO_LOG_SIZE = "32M"
# Accounts that belong to the server or to Selkie, never synced away.
SYSTEM_USERS = frozenset({"root", "mariadb.sys", "mysql", "PUBLIC"})

_HASH_RE = re.compile(r"^\*[0-9A-F]{40}$")
_ROLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,79}$")
_DB_RE = re.compile(r"^[A-Za-z0-9_$]{1,64}$")


@dataclass(frozen=True, kw_only=True)
class Sizing:
    """Server resources for a compute size (1 CU = 1 vCPU + 4 GiB RAM)."""

    cu: float
    memory_bytes: int
    buffer_pool_bytes: int
    max_connections: int
    thread_pool_size: int

    @classmethod
    def for_cu(cls, cu: float) -> Sizing:
        memory = int(cu * CU_MEMORY)
        # Half the memory for the buffer pool, in whole MiB, at least 64 MiB.
        pool = max(64 * MIB, (memory // 2) // MIB * MIB)
        return cls(
            cu=cu,
            memory_bytes=memory,
            buffer_pool_bytes=pool,
            # Connections are cheap under the thread pool (they hold no thread while idle);
            # serverless clients open many short-lived ones.
            max_connections=max(150, min(4000, int(cu * 1000))),
            thread_pool_size=max(1, math.ceil(cu)),
        )


# The binary log lives in the datadir under this name (binlog.000001, binlog.index).
BINLOG_BASENAME = "binlog"
# Every compute writes GTIDs of this server id in domain 0: a transaction's sequence number
# is its position in the branch's history.
COMPUTE_SERVER_ID = 1


def durability_options(*, semi_sync: bool, sync_timeout_ms: int) -> dict[str, str]:
    """What the safekeeper needs of a compute: a binary log of every change (row format,
    GTIDs, fsynced at each commit), and with ``semi_sync`` commits that wait for the
    safekeeper's acknowledgement (falling back to asynchronous after the timeout)."""
    return {
        "log_bin": BINLOG_BASENAME,
        "binlog_format": "ROW",
        "binlog_checksum": "CRC32",
        "sync_binlog": "1",
        "server_id": str(COMPUTE_SERVER_ID),
        "gtid_strict_mode": "ON",
        "max_binlog_size": "64M",
        "rpl_semi_sync_master_enabled": "ON" if semi_sync else "OFF",
        # The commit is acknowledged to the client only after the safekeeper has it.
        "rpl_semi_sync_master_wait_point": "AFTER_SYNC",
        "rpl_semi_sync_master_timeout": str(sync_timeout_ms),
    }


def render_config(
    *,
    sizing: Sizing,
    datadir: Path,
    socket: Path,
    port: int,
    pid_file: Path,
    error_log: Path | None,
    bind_address: str = "127.0.0.1",
    run_as_root: bool = False,
    os_user: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> str:
    """The compute's my.cnf, tuned for a fast start and a fast clean shutdown. Without an
    ``error_log`` the server logs to stderr (a container's log)."""
    options: dict[str, str | None] = {
        "datadir": str(datadir),
        "socket": str(socket),
        "port": str(port),
        "bind-address": bind_address,
        "pid-file": str(pid_file),
        "log-error": str(error_log) if error_log is not None else None,
        # Fast start: no DNS, no performance schema, a small redo log.
        "skip-name-resolve": None,
        "performance_schema": "OFF",
        "innodb_log_file_size": REDO_LOG_SIZE,
        # A warm cache after resume: dump the hot pages' ids at shutdown, load them in the
        # background at start (the first query does not wait for it).
        "innodb_buffer_pool_dump_at_shutdown": "ON",
        "innodb_buffer_pool_load_at_startup": "ON",
        "innodb_fast_shutdown": "1",
        # Every acknowledged commit survives kill -9.
        "innodb_flush_log_at_trx_commit": "1",
        "innodb_buffer_pool_size": str(sizing.buffer_pool_bytes),
        "max_connections": str(sizing.max_connections),
        # A connection storm must queue in the kernel, not be refused.
        "back_log": str(max(128, sizing.max_connections)),
        # The pooler keeps up to 64 statements prepared on each of its backends (40 per CU by
        # default); room for about that many, and when the server is full anyway a backend
        # gives back half of its statements and prepares again (proxy.pooled).
        "max_prepared_stmt_count": str(max(16382, sizing.max_connections * 6)),
        "thread_handling": "pool-of-threads",
        "thread_pool_size": str(sizing.thread_pool_size),
        "character-set-server": "utf8mb4",
        "collation-server": "utf8mb4_general_ci",
        "max_allowed_packet": "1G",
        "local_infile": "ON",
        "skip-symbolic-links": None,
        # A tenant's scheduled EVENTs run; a suspended compute is woken for the next one
        # (compute/events.py, control/scheduler.py).
        "event_scheduler": "ON",
    }
    if error_log is None:
        del options["log-error"]
    if os_user:
        # Started as root, the server switches to this user once it has its port.
        options["user"] = os_user
    elif run_as_root:
        # mariadbd refuses to run as root unless told to; Selkie's own user owns the files.
        options["user"] = "root"
    for key, value in (extra or {}).items():
        options[key] = value
    for name, setting in options.items():
        # One option per line: a newline in a value would write an option of its own.
        if any(ord(c) < 32 or ord(c) == 127 for c in f"{name}{setting or ''}"):
            raise ComputeError(f"server option {name!r} holds a control character; not written")
    lines = ["# Rendered by Selkie; changes are overwritten at the next start.", "[mariadbd]"]
    lines += [key if value is None else f"{key}={value}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


# An admin call that gives no timeout of its own: however long a statement may take, a
# server that stopped answering (held by a signal, a hung disk) frees the worker thread
# waiting on it after this long.
ADMIN_TIMEOUT = 120.0


def timeouts(seconds: float | None) -> dict[str, Any]:
    """PyMySQL's connect, read and write timeouts for an admin call bounded by
    ``seconds`` (None: ADMIN_TIMEOUT, the connect 10 s)."""
    if seconds is None:
        whole = round(ADMIN_TIMEOUT)
        return {"connect_timeout": 10, "read_timeout": whole, "write_timeout": whole}
    whole = max(1, round(seconds))  # PyMySQL wants them in whole seconds (>0)
    return {"connect_timeout": whole, "read_timeout": whole, "write_timeout": whole}


class Rows(list[tuple[Any, ...]]):
    """A statement's rows, with its columns' names (``names``)."""

    names: tuple[str, ...] = ()

    def named(self) -> list[dict[str, Any]]:
        return [dict(zip(self.names, row, strict=False)) for row in self]


def run_statements(
    endpoint_id: str, statements: Sequence[str], **connect: Any
) -> list[list[tuple[Any, ...]]]:
    """Run SQL on a compute as its admin (blocking; ``connect`` says how to reach it) and
    return each statement's rows; ComputeError when it cannot be reached or a statement
    fails."""
    try:
        conn = pymysql.connect(**{"autocommit": True, "connect_timeout": 10, **connect})
    except pymysql.MySQLError as exc:
        raise ComputeError(f"cannot reach compute {endpoint_id} as admin: {exc}") from exc
    try:
        results: list[list[tuple[Any, ...]]] = []
        with conn.cursor() as cur:
            for stmt in statements:
                cur.execute(stmt)
                rows = Rows(cur.fetchall())
                rows.names = tuple(d[0] for d in cur.description or ())
                results.append(rows)
        return results
    except pymysql.MySQLError as exc:
        raise ComputeError(f"compute {endpoint_id}: {exc}") from exc
    finally:
        conn.close()


# --- accounts and databases -----------------------------------------------------------------


_HOST_RE = re.compile(r"^(%|[A-Za-z0-9.:_-]{1,255})$")
# Where role accounts may log in from: anywhere, where the proxy's address is not known (a
# pod network); computes on loopback take only this machine's connections.
ANY_HOST = ("%",)
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def quote_user(name: str, host: str = "%") -> str:
    if not _ROLE_RE.match(name):
        raise ValueError(f"unsafe role name {name!r}")
    if not _HOST_RE.match(host):
        raise ValueError(f"unsafe account host {host!r}")
    return f"'{name}'@'{host}'"


def quote_db(name: str) -> str:
    if not _DB_RE.match(name):
        raise ValueError(f"unsafe database name {name!r}")
    return f"`{name}`"


def grant_db_pattern(name: str) -> str:
    """GRANT treats ``_`` and ``%`` in database names as wildcards; escape them."""
    return quote_db(name).replace("_", r"\_")


def check_hash(password_hash: str) -> str:
    if not _HASH_RE.match(password_hash):
        raise ValueError("password hash is not a mysql_native_password hash")
    return password_hash


@dataclass(frozen=True, kw_only=True)
class RoleSpec:
    name: str
    password_hash: str


@dataclass(frozen=True, kw_only=True)
class DatabaseSpec:
    name: str
    owner: str


# The proxy greets a client with its own connection id (given before the compute is known,
# from 2**31 up) and, after logging in, calls this so that CONNECTION_ID() on the compute
# says the same. Setting pseudo_thread_id needs SUPER or BINLOG REPLAY, which no role has,
# so the routine runs as its definer (the account that syncs accounts) and takes only ids of
# the proxy's range: below 2**31 a role could pose as another thread of the compute. With
# binlog_format=ROW the variable changes what CONNECTION_ID() answers and nothing else.
CONNECTION_ID_ROUTINE = "mysql.selkie_connection_id"
CONNECTION_ID_STATEMENTS = (
    f"CREATE OR REPLACE PROCEDURE {CONNECTION_ID_ROUTINE}(id BIGINT UNSIGNED) "
    "SQL SECURITY DEFINER NOT DETERMINISTIC "
    "BEGIN "
    "IF id < 2147483648 OR id > 4294967295 THEN "
    "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'a connection id from the proxy''s range'; "
    "END IF; "
    "SET SESSION pseudo_thread_id = id; "
    "END",
    f"GRANT EXECUTE ON PROCEDURE {CONNECTION_ID_ROUTINE} TO PUBLIC",
)


# What sync_statements needs to know about the compute as it is.
INSPECT_USERS = "SELECT User, Host FROM mysql.user"
INSPECT_DATABASES = "SHOW DATABASES"


def sync_statements(
    *,
    roles: Iterable[RoleSpec],
    databases: Iterable[DatabaseSpec],
    existing_users: Iterable[tuple[str, str]],
    existing_databases: Iterable[str],
    dropped_users: Iterable[str] = (),
    dropped_databases: Iterable[str] = (),
    hosts: Sequence[str] = ANY_HOST,
) -> list[str]:
    """SQL that makes the compute's roles and databases those of the store.

    What the store has is created (and passwords reset), as an account for each of
    ``hosts`` (where the proxy connects from); a role's account at any other host is
    dropped, so a compute reached around the proxy takes no role's password. What the store
    recorded as deleted through the API (``dropped_*``) is dropped. A user or database the
    store does not know is left alone: a store restored from an older backup, or one that
    lost a row, must never make Selkie delete a customer's data. ``existing_users`` are
    (user, host) pairs. Idempotent: running it twice is the same as once.
    """
    roles = list(roles)
    databases = list(databases)
    wanted_users = {r.name for r in roles}
    wanted_dbs = {d.name for d in databases}
    stmts: list[str] = []
    dropped = set(dropped_users) - wanted_users
    for user, host in sorted(set(existing_users)):
        if user in SYSTEM_USERS or not _ROLE_RE.match(user) or not _HOST_RE.match(host):
            continue
        if user in dropped or (user in wanted_users and host not in hosts):
            stmts.append(f"DROP USER IF EXISTS {quote_user(user, host)}")
    for role in roles:
        secret = check_hash(role.password_hash)
        for host in hosts:
            who = quote_user(role.name, host)
            stmts.append(f"CREATE USER IF NOT EXISTS {who} IDENTIFIED BY PASSWORD '{secret}'")
            stmts.append(f"ALTER USER {who} IDENTIFIED BY PASSWORD '{secret}'")
    for db in sorted(
        set(existing_databases) & set(dropped_databases) - wanted_dbs - SYSTEM_DATABASES
    ):
        if _DB_RE.match(db):
            stmts.append(f"DROP DATABASE IF EXISTS {quote_db(db)}")
    for spec in databases:
        stmts.append(f"CREATE DATABASE IF NOT EXISTS {quote_db(spec.name)}")
        if spec.owner in wanted_users:
            for host in hosts:
                stmts.append(
                    f"GRANT ALL PRIVILEGES ON {grant_db_pattern(spec.name)}.* "
                    f"TO {quote_user(spec.owner, host)} WITH GRANT OPTION"
                )
    return stmts
