"""MySQL wire primitives (names as in the protocol docs: ``int<n>``, ``int<lenenc>``,
``string<NUL>``, ``string<lenenc>``), the capability and status flags, and error codes.

Pure functions over bytes; nothing here touches a socket.
"""

from __future__ import annotations

import struct
from enum import IntEnum, IntFlag

# The server's own databases (never a user's).
SYSTEM_DATABASES = frozenset({"mysql", "information_schema", "performance_schema", "sys"})


class ProtocolError(Exception):
    """A malformed or truncated packet: the connection it came from is closed."""


class PacketTooLarge(ProtocolError):
    """A packet over the reader's limit (nothing past the limit was read into memory)."""

    def __init__(self, limit: int, seq: int) -> None:
        super().__init__(f"packet larger than {limit} bytes")
        self.limit = limit
        self.seq = seq  # the sequence id of the part that went over


class Capability(IntFlag):
    LONG_PASSWORD = 1
    FOUND_ROWS = 1 << 1
    LONG_FLAG = 1 << 2
    CONNECT_WITH_DB = 1 << 3
    NO_SCHEMA = 1 << 4
    COMPRESS = 1 << 5
    ODBC = 1 << 6
    LOCAL_FILES = 1 << 7
    IGNORE_SPACE = 1 << 8
    PROTOCOL_41 = 1 << 9
    INTERACTIVE = 1 << 10
    SSL = 1 << 11
    IGNORE_SIGPIPE = 1 << 12
    TRANSACTIONS = 1 << 13
    RESERVED = 1 << 14
    SECURE_CONNECTION = 1 << 15
    MULTI_STATEMENTS = 1 << 16
    MULTI_RESULTS = 1 << 17
    PS_MULTI_RESULTS = 1 << 18
    PLUGIN_AUTH = 1 << 19
    CONNECT_ATTRS = 1 << 20
    PLUGIN_AUTH_LENENC_CLIENT_DATA = 1 << 21
    CAN_HANDLE_EXPIRED_PASSWORDS = 1 << 22
    SESSION_TRACK = 1 << 23
    DEPRECATE_EOF = 1 << 24
    OPTIONAL_RESULTSET_METADATA = 1 << 25
    ZSTD_COMPRESSION = 1 << 26
    QUERY_ATTRIBUTES = 1 << 27
    MULTI_FACTOR_AUTH = 1 << 28
    CAPABILITY_EXTENSION = 1 << 29
    SSL_VERIFY_SERVER_CERT = 1 << 30
    REMEMBER_OPTIONS = 1 << 31
    # MariaDB's extended capabilities: 4 more bytes in the greeting's and the
    # HandshakeResponse41's filler, read only when the sender left LONG_PASSWORD (which
    # MariaDB calls CLIENT_MYSQL) clear. Kept here above bit 31, as MariaDB does.
    MARIADB_PROGRESS = 1 << 32
    MARIADB_COM_MULTI = 1 << 33
    MARIADB_STMT_BULK_OPERATIONS = 1 << 34
    MARIADB_EXTENDED_METADATA = 1 << 35  # a column's type name and format ("json")
    MARIADB_CACHE_METADATA = 1 << 36
    MARIADB_BULK_UNIT_RESULTS = 1 << 37


# What the proxy offers clients: what MariaDB 10.11 supports, minus compression. It greets
# as a MariaDB server does (LONG_PASSWORD clear) with one extended capability, the extended
# metadata: not progress reports (packets the pooler would take for the statement's error),
# bulk operations (COM_STMT_BULK_EXECUTE, which the pooler does not run) or the metadata
# cache (it changes the shape of COM_STMT_EXECUTE's response).
PROXY_CAPABILITIES = (
    Capability.FOUND_ROWS
    | Capability.LONG_FLAG
    | Capability.CONNECT_WITH_DB
    | Capability.NO_SCHEMA
    | Capability.ODBC
    | Capability.LOCAL_FILES
    | Capability.IGNORE_SPACE
    | Capability.PROTOCOL_41
    | Capability.INTERACTIVE
    | Capability.IGNORE_SIGPIPE
    | Capability.TRANSACTIONS
    | Capability.SECURE_CONNECTION
    | Capability.MULTI_STATEMENTS
    | Capability.MULTI_RESULTS
    | Capability.PS_MULTI_RESULTS
    | Capability.PLUGIN_AUTH
    | Capability.CONNECT_ATTRS
    | Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA
    | Capability.CAN_HANDLE_EXPIRED_PASSWORDS
    | Capability.SESSION_TRACK
    | Capability.DEPRECATE_EOF
    | Capability.MARIADB_EXTENDED_METADATA
)


class ServerStatus(IntFlag):
    IN_TRANS = 1
    AUTOCOMMIT = 2
    MORE_RESULTS_EXISTS = 8
    NO_GOOD_INDEX_USED = 16
    NO_INDEX_USED = 32
    CURSOR_EXISTS = 64
    LAST_ROW_SENT = 128
    DB_DROPPED = 256
    NO_BACKSLASH_ESCAPES = 512
    METADATA_CHANGED = 1024
    QUERY_WAS_SLOW = 2048
    PS_OUT_PARAMS = 4096
    IN_TRANS_READONLY = 8192
    SESSION_STATE_CHANGED = 16384


