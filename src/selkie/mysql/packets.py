"""Parse and build the MySQL protocol packets the proxy speaks (payloads only; framing is in
:mod:`selkie.mysql.stream`). Pure functions, tested with byte fixtures."""

from __future__ import annotations

from dataclasses import dataclass, field

from selkie.mysql.wire import (
    Capability,
    ErrorCode,
    ProtocolError,
    Reader,
    ServerStatus,
    int1,
    int2,
    int4,
    lenenc_int,
    lenenc_str,
    nul_str,
)

NATIVE_PLUGIN = "mysql_native_password"
CLEAR_PLUGIN = "mysql_clear_password"
CACHING_SHA2_PLUGIN = "caching_sha2_password"
ED25519_PLUGIN = "client_ed25519"
UTF8MB4_GENERAL_CI = 45

OK_HEADER = 0x00
EOF_HEADER = 0xFE
ERR_HEADER = 0xFF
LOCAL_INFILE_HEADER = 0xFB


@dataclass(frozen=True, kw_only=True)
class HandshakeV10:
    server_version: str
    connection_id: int
    scramble: bytes
    capabilities: int
    charset: int
    status: int
    auth_plugin: str


@dataclass(frozen=True, kw_only=True)
class HandshakeResponse41:
    capabilities: int
    max_packet_size: int
    charset: int
    user: str
    auth_response: bytes
    database: str | None
    auth_plugin: str | None
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ChangeUser:
    user: str
    auth_response: bytes
    database: str | None
    charset: int | None
    auth_plugin: str | None
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Ok:
    affected_rows: int
    last_insert_id: int
    status: int
    warnings: int


@dataclass(frozen=True, kw_only=True)
class Err:
    code: int
    sqlstate: str
    message: str


# --- handshake ------------------------------------------------------------------------------


def _extended_caps(caps: int) -> int:
    """The MariaDB extended capabilities of ``caps`` as the greeting and the response carry
    them (bits 32 and up, shifted down); none when LONG_PASSWORD says the side is MySQL."""
    return 0 if caps & Capability.LONG_PASSWORD else (caps >> 32) & 0xFFFFFFFF


def _read_extended_caps(caps: int, extended: int) -> int:
    """The extended capabilities read from a packet's filler, in place above bit 31; the
    filler means nothing when the sender set LONG_PASSWORD (MariaDB's CLIENT_MYSQL)."""
    return 0 if caps & Capability.LONG_PASSWORD else extended << 32


def build_handshake_v10(
    *,
    server_version: str,
    connection_id: int,
    scramble: bytes,
    capabilities: int,
    charset: int = UTF8MB4_GENERAL_CI,
    status: int = ServerStatus.AUTOCOMMIT,
    auth_plugin: str = NATIVE_PLUGIN,
) -> bytes:
    if len(scramble) != 20:
        raise ValueError("scramble must be 20 bytes")
    return b"".join(
        [
            int1(10),
            nul_str(server_version.encode()),
            int4(connection_id),
            scramble[:8],
            b"\0",
            int2(capabilities & 0xFFFF),
            int1(charset),
            int2(status),
            int2((capabilities >> 16) & 0xFFFF),
            int1(len(scramble) + 1),
            b"\0" * 6,
            int4(_extended_caps(capabilities)),
            scramble[8:],
            b"\0",
            nul_str(auth_plugin.encode()),
        ]
    )


def parse_handshake_v10(payload: bytes) -> HandshakeV10:
    r = Reader(payload)
    if r.int1() != 10:
        if payload[:1] == bytes([ERR_HEADER]):
            err = parse_err(payload, Capability.PROTOCOL_41)
            raise ProtocolError(f"server refused the connection: {err.code} {err.message}")
        raise ProtocolError("not a Handshake v10")
    version = r.nul_str().decode(errors="replace")
    conn_id = r.int4()
    part1 = r.take(8)
    r.int1()
    caps = r.int2()
    charset = r.int1()
    status = r.int2()
    caps |= r.int2() << 16
    auth_len = r.int1()
    r.take(6)
    caps |= _read_extended_caps(caps, r.int4())
    part2_len = max(13, auth_len - 8)
    part2 = r.take(part2_len)
    plugin = r.nul_str().decode() if caps & Capability.PLUGIN_AUTH and r.remaining() else ""
    scramble = (part1 + part2).rstrip(b"\0")[:20]
    return HandshakeV10(
        server_version=version,
        connection_id=conn_id,
        scramble=scramble,
        capabilities=caps,
        charset=charset,
        status=status,
        auth_plugin=plugin or NATIVE_PLUGIN,
    )


def is_ssl_request(payload: bytes) -> bool:
    """An SSLRequest is the first 32 bytes of a HandshakeResponse41 with CLIENT_SSL set."""
    if len(payload) != 32:
        return False
    caps = int.from_bytes(payload[:4], "little")
    return bool(caps & Capability.SSL)


