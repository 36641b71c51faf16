"""From a client's login to a compute connection: authenticate, wake, dial.

Each step answers with a value, never by raising: :class:`Authenticated` or
:class:`Connected` to go on, :class:`Refused` (a MySQL error code and message for the
client) to stop. The order is the point: the password is checked against the stored hash
before anything wakes, so a wrong password or an unknown endpoint never starts a compute.
The relay, the pooler and any other front end (SQL over HTTP) dial through the same steps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from selkie.controlplane import Access, Backend, ControlPlane
from selkie.errors import (
    ComputeError,
    Conflict,
    DiskFull,
    NotFound,
    QuotaExceeded,
    SelkieError,
    StateConflict,
    StoreError,
    public_message,
)
from selkie.mysql import auth
from selkie.mysql.packets import (
    CLEAR_PLUGIN,
    NATIVE_PLUGIN,
    HandshakeResponse41,
    build_err,
    parse_err,
)
from selkie.mysql.wire import ErrorCode, ProtocolError
from selkie.proxy.backend import BackendConnection, open_backend
from selkie.proxy.handshake import Hello, Route, read_client_auth, route

log = logging.getLogger(__name__)

# How long a client's wake and login are retried when the compute fails under them (it died
# while starting, or between the wake and the login), and the backoff between tries.
RETRY_FOR = 7.0
RETRY_FIRST_DELAY = 0.05
RETRY_MAX_DELAY = 1.0
# How long a read pool's pick counts as a session of the compute picked (seconds): until
# its session is counted by the proxy's stats.
PICK_COUNTED_FOR = 2.0


@dataclass(frozen=True)
class Backoff:
    """Where a client's tries stand: the deadline (monotonic) and the wait before the next."""

    until: float
    delay: float = RETRY_FIRST_DELAY


def next_try(backoff: Backoff, *, now: float) -> Backoff | None:
    """After a try failed at ``now`` on the compute's side: None to give up (waiting
    ``backoff.delay`` would pass the deadline), else the backoff after that wait (the delay
    doubled, up to RETRY_MAX_DELAY). The caller sleeps ``backoff.delay`` and tries again."""
    if now + backoff.delay > backoff.until:
        return None
    return Backoff(until=backoff.until, delay=min(backoff.delay * 2, RETRY_MAX_DELAY))


@dataclass(frozen=True)
class Refused:
    """The client is answered with this error and the connection ends."""

    code: int
    message: str
    sqlstate: str | None = None

    def packet(self) -> bytes:
        return build_err(self.code, self.message, self.sqlstate)


@dataclass(frozen=True)
class Credentials:
    """What a client sent to prove its password: an auth plugin's answer, and for
    ``mysql_native_password`` the proxy's scramble that it answers."""

    plugin: str  # NATIVE_PLUGIN or CLEAR_PLUGIN; any other is never verified
    answer: bytes
    scramble: bytes = b""

    def stage1(self, stored: str) -> bytes | None:
        """SHA1(password) when the answer matches the stored hash, else None."""
        if self.plugin == CLEAR_PLUGIN:
            return auth.verify_cleartext(self.answer, stored)
        if self.plugin == NATIVE_PLUGIN:
            return auth.verify_native(self.answer, self.scramble, stored)
        return None


@dataclass(frozen=True)
class Authenticated:
    """A client whose password matched the stored hash of the role it named."""

    route: Route
    access: Access
    stage1: bytes  # SHA1(password), recovered from the client's token
    seq: int  # the sequence id of the proxy's next packet to the client


@dataclass(frozen=True)
class Connected:
    """A compute connection logged in as the client's role (its OK not yet forwarded)."""

    backend: BackendConnection
    wake_ms: float
    login_ms: float


