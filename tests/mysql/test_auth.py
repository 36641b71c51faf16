"""The native-password arithmetic, checked against MariaDB's own PASSWORD()."""

from __future__ import annotations

import hashlib

from selkie.model import mysql_native_hash
from selkie.mysql import auth

SCRAMBLE = b"abcdefghij0123456789"


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