def _parse_attrs(raw: bytes) -> dict[str, str]:
    r = Reader(raw)
    attrs: dict[str, str] = {}
    while r.remaining():
        key = r.lenenc_str().decode(errors="replace")
        attrs[key] = r.lenenc_str().decode(errors="replace")
    return attrs


def _build_attrs(attrs: dict[str, str]) -> bytes:
    body = b"".join(lenenc_str(k.encode()) + lenenc_str(v.encode()) for k, v in attrs.items())
    return lenenc_str(body)


def parse_handshake_response(payload: bytes) -> HandshakeResponse41:
    r = Reader(payload)
    caps = r.int4()
    if not caps & Capability.PROTOCOL_41:
        raise ProtocolError("clients older than protocol 4.1 are not supported")
    max_packet = r.int4()
    charset = r.int1()
    r.take(19)
    caps |= _read_extended_caps(caps, r.int4())
    user = r.nul_str().decode(errors="replace")
    if caps & Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA:
        auth = r.lenenc_str()
    elif caps & Capability.SECURE_CONNECTION:
        auth = r.take(r.int1())
    else:
        auth = r.nul_str()
    database = None
    if caps & Capability.CONNECT_WITH_DB and r.remaining():
        database = r.nul_str().decode(errors="replace") or None
    plugin = None
    if caps & Capability.PLUGIN_AUTH and r.remaining():
        plugin = r.nul_str().decode(errors="replace") or None
    attrs: dict[str, str] = {}
    if caps & Capability.CONNECT_ATTRS and r.remaining():
        attrs = _parse_attrs(r.lenenc_str())
    return HandshakeResponse41(
        capabilities=caps,
        max_packet_size=max_packet,
        charset=charset,
        user=user,
        auth_response=auth,
        database=database,
        auth_plugin=plugin,
        attributes=attrs,
    )


def build_handshake_response(
    *,
    capabilities: int,
    max_packet_size: int,
    charset: int,
    user: str,
    auth_response: bytes,
    database: str | None,
    auth_plugin: str = NATIVE_PLUGIN,
    attributes: dict[str, str] | None = None,
) -> bytes:
    caps = capabilities | Capability.PLUGIN_AUTH | Capability.SECURE_CONNECTION
    caps |= Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA
    if database:
        caps |= Capability.CONNECT_WITH_DB
    else:
        caps &= ~Capability.CONNECT_WITH_DB
    if attributes:
        caps |= Capability.CONNECT_ATTRS
    else:
        caps &= ~Capability.CONNECT_ATTRS
    parts = [
        int4(caps & 0xFFFFFFFF),
        int4(max_packet_size),
        int1(charset),
        b"\0" * 19,
        int4(_extended_caps(caps)),
        nul_str(user.encode()),
        lenenc_str(auth_response),
    ]
    if database:
        parts.append(nul_str(database.encode()))
    parts.append(nul_str(auth_plugin.encode()))
    if attributes:
        parts.append(_build_attrs(attributes))
    return b"".join(parts)


def build_auth_switch_request(plugin: str, data: bytes) -> bytes:
    return bytes([EOF_HEADER]) + nul_str(plugin.encode()) + data + b"\0"


def parse_auth_switch_request(payload: bytes) -> tuple[str, bytes]:
    r = Reader(payload)
    if r.int1() != EOF_HEADER:
        raise ProtocolError("not an AuthSwitchRequest")
    plugin = r.nul_str().decode()
    return plugin, r.rest().rstrip(b"\0")


# --- COM_CHANGE_USER ------------------------------------------------------------------------


def parse_change_user(payload: bytes, client_caps: int) -> ChangeUser:
    r = Reader(payload)
    if r.int1() != 0x11:
        raise ProtocolError("not COM_CHANGE_USER")
    user = r.nul_str().decode(errors="replace")
    auth = r.take(r.int1()) if client_caps & Capability.SECURE_CONNECTION else r.nul_str()
    database = r.nul_str().decode(errors="replace") or None
    charset = None
    plugin = None
    attrs: dict[str, str] = {}
    if r.remaining() >= 2:
        charset = r.int2()
    if client_caps & Capability.PLUGIN_AUTH and r.remaining():
        plugin = r.nul_str().decode(errors="replace") or None
    if client_caps & Capability.CONNECT_ATTRS and r.remaining():
        attrs = _parse_attrs(r.lenenc_str())
    return ChangeUser(
        user=user,
        auth_response=auth,
        database=database,
        charset=charset,
        auth_plugin=plugin,
        attributes=attrs,
    )


def build_change_user(change: ChangeUser, client_caps: int) -> bytes:
    parts = [int1(0x11), nul_str(change.user.encode())]
    if client_caps & Capability.SECURE_CONNECTION:
        parts.append(int1(len(change.auth_response)) + change.auth_response)
    else:
        parts.append(nul_str(change.auth_response))
    parts.append(nul_str((change.database or "").encode()))
    parts.append(int2(change.charset if change.charset is not None else UTF8MB4_GENERAL_CI))
    if client_caps & Capability.PLUGIN_AUTH:
        parts.append(nul_str((change.auth_plugin or NATIVE_PLUGIN).encode()))
    if client_caps & Capability.CONNECT_ATTRS:
        parts.append(_build_attrs(change.attributes))
    return b"".join(parts)


