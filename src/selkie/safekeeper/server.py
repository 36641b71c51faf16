"""The binlog server: the safekeeper serves a timeline's history to real MariaDB replicas
(and ``mariadb-binlog --read-from-remote-server``) over the MySQL replication protocol, as
a MariaDB primary would, whether or not the timeline's compute runs.

A replica logs in with a replication account (``mysql_native_password``; the account
names the one timeline it may read), asks the questions a replica asks before it
registers (:mod:`selkie.safekeeper.statements`), sends COM_REGISTER_SLAVE and then
COM_BINLOG_DUMP, from a GTID position (``@slave_connect_state``) or from a virtual file and
byte position (:mod:`selkie.safekeeper.stream`). The dump (:mod:`selkie.safekeeper.dump`)
sends the history the archive and the safekeeper hold from there, then every transaction
as it becomes durable, with heartbeats in between. A position the history does not hold
gets MariaDB's own ER_MASTER_FATAL_ERROR_READING_BINLOG (1236).

Each connection runs as its own task; a malformed packet closes that connection only.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selkie.archive.binlog import DOMAIN, Gtid
from selkie.archive.layout import TimelineRef
from selkie.compute.mariadb import COMPUTE_SERVER_ID
from selkie.errors import ArchiveError
from selkie.mysql import auth
from selkie.mysql.packets import (
    NATIVE_PLUGIN,
    build_auth_switch_request,
    build_eof,
    build_err,
    build_handshake_v10,
    build_ok,
    build_text_result,
    is_ssl_request,
    parse_handshake_response,
)
from selkie.mysql.stream import PacketStream
from selkie.mysql.wire import Capability, Command, ErrorCode, ProtocolError, Reader
from selkie.safekeeper import statements
from selkie.safekeeper.dump import (
    BINLOG_DUMP_NON_BLOCK,
    BINLOG_SEND_ANNOTATE_ROWS_EVENT,
    Dump,
    DumpRefused,
    DumpRequest,
    HistorySource,
    describe,
)
from selkie.safekeeper.stream import BASENAME, MAX_FILE_BYTES
from selkie.tasks import cancel, spawn

log = logging.getLogger(__name__)

COM_BINLOG_DUMP = 0x12
COM_REGISTER_SLAVE = 0x15
SERVER_VERSION = "10.11.0-MariaDB-selkie"
# What MariaDB 10.x servers put before their version so that old clients accept them; a
# replica strips it.
RPL_VERSION_HACK = "5.5.5-"
# No TLS, no compression, no CLIENT_DEPRECATE_EOF: result sets end in EOF packets.
SERVER_CAPABILITIES = (
    Capability.LONG_PASSWORD
    | Capability.LONG_FLAG
    | Capability.CONNECT_WITH_DB
    | Capability.PROTOCOL_41
    | Capability.TRANSACTIONS
    | Capability.SECURE_CONNECTION
    | Capability.PLUGIN_AUTH
    | Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA
    | Capability.CONNECT_ATTRS
)
LOGIN_LIMIT = 64 << 10
COMMAND_LIMIT = 1 << 20


@dataclass(frozen=True, slots=True)
class Account:
    """A replication account: the timeline it may read, and ``SHA1(SHA1(password))`` (the
    20 bytes ``mysql_native_password`` stores)."""

    ref: TimelineRef
    password_hash: bytes


AccountLookup = Callable[[str], "Account | Awaitable[Account | None] | None"]


class _Sink:
    """Dump events as packets on the connection (``0x00`` + event, consecutive sequence
    ids), written in bulk and drained per transaction."""

    def __init__(self, stream: PacketStream, seq: int) -> None:
        self.stream = stream
        self.seq = seq

    def write(self, event: bytes) -> None:
        self.seq = self.stream.write(self.seq, b"\0" + event)

    async def drain(self) -> None:
        await self.stream.writer.drain()


@dataclass
class _Client:
    id: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    stream: PacketStream
    host: str
    session: statements.Session | None = None
    account: Account | None = None


class BinlogServer:
    """Serves timelines' binlogs to replicas on a unix socket or a TCP port."""

    def __init__(
        self,
        *,
        source: HistorySource,
        accounts: AccountLookup,
        server_version: str = SERVER_VERSION,
        server_id: int = COMPUTE_SERVER_ID,
        login_timeout: float = 10.0,
        max_file_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        self.source = source
        self.accounts = accounts
        self.server_version = server_version
        self.server_id = server_id
        self.login_timeout = login_timeout
        self.max_file_bytes = max_file_bytes
        #: Where it listens once started: ``unix:/path`` or ``host:port``.
        self.address: str | None = None
        self._server: asyncio.Server | None = None
        self._socket_path: Path | None = None
        self._ids = itertools.count(1)
        self._connections: set[asyncio.Task[Any]] = set()
        # The dump of each replica server id (a replica that reconnects replaces its own).
        self._dumps: dict[int, asyncio.Task[Any]] = {}

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, listen: str) -> None:
        """Listen on ``unix:/path`` or ``host:port`` (port 0: any free one; see
        :attr:`address` and :attr:`port`)."""
        if listen.startswith("unix:"):
            path = Path(listen.removeprefix("unix:"))
            # A socket file left by a process that died.
            await asyncio.to_thread(path.unlink, missing_ok=True)
            self._server = await asyncio.start_unix_server(self._accept, path=str(path))
            self._socket_path = path
            self.address = f"unix:{path}"
            return
        host, sep, port = listen.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"listen {listen!r}: use unix:/path or host:port")
        host = host.strip("[]") or "127.0.0.1"
        self._server = await asyncio.start_server(self._accept, host, int(port))
        bound = self._server.sockets[0].getsockname()
        self.address = f"{host}:{bound[1]}"

    @property
    def port(self) -> int | None:
        if self._server is None or self._socket_path is not None:
            return None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and end every connection, dumps included."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            await cancel(task)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None
        if self._socket_path is not None:
            await asyncio.to_thread(self._socket_path.unlink, missing_ok=True)
            self._socket_path = None

    @property
    def dumps(self) -> int:
        """Dumps being served (for metrics and tests)."""
        return len(self._dumps)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn_id = next(self._ids)
        task = spawn(self._serve(conn_id, reader, writer), name=f"binlog-server-{conn_id}")
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    # --- one connection --------------------------------------------------------------------

    async def _serve(
        self, conn_id: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) and peer else "localhost"
        client = _Client(
            conn_id, reader, writer, PacketStream(reader, writer, limit=LOGIN_LIMIT), host
        )
        try:
            if await self._login(client):
                client.stream.limit = COMMAND_LIMIT
                await self._commands(client)
        except ProtocolError as exc:
            log.info("binlog server: connection %d from %s: %s", conn_id, host, exc)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, OSError) as exc:
            log.debug("binlog server: connection %d from %s ended: %r", conn_id, host, exc)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)

    async def _login(self, c: _Client) -> bool:
        scramble = auth.new_scramble()
        greeting = build_handshake_v10(
            server_version=RPL_VERSION_HACK + self.server_version,
            connection_id=c.id,
            scramble=scramble,
            capabilities=SERVER_CAPABILITIES,
        )
        await c.stream.send(0, greeting)
        seq, payload = await asyncio.wait_for(c.stream.read(), self.login_timeout)
        seq += 1
        try:
            if is_ssl_request(payload):
                raise ProtocolError("the client asked for TLS, which this server does not offer")
            response = parse_handshake_response(payload)
        except ProtocolError:
            await c.stream.send(seq, build_err(ErrorCode.HANDSHAKE_ERROR, "Bad handshake"))
            raise
        token = response.auth_response
        plugin = response.auth_plugin or NATIVE_PLUGIN
        if response.capabilities & Capability.PLUGIN_AUTH and plugin != NATIVE_PLUGIN:
            seq = await c.stream.send(seq, build_auth_switch_request(NATIVE_PLUGIN, scramble))
            seq, token = await asyncio.wait_for(c.stream.read(), self.login_timeout)
            seq += 1
        account = await self._account(response.user)
        if account is None or not _password_matches(account, token, scramble):
            log.info("binlog server: access denied for %r from %s", response.user, c.host)
            using = "YES" if token else "NO"
            message = (
                f"Access denied for user '{response.user}'@'{c.host}' (using password: {using})"
            )
            await c.stream.send(seq, build_err(ErrorCode.ACCESS_DENIED, message))
            return False
        c.account = account
        c.session = statements.Session(
            user=response.user,
            host=c.host,
            connection_id=c.id,
            system=await self._variables(account),
        )
        await c.stream.send(seq, build_ok())
        return True

    async def _account(self, user: str) -> Account | None:
        found = self.accounts(user)
        if inspect.isawaitable(found):
            found = await found
        return found

    async def _variables(self, account: Account) -> dict[str, statements.Value]:
        """The system variables a replica may ask about, as a MariaDB primary has them."""
        try:
            end = (await (await self.source.reader(account.ref)).extent()).end
        except ArchiveError:
            end = 0
        position = f"{DOMAIN}-{COMPUTE_SERVER_ID}-{end}" if end else ""
        return {
            "server_id": self.server_id,
            "gtid_domain_id": DOMAIN,
            "binlog_checksum": "CRC32",
            "binlog_format": "ROW",
            "binlog_row_image": "FULL",
            "log_bin": "ON",
            "log_bin_basename": BASENAME,
            "gtid_strict_mode": "ON",
            "gtid_binlog_pos": position,
            "gtid_binlog_state": position,
            "gtid_current_pos": position,
            "version": self.server_version,
            "version_comment": "Selkie binlog server",
            "hostname": socket.gethostname(),
            "port": self.port or 0,
            "read_only": "ON",
            "max_allowed_packet": 1 << 30,
            "net_read_timeout": 30,
            "net_write_timeout": 60,
            "wait_timeout": 28800,
            "interactive_timeout": 28800,
            "autocommit": "ON",
            "sql_mode": "",
            "time_zone": "SYSTEM",
            "system_time_zone": "UTC",
            "character_set_server": "utf8mb4",
            "collation_server": "utf8mb4_general_ci",
            "lower_case_table_names": 0,
        }

    async def _commands(self, c: _Client) -> None:
        assert c.session is not None
        while True:
            seq, payload = await c.stream.read()
            if not payload:
                raise ProtocolError("empty command packet")
            command, body = payload[0], payload[1:]
            seq += 1
            if command == Command.QUIT:
                return
            if command in (Command.PING, Command.INIT_DB, Command.RESET_CONNECTION):
                await c.stream.send(seq, build_ok())
            elif command == Command.QUERY:
                sql = body.decode(errors="replace")
                log.debug("binlog server: connection %d: %s", c.id, sql)
                await self._reply(c, seq, statements.run(sql, c.session))
            elif command == COM_REGISTER_SLAVE:
                Reader(body).int4()  # the replica's server id (its dump names it again)
                await c.stream.send(seq, build_ok())
            elif command == COM_BINLOG_DUMP:
                await self._dump(c, seq, body)
                return  # as in MariaDB, the connection ends with its dump
            else:
                message = f"Unknown command {command} (this server serves the binlog only)"
                await c.stream.send(seq, build_err(ErrorCode.UNKNOWN_COM_ERROR, message))

    async def _reply(self, c: _Client, seq: int, reply: statements.Reply) -> None:
        if isinstance(reply, statements.Done):
            await c.stream.send(seq, build_ok())
        elif isinstance(reply, statements.Refused):
            await c.stream.send(seq, build_err(reply.code, reply.message))
        else:
            row = reply.rows[0] if reply.rows else [None] * len(reply.columns)
            columns = [(n, isinstance(v, int)) for n, v in zip(reply.columns, row, strict=True)]
            rows = [[None if v is None else str(v).encode() for v in r] for r in reply.rows]
            for payload in build_text_result(columns, rows):
                seq = c.stream.write(seq, payload)
            await c.stream.writer.drain()

    # --- the dump --------------------------------------------------------------------------

    async def _dump(self, c: _Client, seq: int, body: bytes) -> None:
        assert c.account is not None and c.session is not None
        r = Reader(body)
        position, flags, server_id = r.int4(), r.int2(), r.int4()
        name = r.rest().decode(errors="replace")
        sink = _Sink(c.stream, seq)
        me = asyncio.current_task()
        assert me is not None
        if server_id:
            await cancel(self._dumps.get(server_id))
            self._dumps[server_id] = me
        # A dump only writes; the watcher notices the replica leaving while it is idle.
        watcher = spawn(_watch(c.reader, me), name=f"binlog-server-{c.id}-watch")
        try:
            request = _request(c.session, position, flags, server_id, name)
            log.info(
                "binlog server: %s@%s (server id %d) dumps timeline %s from %s",
                c.session.user,
                c.host,
                server_id,
                c.account.ref.timeline_id,
                f"GTID 0-1-{request.gtid_after}"
                if request.gtid_after is not None
                else f"{name}:{position}",
            )
            reader = await self.source.reader(c.account.ref)
            dump = Dump(
                reader, request, sink, server_id=self.server_id, max_file_bytes=self.max_file_bytes
            )
            try:
                await dump.run()
            except ArchiveError as exc:
                raise describe(exc) from exc
            await c.stream.send(sink.seq, build_eof())
        except DumpRefused as exc:
            log.info("binlog server: connection %d: %s", c.id, exc.message)
            code = (
                ErrorCode.MASTER_FATAL_ERROR_READING_BINLOG
                if exc.fatal
                else ErrorCode.UNKNOWN_ERROR
            )
            await c.stream.send(sink.seq, build_err(code, exc.message))
        finally:
            await cancel(watcher)
            if self._dumps.get(server_id) is me:
                del self._dumps[server_id]


