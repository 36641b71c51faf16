"""The sans-io protocol layer against byte fixtures: packets, framing, the command scanner,
and the native-password arithmetic (checked against MariaDB's own PASSWORD())."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
from selkie.mysql.stream import frame
from selkie.mysql.wire import MAX_PAYLOAD, PROXY_CAPABILITIES, Capability, ProtocolError, Reader
from selkie.proxy.relay import CommandScanner, HeldChangeUser

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


def test_native_password_matches_mariadb() -> None:
    # SELECT PASSWORD('secret') in MariaDB 10.11:
    assert mysql_native_hash("secret") == "*14E65567ABDB5135D0CFD9A70B3032C179A49EE7"
    stage1 = hashlib.sha1(b"secret").digest()
    token = auth.native_token(stage1, SCRAMBLE)
    assert auth.verify_native(token, SCRAMBLE, mysql_native_hash("secret")) == stage1
    assert auth.verify_native(token, SCRAMBLE, mysql_native_hash("other")) is None
    assert auth.verify_native(token[:19], SCRAMBLE, mysql_native_hash("secret")) is None
    assert auth.verify_cleartext(b"secret", mysql_native_hash("secret")) == stage1
    assert all(33 <= b < 127 for b in auth.new_scramble())


def test_framing_splits_at_16_mib() -> None:
    payload = b"x" * (MAX_PAYLOAD + 10)
    data, nxt = frame(3, payload)
    assert data[:4] == b"\xff\xff\xff\x03" and nxt == 5
    assert data[4 + MAX_PAYLOAD : 8 + MAX_PAYLOAD] == b"\x0a\x00\x00\x04"
    exact, nxt = frame(0, b"y" * MAX_PAYLOAD)
    assert exact[-4:] == b"\x00\x00\x00\x01" and nxt == 2  # an empty packet ends it


def packet(seq: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload


def test_scanner_finds_commands_in_any_chunking() -> None:
    stream = packet(0, b"\x03SELECT 1") + packet(0, b"\x0e") + packet(2, b"data after infile")
    for size in (1, 2, 3, 5, 7, len(stream)):
        scanner = CommandScanner()
        out, commands = b"", []
        for i in range(0, len(stream), size):
            segments, cmds = scanner.feed(stream[i : i + size])
            out += b"".join(s for s in segments if isinstance(s, bytes))
            commands += cmds
        assert out == stream and commands == [0x03, 0x0E], size


def test_scanner_holds_change_user_and_ignores_continuations() -> None:
    change = packet(0, b"\x11bob\x00")
    big_first = b"\xff\xff\xff\x00" + b"\x03" + b"a" * (MAX_PAYLOAD - 1)
    continuation = packet(1, b"\x11not-a-command")
    scanner = CommandScanner()
    segments, commands = scanner.feed(packet(0, b"\x03x") + change + big_first + continuation)
    assert commands == [0x03, 0x11, 0x03]
    assert segments[0] == packet(0, b"\x03x")
    assert segments[1] == HeldChangeUser(b"\x11bob\x00")
    assert b"".join(s for s in segments[2:] if isinstance(s, bytes)) == big_first + continuation


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 255),
            st.sampled_from([b"", b"\x03SELECT 1", b"\x0e", b"\x11bob\x00", b"\x16x", b"\x01"]),
        ),
        max_size=12,
    ),
    st.lists(st.integers(1, 40), min_size=1, max_size=8),
)
def test_scanner_fast_path_agrees_with_the_general_one(
    packets: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    # Whole packets take the fast path, pieces the general one: both must find the same
    # commands and forward the same bytes, however the stream is cut.
    stream = b"".join(packet(seq, payload) for seq, payload in packets)
    whole = [packet(seq, payload) for seq, payload in packets]
    pieces, i, k = [], 0, 0
    while i < len(stream):
        pieces.append(stream[i : i + cuts[k % len(cuts)]])
        i += cuts[k % len(cuts)]
        k += 1

    def run(chunks: list[bytes]) -> tuple[bytes, list[bytes], list[int]]:
        scanner = CommandScanner()
        out, held, commands = b"", [], []
        for chunk in chunks:
            segments, cmds = scanner.feed(chunk)
            for s in segments:
                if isinstance(s, HeldChangeUser):
                    held.append(s.payload)
                else:
                    out += s
            commands += cmds
        return out, held, commands

    reference = CommandScanner()
    expected: tuple[bytes, list[bytes], list[int]] = (b"", [], [])
    for chunk in whole:
        segments, cmds = reference._feed(chunk)
        for s in segments:
            if isinstance(s, HeldChangeUser):
                expected[1].append(s.payload)
            else:
                expected = (expected[0] + s, expected[1], expected[2])
        expected[2].extend(cmds)
    assert run(whole) == expected
    assert run(pieces) == expected


def test_routes_name_an_endpoint_or_a_branch_read_pool() -> None:
    from selkie.proxy.handshake import Route, route

    assert route("ep-a-1.owner", None, "x.io") == Route("ep-a-1", "owner", False)
    assert route("ep-a-1-pooler.owner", None, "x.io") == Route("ep-a-1", "owner", True)
    assert route("br-b-2-ro.owner", None, "x.io") == Route("", "owner", False, read_pool="br-b-2")
    assert route("br-b-2-ro-pooler.owner", None, "x.io") == Route(
        "", "owner", True, read_pool="br-b-2"
    )
    assert route("owner", "br-b-2-ro.x.io", "x.io") == Route("", "owner", False, read_pool="br-b-2")
    # A branch is reached through its read pool only; "-ro" alone names nothing.
    assert route("br-b-2.owner", None, "x.io") is None
    assert route("br-ro.owner", None, "x.io") is None
    assert route("owner", None, "x.io") is None
