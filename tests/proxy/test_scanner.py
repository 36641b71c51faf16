"""The relays' command scanner, fed bytes without any socket: commands found however the
stream is cut, COM_CHANGE_USER held for its rewrite, continuations of 16 MiB packets never
taken for commands, and the fast path agreeing with the general one."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from selkie.mysql.wire import MAX_PAYLOAD
from selkie.proxy.relay import CommandScanner, HeldChangeUser


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