async def _watch(reader: asyncio.StreamReader, dump: asyncio.Task[Any]) -> None:
    """Read (and drop) what the replica sends during its dump; cancel the dump when it
    closes the connection."""
    with contextlib.suppress(ConnectionError, OSError):
        while await reader.read(1 << 16):
            pass
    dump.cancel()


def _password_matches(account: Account, token: bytes, scramble: bytes) -> bool:
    stored = "*" + account.password_hash.hex().upper()
    return auth.verify_native(token, scramble, stored) is not None


def _int(value: statements.Value, default: int = 0) -> int:
    try:
        return int(value) if value is not None and value != "" else default
    except ValueError:
        return default


def _domain_position(state: statements.Value, what: str) -> int:
    """The sequence number of the domain-0 GTID in a replica's GTID list (0: none, the
    very beginning). DumpRefused for one this history cannot hold."""
    for text in str(state or "").split(","):
        if not text.strip():
            continue
        try:
            gtid = Gtid.parse(text)
        except ValueError as exc:
            raise DumpRefused(f"{what} {state!r}: {exc}") from exc
        if gtid.domain != DOMAIN:
            continue  # domains this history never writes
        if gtid.server_id != COMPUTE_SERVER_ID and gtid.seq:
            raise DumpRefused(
                f"Error: connecting slave requested to start from GTID {gtid}, which is not "
                f"in the master's binlog (its transactions are {DOMAIN}-{COMPUTE_SERVER_ID}-N)"
            )
        return gtid.seq
    return 0