# --- OK / ERR / EOF -------------------------------------------------------------------------


def build_ok(
    *,
    affected_rows: int = 0,
    last_insert_id: int = 0,
    status: int = ServerStatus.AUTOCOMMIT,
    warnings: int = 0,
) -> bytes:
    return (
        bytes([OK_HEADER])
        + lenenc_int(affected_rows)
        + lenenc_int(last_insert_id)
        + int2(status)
        + int2(warnings)
    )


def parse_ok(payload: bytes) -> Ok:
    r = Reader(payload)
    header = r.int1()
    if header not in (OK_HEADER, EOF_HEADER):
        raise ProtocolError("not an OK packet")
    return Ok(
        affected_rows=r.lenenc_int(),
        last_insert_id=r.lenenc_int(),
        status=r.int2(),
        warnings=r.int2(),
    )


def build_err(code: int | ErrorCode, message: str, sqlstate: str | None = None) -> bytes:
    if sqlstate is None:
        sqlstate = ErrorCode(code).sqlstate if code in ErrorCode._value2member_map_ else "HY000"
    if not 1000 <= int(code) < 2000 and int(code) < 3000:
        raise ValueError(f"{code} is not a server error code")
    return bytes([ERR_HEADER]) + int2(int(code)) + b"#" + sqlstate.encode()[:5] + message.encode()


def parse_err(payload: bytes, caps: int = Capability.PROTOCOL_41) -> Err:
    r = Reader(payload)
    if r.int1() != ERR_HEADER:
        raise ProtocolError("not an ERR packet")
    code = r.int2()
    sqlstate = "HY000"
    if caps & Capability.PROTOCOL_41 and r.remaining() and payload[r.pos : r.pos + 1] == b"#":
        r.int1()
        sqlstate = r.take(5).decode(errors="replace")
    return Err(code=code, sqlstate=sqlstate, message=r.rest().decode(errors="replace"))


def is_ok(payload: bytes) -> bool:
    return payload[:1] == bytes([OK_HEADER])


def is_err(payload: bytes) -> bool:
    return payload[:1] == bytes([ERR_HEADER])


def is_eof(payload: bytes) -> bool:
    return payload[:1] == bytes([EOF_HEADER]) and len(payload) < 9


# --- text result sets -----------------------------------------------------------------------

# Column types (ColumnDefinition41 ``type``) a text result set of ours uses.
MYSQL_TYPE_LONGLONG = 0x08
MYSQL_TYPE_VAR_STRING = 0xFD
BINARY_CHARSET = 63
NOT_NULL_FLAG = 0x0001
BINARY_FLAG = 0x0080


def build_eof(*, status: int = ServerStatus.AUTOCOMMIT, warnings: int = 0) -> bytes:
    """An EOF_Packet (clients that did not ask for CLIENT_DEPRECATE_EOF expect them)."""
    return bytes([EOF_HEADER]) + int2(warnings) + int2(status)


def build_column_definition(name: str, *, numeric: bool = False, length: int = 255) -> bytes:
    """A ColumnDefinition41 of a computed column (no table): a BIGINT or a VARCHAR."""
    return b"".join(
        [
            lenenc_str(b"def"),
            lenenc_str(b""),  # schema
            lenenc_str(b""),  # table
            lenenc_str(b""),  # org_table
            lenenc_str(name.encode()),
            lenenc_str(b""),  # org_name
            lenenc_int(0x0C),
            int2(BINARY_CHARSET if numeric else UTF8MB4_GENERAL_CI),
            int4(21 if numeric else length * 4),
            int1(MYSQL_TYPE_LONGLONG if numeric else MYSQL_TYPE_VAR_STRING),
            int2(NOT_NULL_FLAG | BINARY_FLAG if numeric else 0),
            int1(0),  # decimals
            b"\0\0",
        ]
    )


def build_text_row(values: list[bytes | None]) -> bytes:
    """A ProtocolText::ResultsetRow: each value a string<lenenc>, NULL as 0xFB."""
    return b"".join(b"\xfb" if v is None else lenenc_str(v) for v in values)


def build_text_result(
    columns: list[tuple[str, bool]], rows: list[list[bytes | None]]
) -> list[bytes]:
    """The payloads of a whole text result set (column count, definitions, EOF, rows, EOF);
    ``columns`` are (name, numeric) pairs."""
    out = [lenenc_int(len(columns))]
    out.extend(build_column_definition(name, numeric=numeric) for name, numeric in columns)
    out.append(build_eof())
    out.extend(build_text_row(row) for row in rows)
    out.append(build_eof())
    return out
