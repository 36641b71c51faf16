"""The protocol's packets against byte fixtures (sans-io): the greeting, the client's
HandshakeResponse41 as the mariadb CLI sent it, OK/ERR/EOF, AuthSwitchRequest and
COM_CHANGE_USER, and truncated packets as protocol errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from selkie.model import mysql_native_hash
from selkie.mysql import auth
from selkie.mysql.packets import (
    build_auth_switch_request,
    build_change_user,
    build_err,
    build_handshake_response,
    build_handshake_v10,
    build_ok,
    is_eof,
    is_ssl_request,
    parse_auth_switch_request,
    parse_change_user,
    parse_err,
    parse_handshake_response,
    parse_handshake_v10,
    parse_ok,
)
from selkie.mysql.wire import PROXY_CAPABILITIES, Capability, ProtocolError, Reader

SCRAMBLE = b"abcdefghij0123456789"

# The HandshakeResponse41 the mariadb 10.11 CLI sent to our greeting (scramble SCRAMBLE,
# user ep-a-b-123456.owner, password "secret", database shop), captured from the wire.
CLIENT_RESPONSE = bytes.fromhex(
    (Path(__file__).parent / "fixtures" / "mariadb-cli-handshake-response.hex").read_text()
)


def test_handshake_v10_roundtrip() -> None:
    payload = build_handshake_v10(
        server_version="5.5.5-10.11.19-MariaDB-Selkie",
        connection_id=7,
        scramble=SCRAMBLE,
        capabilities=int(PROXY_CAPABILITIES | Capability.SSL),
    )
    assert payload[0] == 10
    parsed = parse_handshake_v10(payload)
    assert parsed.scramble == SCRAMBLE and parsed.connection_id == 7
    assert parsed.auth_plugin == "mysql_native_password"
    assert parsed.capabilities & Capability.SSL
    # A MariaDB server's greeting: LONG_PASSWORD (the "MySQL" bit) clear, and the extended
    # capabilities in the filler, the extended metadata only.
    assert not parsed.capabilities & Capability.LONG_PASSWORD
    assert parsed.capabilities >> 32 == Capability.MARIADB_EXTENDED_METADATA >> 32
    filler = payload.index(SCRAMBLE[8:]) - 10  # 10 bytes before the scramble's second part
    assert payload[filler : filler + 10] == bytes(6) + bytes([8, 0, 0, 0])
    assert not parsed.capabilities & Capability.COMPRESS


def test_mariadb_extended_capabilities_in_the_response() -> None:
    """The 4 bytes at offset 28 of a HandshakeResponse41 are extended capabilities when the
    client left LONG_PASSWORD clear, and filler when it set it (a MySQL client)."""
    mariadb = int(PROXY_CAPABILITIES | Capability.MARIADB_PROGRESS)
    payload = build_handshake_response(
        capabilities=mariadb,
        max_packet_size=1 << 24,
        charset=45,
        user="u",
        auth_response=b"",
        database=None,
    )
    assert payload[28:32] == bytes([9, 0, 0, 0])
    assert parse_handshake_response(payload).capabilities >> 32 == 9
    mysql = bytearray(payload)
    mysql[0] |= Capability.LONG_PASSWORD
    assert parse_handshake_response(bytes(mysql)).capabilities >> 32 == 0
    # The mariadb CLI's answer to a MySQL-style greeting: LONG_PASSWORD set, nothing extended.
    assert parse_handshake_response(CLIENT_RESPONSE).capabilities >> 32 == 0


def test_handshake_response_fixture() -> None:
    r = parse_handshake_response(CLIENT_RESPONSE)
    assert r.user == "ep-a-b-123456.owner" and r.database == "shop"
    assert r.auth_plugin == "mysql_native_password"
    # The client really answered our scramble for the password "secret".
    stage1 = auth.verify_native(r.auth_response, SCRAMBLE, mysql_native_hash("secret"))
    assert stage1 == hashlib.sha1(b"secret").digest()
    assert r.attributes.get("_client_name") == "libmariadb"
    assert not is_ssl_request(CLIENT_RESPONSE)
    ssl_request = int(r.capabilities | Capability.SSL).to_bytes(4, "little") + CLIENT_RESPONSE[4:32]
    assert is_ssl_request(ssl_request)
    rebuilt = build_handshake_response(
        capabilities=r.capabilities,
        max_packet_size=r.max_packet_size,
        charset=r.charset,
        user="owner",
        auth_response=r.auth_response,
        database="shop",
        attributes=r.attributes,
    )
    again = parse_handshake_response(rebuilt)
    assert (again.user, again.database, again.auth_response) == ("owner", "shop", r.auth_response)
    assert again.attributes == r.attributes


@pytest.mark.parametrize("cut", [0, 3, 10, 33, 40, 60])
def test_truncated_packets_are_protocol_errors(cut: int) -> None:
    with pytest.raises(ProtocolError):
        parse_handshake_response(CLIENT_RESPONSE[:cut])
    with pytest.raises(ProtocolError):
        Reader(b"\xfc\x01").lenenc_int()


def test_ok_err_eof() -> None:
    ok = build_ok(affected_rows=300, last_insert_id=70000, status=3, warnings=1)
    assert parse_ok(ok).affected_rows == 300 and parse_ok(ok).last_insert_id == 70000
    err = build_err(1045, "Access denied")
    assert err == b"\xff\x15\x04#28000Access denied"
    assert parse_err(err).sqlstate == "28000"
    with pytest.raises(ValueError):
        build_err(2013, "client codes are never sent")
    assert is_eof(b"\xfe\x00\x00\x02\x00") and not is_eof(b"\xfe" + b"\x00" * 10)


def test_auth_switch_and_change_user() -> None:
    switch = build_auth_switch_request("mysql_native_password", SCRAMBLE)
    assert parse_auth_switch_request(switch) == ("mysql_native_password", SCRAMBLE)
    caps = int(PROXY_CAPABILITIES)
    raw = build_change_user(
        parse_change_user(
            b"\x11bob\x00\x14"
            + bytes(20)
            + b"db\x00\x21\x00mysql_native_password\x00"
            + bytes([0]),
            caps,
        ),
        caps,
    )
    change = parse_change_user(raw, caps)
    assert (change.user, change.database, change.charset) == ("bob", "db", 0x21)