class AuthFailures:
    """Failed logins in a sliding window, and how long the next failed answer waits.

    Never a lockout: the right password is answered at once whatever failed before, so a
    guesser behind the same load balancer as everyone else locks nobody out. Wrong answers
    slow down instead: after ``allowed`` failures for one endpoint from one address in the
    window, each wrong answer waits twice as long as the one before (up to ``max_delay``), and
    the same after ``role_budget`` failures for one role from anywhere. A guesser holds a
    connection for every guess, and connections before authentication are capped per
    address and in all (admission), so the caps over the longest wait bound the rate: with
    the defaults (256 per address, 1,000 in all, 5 s) about 50 guesses a second from one
    address and 200 from everywhere, over both listeners.

    Keys are (endpoint, address) and (endpoint, role) for endpoints and roles that exist;
    failures for names that do not exist share one key per address, so spraying made-up
    names neither grows the table nor evicts a real key's count.
    """

    MAX_KEYS = 100_000
    FIRST_DELAY = 0.1

    def __init__(
        self, allowed: int, window: float, *, role_budget: int = 100, max_delay: float = 5.0
    ) -> None:
        self.allowed = allowed
        self.window = window
        self.role_budget = role_budget
        self.max_delay = max_delay
        self._seen: OrderedDict[tuple[str, ...], deque[float]] = OrderedDict()

    def count(self, key: tuple[str, ...]) -> int:
        times = self._seen.get(key)
        if not times:
            return 0
        cutoff = time.monotonic() - self.window
        while times and times[0] < cutoff:
            times.popleft()
        return len(times)

    def delay(self, *keys: tuple[str, ...]) -> float:
        """Seconds the next failed answer for these keys waits."""
        over = max(
            self.count(key) - (self.role_budget if key[0] == "role" else self.allowed)
            for key in keys
        )
        if over < 0:
            return 0.0
        return min(self.max_delay, self.FIRST_DELAY * float(2 ** min(over, 16)))

    async def failed(self, address: str, endpoint_id: str | None, role: str | None) -> bool:
        """Count a failed login (``endpoint_id`` None: a name that does not exist) and wait
        before its answer as long as the failures so far say; True when it waited."""
        keys = [("address", endpoint_id or "?", address)]
        if endpoint_id is not None and role is not None:
            keys.append(("role", endpoint_id, role))
        wait = self.delay(*keys)
        self.record(*keys)
        if wait:
            await asyncio.sleep(wait)
        return wait > 0

    def record(self, *keys: tuple[str, ...]) -> None:
        now = time.monotonic()
        for key in keys:
            times = self._seen.get(key)
            if times is None:
                times = self._seen[key] = deque()
            self._seen.move_to_end(key)
            times.append(now)
        while len(self._seen) > self.MAX_KEYS:  # bounded memory: forget the stalest
            self._seen.popitem(last=False)


@dataclass(frozen=True, kw_only=True)
class ConnectConfig:
    domain: str
    wake_timeout: float
    backend_timeout: float
    # Every login must come over TLS (the default when the proxy listens beyond loopback).
    require_tls: bool = False


