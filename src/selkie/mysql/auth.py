"""``mysql_native_password`` arithmetic: for both legs of the proxy, the safekeeper's logins
and its binlog server.

The store keeps ``SHA1(SHA1(password))`` (MariaDB's ``*HEX``). A client answers the proxy's
scramble with ``token = SHA1(password) XOR SHA1(scramble + SHA1(SHA1(password)))``; from a
correct token the proxy recovers ``SHA1(password)`` and with it answers the compute's own
scramble. ``SHA1(password)`` lives only in memory, for the life of the session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

_SCRAMBLE_ALPHABET = bytes(range(33, 127))


def new_scramble() -> bytes:
    """20 printable bytes (some clients treat the scramble as a C string)."""
    return bytes(secrets.choice(_SCRAMBLE_ALPHABET) for _ in range(20))


def _sha1(*parts: bytes) -> bytes:
    h = hashlib.sha1()  # noqa: S324 - the protocol's own hash
    for part in parts:
        h.update(part)
    return h.digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def stored_hash_bytes(stored: str) -> bytes:
    """``*HEX`` → the 20 raw bytes of SHA1(SHA1(password))."""
    if len(stored) != 41 or not stored.startswith("*"):
        raise ValueError("not a mysql_native_password hash")
    return bytes.fromhex(stored[1:])


def native_token(stage1: bytes, scramble: bytes) -> bytes:
    """The answer to ``scramble`` from ``stage1 = SHA1(password)``."""
    return _xor(stage1, _sha1(scramble, _sha1(stage1)))


def verify_native(token: bytes, scramble: bytes, stored: str) -> bytes | None:
    """``SHA1(password)`` if ``token`` answers ``scramble`` for the stored hash, else None."""
    try:
        stage2 = stored_hash_bytes(stored)
    except ValueError:
        return None
    if len(token) != 20:
        return None
    stage1 = _xor(token, _sha1(scramble, stage2))
    return stage1 if hmac.compare_digest(_sha1(stage1), stage2) else None


def verify_cleartext(password: bytes, stored: str) -> bytes | None:
    """For ``mysql_clear_password`` (over TLS only): ``SHA1(password)`` if it matches."""
    stage1 = _sha1(password.rstrip(b"\0"))
    try:
        return stage1 if hmac.compare_digest(_sha1(stage1), stored_hash_bytes(stored)) else None
    except ValueError:
        return None
