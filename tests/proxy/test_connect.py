"""The connect steps against a control plane in memory (tests/controlplane.py): the one
password check, the wake's answers to the control plane's errors, and the retry decision,
a pure function tested with plain values."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from selkie.controlplane import Backend, PoolMember
from selkie.errors import ComputeError, Conflict, QuotaExceeded, StateConflict, StoreError
from selkie.mysql import auth
from selkie.mysql.packets import CLEAR_PLUGIN, NATIVE_PLUGIN
from selkie.mysql.wire import ErrorCode
from selkie.proxy.connect import (
    RETRY_FIRST_DELAY,
    RETRY_MAX_DELAY,
    AuthFailures,
    Backoff,
    ConnectConfig,
    Connector,
    Credentials,
    Refused,
    next_try,
)
from selkie.proxy.handshake import Route
from tests.controlplane import FakeControlPlane, stored_hash

EP = "ep-fake-000001"
ROUTE = Route(EP, "owner", False)


def connector(plane: FakeControlPlane, *, wake_timeout: float = 5.0) -> Connector:
    return Connector(
        plane,
        ConnectConfig(domain="selkie.localhost", wake_timeout=wake_timeout, backend_timeout=1),
        failures=AuthFailures(10, 60),
        logins=Counter(),
    )


def native(password: str, scramble: bytes) -> Credentials:
    """The token a client answers ``scramble`` with (SHA1(password) as the store recovers it)."""
    stage1 = auth.verify_cleartext(password.encode(), stored_hash(password))
    assert stage1 is not None
    return Credentials(NATIVE_PLUGIN, auth.native_token(stage1, scramble), scramble)


# --- the retry decision ----------------------------------------------------------------------


def test_next_try_doubles_the_wait_up_to_the_cap() -> None:
    assert next_try(Backoff(until=10.0), now=0.0) == Backoff(10.0, 2 * RETRY_FIRST_DELAY)
    assert next_try(Backoff(until=10.0, delay=0.4), now=1.0) == Backoff(10.0, 0.8)
    assert next_try(Backoff(until=10.0, delay=0.8), now=1.0) == Backoff(10.0, RETRY_MAX_DELAY)
    assert next_try(Backoff(10.0, RETRY_MAX_DELAY), now=1.0) == Backoff(10.0, RETRY_MAX_DELAY)


def test_next_try_gives_up_when_the_wait_would_pass_the_deadline() -> None:
    assert next_try(Backoff(until=10.0, delay=1.0), now=9.0) == Backoff(10.0, RETRY_MAX_DELAY)
    assert next_try(Backoff(until=10.0, delay=1.0), now=9.01) is None
    assert next_try(Backoff(until=10.0, delay=0.05), now=10.0) is None


def test_the_tries_of_one_client_fit_its_seven_seconds() -> None:
    """The waits a client sees when every try fails at once: 50 ms doubling to 1 s, as
    long as they end before the deadline."""
    backoff, now, waits = Backoff(until=7.0), 0.0, []
    while (after := next_try(backoff, now=now)) is not None:
        waits.append(backoff.delay)
        now += backoff.delay
        backoff = after
    assert waits == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert sum(waits) <= 7.0


# --- the one password check ------------------------------------------------------------------


async def test_verify_takes_a_native_token_or_a_cleartext_password() -> None:
    plane = FakeControlPlane()
    access = plane.add_role(EP, "owner", "s3cret")
    conn = connector(plane)
    scramble = auth.new_scramble()
    verified = await conn.verify(ROUTE, native("s3cret", scramble), client_ip="10.0.0.1")
    assert verified is not None and verified[0] is access
    cleartext = Credentials(CLEAR_PLUGIN, b"s3cret")
    assert await conn.verify(ROUTE, cleartext, client_ip="10.0.0.1") == verified
    assert conn.logins == Counter()  # the callers count successes by their plugin
    assert plane.woken == []


async def test_verify_refuses_every_kind_of_wrong_alike_and_counts_it() -> None:
    plane = FakeControlPlane()
    plane.add_role(EP, "owner", "s3cret")
    conn = connector(plane)
    scramble = auth.new_scramble()
    wrongs: list[tuple[Route | None, Credentials | None]] = [
        (ROUTE, native("wrong", scramble)),  # a wrong password
        (Route(EP, "nobody", False), native("s3cret", scramble)),  # an unknown role
        (Route("ep-none-000000", "owner", False), native("s3cret", scramble)),  # endpoint
        (None, Credentials(CLEAR_PLUGIN, b"s3cret")),  # a name that routes nowhere
        (ROUTE, None),  # what the caller cannot take (COM_CHANGE_USER's cleartext)
        (ROUTE, Credentials("caching_sha2_password", b"s3cret")),
    ]
    for target, credentials in wrongs:
        assert await conn.verify(target, credentials, client_ip="10.0.0.1") is None
    assert conn.logins == Counter(failed=len(wrongs))
    # Failures for names that exist count per endpoint and role; the others share one key.
    assert conn.failures.count(("address", EP, "10.0.0.1")) == 3
    assert conn.failures.count(("role", EP, "owner")) == 3
    assert conn.failures.count(("address", "?", "10.0.0.1")) == 3
    assert plane.woken == []


# --- the wake's answers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code", "text"),
    [
        (QuotaExceeded("compute quota reached"), ErrorCode.USER_LIMIT_REACHED, "quota"),
        (StateConflict("endpoint is being deleted"), ErrorCode.NET_READ_INTERRUPTED, "deleted"),
        (Conflict("endpoint is stopped"), ErrorCode.ACCESS_DENIED, "stopped"),
    ],
)
async def test_a_refused_wake_is_answered_at_once(error: Exception, code: int, text: str) -> None:
    plane = FakeControlPlane()
    plane.fail_wakes(EP, error)
    refused = await connector(plane).wake(EP)
    assert isinstance(refused, Refused) and refused.code == code and text in refused.message
    assert plane.woken == [EP]  # never tried again


async def test_a_wake_that_failed_on_the_compute_side_is_tried_again() -> None:
    plane = FakeControlPlane()
    plane.backends[EP] = Backend(endpoint_id=EP, host="127.0.0.1", port=3306)
    plane.fail_wakes(EP, ComputeError("mariadbd died while starting"), StoreError("blinked"))
    assert await connector(plane).wake(EP) == plane.backends[EP]
    assert plane.woken == [EP, EP, EP]


async def test_a_wake_that_keeps_failing_gives_up_at_the_deadline() -> None:
    plane = FakeControlPlane()
    plane.fail_wakes(EP, *(ComputeError("mariadbd died at /var/x") for _ in range(50)))
    conn = connector(plane)
    refused = await conn.wake(EP, until=time.monotonic() + 0.2)
    assert isinstance(refused, Refused) and refused.code == ErrorCode.NET_READ_INTERRUPTED
    assert refused.message.startswith(f"endpoint {EP} could not start: ")
    assert 2 <= len(plane.woken) <= 4  # 50, 100 ms between tries within 200 ms


async def test_a_wake_that_outlasts_the_wake_timeout_is_1159() -> None:
    plane = FakeControlPlane(wake_delay=1.0)
    refused = await connector(plane, wake_timeout=0.05).wake(EP)
    assert isinstance(refused, Refused) and refused.code == ErrorCode.NET_READ_INTERRUPTED
    assert "did not become ready" in refused.message


async def test_a_read_pool_picks_a_running_member() -> None:
    plane = FakeControlPlane()
    plane.read_pools["br-main"] = [
        PoolMember(endpoint_id="ep-ro-1", active=False, failed=False),
        PoolMember(endpoint_id="ep-ro-2", active=True, failed=False),
        PoolMember(endpoint_id="ep-ro-3", active=True, failed=True),
    ]
    chosen = await connector(plane).resolve(Route("", "owner", False, read_pool="br-main"))
    assert chosen.endpoint_id == "ep-ro-2"
    assert plane.woken == []