class Connector:
    def __init__(
        self,
        control: ControlPlane,
        config: ConnectConfig,
        *,
        failures: AuthFailures,
        logins: Counter[str],
        sessions: Callable[[str], int] = lambda _: 0,
    ) -> None:
        self.control = control
        self.config = config
        self.failures = failures
        # Login outcomes by kind ("ok:<plugin>", "switched:<plugin>", "failed", "delayed").
        self.logins = logins
        # Client sessions open per endpoint (through this proxy), and the read pool's
        # picks not yet counted there (a burst of logins must not all pick one compute).
        self.sessions = sessions
        self._picked: Counter[str] = Counter()

    async def resolve(self, target: Route) -> Route:
        """A read pool's route made one of its read-only endpoints': the least loaded of
        those running (through this proxy), skipping failed ones; when none runs, one to
        wake. Unknown pools and pools without endpoints keep an empty endpoint (refused as
        an unknown endpoint is)."""
        if target.read_pool is None:
            return target
        members = await self.control.read_pool(target.read_pool)
        candidates = (
            [m for m in members if m.active and not m.failed]
            or [m for m in members if not m.failed]
            or members
        )
        if not candidates:
            return target
        chosen = min(
            candidates,
            key=lambda m: (
                self.sessions(m.endpoint_id) + self._picked[m.endpoint_id],
                m.endpoint_id,
            ),
        ).endpoint_id
        self._picked[chosen] += 1
        asyncio.get_running_loop().call_later(PICK_COUNTED_FOR, self._unpick, chosen)
        return dataclasses.replace(target, endpoint_id=chosen)

    def _unpick(self, endpoint_id: str) -> None:
        self._picked[endpoint_id] -= 1
        if self._picked[endpoint_id] <= 0:
            del self._picked[endpoint_id]

    async def authenticate(self, hello: Hello) -> Authenticated | Refused:
        """Find the endpoint and role the client named and check its password, switching
        its auth plugin to native first when needed."""
        response = hello.response
        target = route(response.user, hello.sni, self.config.domain)
        if target is None:
            return Refused(
                ErrorCode.ACCESS_DENIED,
                "Access denied: name the endpoint in the user name as '<endpoint_id>.<role>' "
                "(a branch's read-only endpoints: '<branch_id>-ro.<role>'), or connect with "
                f"TLS to '<endpoint_id>.{self.config.domain}' (SNI) with the plain role as "
                "user",
            )
        target = await self.resolve(target)
        plugin, answer, seq = await read_client_auth(
            hello.stream, response, hello.seq, hello.scramble, tls=hello.tls
        )
        if plugin != (response.auth_plugin or NATIVE_PLUGIN):
            self.logins[f"switched:{response.auth_plugin}"] += 1
        verified = await self.verify(
            target, Credentials(plugin, answer, hello.scramble), client_ip=hello.client_ip
        )
        if verified is None:
            # One answer for a wrong password, an unknown role and an unknown endpoint,
            # slower after many failures (see AuthFailures).
            return Refused(
                ErrorCode.ACCESS_DENIED,
                f"Access denied for user '{response.user}'@'{hello.client_ip}' "
                f"(using password: {'YES' if answer else 'NO'})",
            )
        access, stage1 = verified
        refused = self.admitted(target, access, tls=hello.tls)
        if refused is not None:
            return refused
        self.logins[f"ok:{plugin}"] += 1
        return Authenticated(route=target, access=access, stage1=stage1, seq=seq)

    async def verify(
        self, target: Route | None, credentials: Credentials | None, *, client_ip: str
    ) -> tuple[Access, bytes] | None:
        """The one check of a password, for every way a client proves one (the handshake,
        ``COM_CHANGE_USER``, HTTP Basic): the role's access and SHA1(password) when the
        credentials match the role's stored hash. None for a wrong password, an unknown
        role or endpoint (``target`` None: a name that routes nowhere) or credentials the
        caller cannot take: counted and paced as a failed login before it returns."""
        access = None
        if target is not None:
            access = await self.control.get_access(target.endpoint_id, target.role)
        stage1 = None
        if access is not None and credentials is not None:
            stage1 = credentials.stage1(access.password_hash)
        if access is None or stage1 is None:
            await self.failed_login(client_ip, target, access)
            return None
        return access, stage1

    async def failed_login(self, address: str, target: Route | None, access: Access | None) -> None:
        """A wrong password, an unknown role or an unknown endpoint (any protocol): counted,
        and its answer paced by the failures before it."""
        self.logins["failed"] += 1
        known = target.endpoint_id if target is not None and access is not None else None
        if await self.failures.failed(address, known, target.role if target else None):
            self.logins["delayed"] += 1

    def admitted(self, target: Route, access: Access, *, tls: bool) -> Refused | None:
        """Why a client whose password matched may not go on (None: it may)."""
        if access.disabled:
            # Refused before any wake, also while a disabled endpoint's compute still runs
            # (its suspend is queued): nothing new reaches it.
            return Refused(ErrorCode.ACCESS_DENIED, f"endpoint {target.endpoint_id} is disabled")
        if access.require_tls and not tls:
            return Refused(
                ErrorCode.ACCESS_DENIED,
                f"project of endpoint {target.endpoint_id} requires TLS; connect with SSL",
            )
        if self.config.require_tls and not tls:
            return Refused(
                ErrorCode.ACCESS_DENIED,
                "this proxy accepts logins over TLS only; connect with SSL",
            )
        return None

    async def wake(self, endpoint_id: str, *, until: float | None = None) -> Backend | Refused:
        """Where the endpoint's compute listens, starting it if it sleeps. A start that
        failed on the compute's side (it died while starting, the state store blinked) is
        tried again with backoff until ``until`` (monotonic; default: RETRY_FOR from now):
        a client held for the wake is served by the retry. Never retried: quotas, a
        stopped or disabled endpoint, a wake that outlasted ``wake_timeout``."""
        backoff = Backoff(until=time.monotonic() + RETRY_FOR if until is None else until)
        while True:
            try:
                return await self._wake_once(endpoint_id)
            except (ComputeError, StoreError) as exc:
                after = next_try(backoff, now=time.monotonic())
                if after is None:
                    return self._could_not_start(endpoint_id, exc)
                log.info(
                    "endpoint %s: wake failed (%s); again in %.2fs", endpoint_id, exc, backoff.delay
                )
                await asyncio.sleep(backoff.delay)
                backoff = after

    async def _wake_once(self, endpoint_id: str) -> Backend | Refused:
        try:
            return await asyncio.wait_for(self.control.wake(endpoint_id), self.config.wake_timeout)
        except TimeoutError:
            return Refused(
                ErrorCode.NET_READ_INTERRUPTED,
                f"endpoint {endpoint_id} did not become ready within "
                f"{self.config.wake_timeout:.0f}s; try again",
            )
        except QuotaExceeded as exc:
            return Refused(ErrorCode.USER_LIMIT_REACHED, exc.message)
        except StateConflict as exc:
            return Refused(ErrorCode.NET_READ_INTERRUPTED, exc.message)
        except (Conflict, NotFound) as exc:
            return Refused(ErrorCode.ACCESS_DENIED, exc.message)
        except DiskFull as exc:
            # Not tried again: the next start would meet the same full disk.
            log.warning("endpoint %s could not start: %s", endpoint_id, exc.message)
            said = public_message(exc).splitlines()[0]
            return Refused(ErrorCode.DISK_FULL, f"endpoint {endpoint_id}: {said}")
        except (ComputeError, StoreError):
            raise  # the caller tries again
        except SelkieError as exc:
            return self._could_not_start(endpoint_id, exc)

    @staticmethod
    def _could_not_start(endpoint_id: str, exc: SelkieError) -> Refused:
        log.warning("endpoint %s could not start: %s", endpoint_id, exc.message)
        return Refused(
            ErrorCode.NET_READ_INTERRUPTED,
            f"endpoint {endpoint_id} could not start: {public_message(exc).splitlines()[0]}",
        )

    async def dial(
        self,
        login: Authenticated,
        response: HandshakeResponse41,
        capabilities: int,
        *,
        connection_id: int | None = None,
    ) -> Connected | Refused:
        """Wake the endpoint and log in to its compute as the client's role (with the
        client's database and attributes from ``response``). A compute that went away
        between the wake and the login (a suspend that raced this client) is woken once
        more. The compute's own refusal of the login (an unknown database) is passed on.
        ``connection_id``: the client's greeting id, for the compute's ``CONNECTION_ID()``."""
        endpoint_id = login.route.endpoint_id
        t0 = time.perf_counter()
        backoff = Backoff(until=time.monotonic() + RETRY_FOR)
        address = await self.wake(endpoint_id, until=backoff.until)
        t1 = time.perf_counter()
        while True:
            if isinstance(address, Refused):
                return address
            try:
                conn = await open_backend(
                    address,
                    response=response,
                    role=login.route.role,
                    stage1=login.stage1,
                    capabilities=capabilities,
                    timeout=self.config.backend_timeout,
                    connection_id=connection_id,
                )
                break
            except (OSError, TimeoutError, ProtocolError) as exc:
                # The compute went away between the wake and the login (a suspend that
                # raced this client, a crash): woken again, within the same bound.
                after = next_try(backoff, now=time.monotonic())
                if after is None:
                    # Where the compute listens is the operator's business, not the client's.
                    log.warning("endpoint %s: cannot log in to its compute: %r", endpoint_id, exc)
                    return Refused(
                        ErrorCode.NET_READ_ERROR,
                        f"could not reach the compute of endpoint {endpoint_id}; try again",
                    )
                await asyncio.sleep(backoff.delay)
                backoff = after
                address = await self.wake(endpoint_id, until=backoff.until)
        if conn.first_reply[:1] == b"\xff":
            conn.writer.close()
            err = parse_err(conn.first_reply)
            return Refused(err.code, err.message, err.sqlstate)
        return Connected(
            backend=conn, wake_ms=(t1 - t0) * 1000, login_ms=(time.perf_counter() - t1) * 1000
        )
