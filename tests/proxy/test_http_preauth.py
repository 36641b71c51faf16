"""SQL over HTTP under the MySQL listener's pre-auth rules (security review, issue 26 item 3):
a request whose headers and body do not arrive within the handshake deadline loses its
connection (TLS handshake included), connections not yet authenticated count in the same
caps as MySQL ones (in all and per address; 503 beyond), and wrong passwords are paced by
the same budget as MySQL logins, so guesses cannot outrun the caps."""

from __future__ import annotations

import asyncio
import base64
import ssl
import time

import httpx
import pymysql
import pytest

from selkie.proxy.http.server import HttpFront
from tests.proxy.conftest import Db

pytestmark = pytest.mark.timeout(120)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def closed_at(reader: asyncio.StreamReader) -> float:
    """When the server closed the connection (whatever it sent first is read and dropped)."""
    while await asyncio.wait_for(reader.read(65536), timeout=10):
        pass
    return time.monotonic()


async def settled(db: Db) -> None:
    assert db.platform.proxy is not None
    deadline = time.monotonic() + 5
    while db.platform.proxy.admission.waiting and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert db.platform.proxy.admission.waiting == 0


async def test_half_sent_requests_are_cut_and_capped(db: Db) -> None:
    proxy = db.platform.proxy
    assert proxy is not None and proxy.http is not None
    port = proxy.http.port
    proxy.http.guard.timeout = 1.5
    proxy.admission.per_address = 20
    t0 = time.monotonic()
    half = []
    for i in range(20):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if i % 2:  # headers never finished
            writer.write(b"POST /sql HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n")
        else:  # headers sent, the body only begun
            writer.write(b"POST /sql HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        half.append((reader, writer))
    closing = [asyncio.ensure_future(closed_at(r)) for r, _ in half]
    while proxy.admission.waiting < 20 and time.monotonic() - t0 < 1:
        await asyncio.sleep(0.01)
    assert proxy.admission.waiting == 20
    # The address is at its cap: one more connection is refused at once.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = await asyncio.wait_for(reader.read(), timeout=5)
    assert answer.startswith(b"HTTP/1.1 503") and b"Too many connections" in answer
    assert proxy.admission.refused["address"] == 1
    writer.close()
    # Another address is served meanwhile.
    local = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with httpx.AsyncClient(transport=local, timeout=30) as client:
        await served(client, f"http://127.0.0.1:{port}/sql", db)
    # Every half-sent request lost its connection at the deadline, not later.
    ends = await asyncio.gather(*closing)
    assert max(ends) - t0 < 4, [round(e - t0, 2) for e in ends]
    for _, w in half:
        w.close()
    await settled(db)


async def test_a_silent_tls_connection_is_counted_and_cut(db: Db) -> None:
    proxy = db.platform.proxy
    assert proxy is not None
    key = db.cert.with_name("proxy-key.pem")
    front = HttpFront(
        proxy.connector,
        proxy.stats,
        proxy.pooler,
        host="127.0.0.1",
        port=0,
        ssl_files=(str(db.cert), str(key)),
        admission=proxy.admission,
        preauth_timeout=1.0,
    )
    await front.start()
    try:
        t0 = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
        while not proxy.admission.waiting and time.monotonic() - t0 < 1:
            await asyncio.sleep(0.01)
        assert proxy.admission.waiting == 1  # in its TLS handshake, and counted
        assert await closed_at(reader) - t0 < 3
        writer.close()
        tls = ssl.create_default_context(cafile=str(db.cert))
        async with httpx.AsyncClient(verify=tls, timeout=30) as client:
            await served(client, f"https://127.0.0.1:{front.port}/sql", db)
    finally:
        await front.stop()
    await settled(db)


async def served(client: httpx.AsyncClient, url: str, db: Db) -> None:
    """A real query with the right password is answered (the guard lets it through)."""
    r = await client.post(
        url,
        json={"query": "SELECT 1 AS one"},
        headers={"Authorization": basic(db.user, db.password)},
    )
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [{"one": 1}]


async def guess(port: int, user: str) -> bytes:
    """One wrong password on a connection of its own: the status line's code, b"" if the
    connection was refused before an answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /sql HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + f"Authorization: {basic(user, 'wrong')}\r\n".encode()
            + b"Content-Length: 2\r\n\r\n{}"
        )
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    except ConnectionError:
        return b""
    finally:
        writer.close()
    return answer[9:12]


async def test_wrong_passwords_over_http_are_paced_and_capped(db: Db) -> None:
    proxy = db.platform.proxy
    assert proxy is not None and proxy.http is not None
    port = proxy.http.port
    # Every failure paced (0.1 s, doubling, up to 1 s); at most 4 guesses waiting at once.
    proxy.failures.allowed = 0
    proxy.failures.max_delay = 1.0
    proxy.admission.per_address = 4
    window = 3.0
    t0 = time.monotonic()
    answered: list[bytes] = []

    async def guesser() -> None:
        while time.monotonic() - t0 < window:
            code = await guess(port, db.user)
            if time.monotonic() - t0 < window:
                answered.append(code)

    await asyncio.gather(*(guesser() for _ in range(32)))
    denied = answered.count(b"401")
    # Four at a time, a second each once paced: about 4 a second; without the cap the 32
    # guessers get ~30 a second.
    assert 3 <= denied <= 20, (denied, len(answered))
    assert len(answered) - denied > 0 and proxy.admission.refused["address"] > 0
    assert set(answered) <= {b"401", b"503", b""}
    await settled(db)
    # One budget with MySQL logins: HTTP's failures are counted for this address, and the
    # next wrong MySQL password is paced by them.
    assert proxy.failures.count(("address", db.endpoint_id, "127.0.0.1")) >= denied
    started = time.monotonic()
    with pytest.raises(pymysql.err.OperationalError) as refused:
        await asyncio.to_thread(
            pymysql.connect, host="127.0.0.1", port=db.port, user=db.user, password="wrong"
        )
    assert refused.value.args[0] == 1045
    assert time.monotonic() - started >= 0.9
    # The right password is answered at once: nobody is locked out.
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.post(
            f"http://127.0.0.1:{port}/sql",
            json={"query": "SELECT 3 AS three"},
            headers={"Authorization": basic(db.user, db.password)},
        )
    assert r.status_code == 200, r.text