def _request(
    session: statements.Session, position: int, flags: int, server_id: int, name: str
) -> DumpRequest:
    user_vars = session.user_vars
    checksum = user_vars.get("master_binlog_checksum")
    gtid_after = None
    if "slave_connect_state" in user_vars:
        gtid_after = _domain_position(user_vars["slave_connect_state"], "@slave_connect_state")
    until = None
    if "slave_until_gtid" in user_vars:
        until = _domain_position(user_vars["slave_until_gtid"], "@slave_until_gtid")
    return DumpRequest(
        gtid_after=gtid_after,
        file=name,
        position=position,
        # A dump as server 0 is a one-off read (MariaDB stops at the end for it too).
        non_blocking=bool(flags & BINLOG_DUMP_NON_BLOCK) or server_id == 0,
        annotate=bool(flags & BINLOG_SEND_ANNOTATE_ROWS_EVENT),
        heartbeat=_int(user_vars.get("master_heartbeat_period")) / 1e9,
        checksum_aware="master_binlog_checksum" in user_vars,
        rotate_checksum=str(checksum or "").upper() == "CRC32",
        capability=_int(user_vars.get("mariadb_slave_capability")),
        until=until,
    )


__all__ = ["Account", "AccountLookup", "BinlogServer", "HistorySource"]