class Command(IntEnum):
    SLEEP = 0x00
    QUIT = 0x01
    INIT_DB = 0x02
    QUERY = 0x03
    FIELD_LIST = 0x04
    STATISTICS = 0x09
    PROCESS_KILL = 0x0C
    PING = 0x0E
    CHANGE_USER = 0x11
    STMT_PREPARE = 0x16
    STMT_EXECUTE = 0x17
    STMT_SEND_LONG_DATA = 0x18
    STMT_CLOSE = 0x19
    STMT_RESET = 0x1A
    SET_OPTION = 0x1B
    STMT_FETCH = 0x1C
    RESET_CONNECTION = 0x1F


class ErrorCode(IntEnum):
    """Server error codes Selkie sends (the proxy, the binlog server), with their SQLSTATE.
    Never 2xxx (client codes)."""

    ACCESS_DENIED = 1045
    DBACCESS_DENIED = 1044
    HOST_BLOCKED = 1129
    TOO_MANY_CONNECTIONS = 1040
    NET_PACKETS_OUT_OF_ORDER = 1156
    NET_READ_ERROR = 1158
    NET_READ_INTERRUPTED = 1159
    USER_LIMIT_REACHED = 1226
    CONNECTION_KILLED = 1927
    UNKNOWN_COM_ERROR = 1047
    NOT_SUPPORTED_AUTH_MODE = 1251
    NOT_SUPPORTED_YET = 1235
    SERVER_SHUTDOWN = 1053
    NET_PACKET_TOO_LARGE = 1153
    MALFORMED_PACKET = 1835
    HANDSHAKE_ERROR = 1043
    PARSE_ERROR = 1064
    UNKNOWN_SYSTEM_VARIABLE = 1193
    MASTER_FATAL_ERROR_READING_BINLOG = 1236
    UNKNOWN_ERROR = 1105
    NO_SUCH_THREAD = 1094
    DISK_FULL = 1021  # ER_DISK_FULL

    @property
    def sqlstate(self) -> str:
        return _SQLSTATE[self]


_SQLSTATE = {
    ErrorCode.ACCESS_DENIED: "28000",
    ErrorCode.DBACCESS_DENIED: "42000",
    ErrorCode.HOST_BLOCKED: "HY000",
    ErrorCode.TOO_MANY_CONNECTIONS: "08004",
    ErrorCode.NET_PACKETS_OUT_OF_ORDER: "08S01",
    ErrorCode.NET_PACKET_TOO_LARGE: "08S01",
    ErrorCode.MALFORMED_PACKET: "HY000",
    ErrorCode.NET_READ_ERROR: "08S01",
    ErrorCode.NET_READ_INTERRUPTED: "08S01",
    ErrorCode.USER_LIMIT_REACHED: "42000",
    ErrorCode.CONNECTION_KILLED: "70100",
    ErrorCode.UNKNOWN_COM_ERROR: "08S01",
    ErrorCode.NOT_SUPPORTED_AUTH_MODE: "08004",
    ErrorCode.NOT_SUPPORTED_YET: "42000",
    ErrorCode.SERVER_SHUTDOWN: "08S01",
    ErrorCode.HANDSHAKE_ERROR: "08S01",
    ErrorCode.PARSE_ERROR: "42000",
    ErrorCode.UNKNOWN_SYSTEM_VARIABLE: "HY000",
    ErrorCode.MASTER_FATAL_ERROR_READING_BINLOG: "HY000",
    ErrorCode.NO_SUCH_THREAD: "HY000",
    ErrorCode.DISK_FULL: "HY000",
    ErrorCode.UNKNOWN_ERROR: "HY000",
}

MAX_PAYLOAD = 0xFFFFFF


# --- writing --------------------------------------------------------------------------------


def int1(value: int) -> bytes:
    return struct.pack("<B", value)


def int2(value: int) -> bytes:
    return struct.pack("<H", value)


def int3(value: int) -> bytes:
    return struct.pack("<I", value)[:3]


def int4(value: int) -> bytes:
    return struct.pack("<I", value)


def lenenc_int(value: int) -> bytes:
    if value < 251:
        return bytes([value])
    if value < 1 << 16:
        return b"\xfc" + struct.pack("<H", value)
    if value < 1 << 24:
        return b"\xfd" + struct.pack("<I", value)[:3]
    return b"\xfe" + struct.pack("<Q", value)


def lenenc_str(value: bytes) -> bytes:
    return lenenc_int(len(value)) + value


def nul_str(value: bytes) -> bytes:
    return value + b"\0"


# --- reading --------------------------------------------------------------------------------


class Reader:
    """A cursor over one packet's payload; every read past the end is a ProtocolError."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolError("truncated packet")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int1(self) -> int:
        return self._take(1)[0]

    def int2(self) -> int:
        return int(struct.unpack("<H", self._take(2))[0])

    def int3(self) -> int:
        return int.from_bytes(self._take(3), "little")

    def int4(self) -> int:
        return int(struct.unpack("<I", self._take(4))[0])

    def int8(self) -> int:
        return int(struct.unpack("<Q", self._take(8))[0])

    def lenenc_int(self) -> int:
        first = self.int1()
        if first < 251:
            return first
        if first == 0xFC:
            return self.int2()
        if first == 0xFD:
            return self.int3()
        if first == 0xFE:
            return self.int8()
        raise ProtocolError(f"bad length-encoded integer prefix 0x{first:02x}")

    def take(self, n: int) -> bytes:
        return self._take(n)

    def lenenc_str(self) -> bytes:
        return self._take(self.lenenc_int())

    def nul_str(self) -> bytes:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise ProtocolError("unterminated string")
        chunk = self.data[self.pos : end]
        self.pos = end + 1
        return chunk

    def rest(self) -> bytes:
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return chunk
