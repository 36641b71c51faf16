"""Resume through a proxy replica: connect → first row of `SELECT 1` on a suspended endpoint
when the proxy is a separate `selkie proxy` process asking a `selkie api` process over HTTP
(state in PostgreSQL), against the same with the embedded platform (one process, SQLite).

    .venv/bin/python bench/replicas.py [--cycles 30] [--pg postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _common import bench_platform, pct, run
from resume import first_row
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from selkie.compute.procs import free_port

SELKIE = [sys.executable, "-m", "selkie.cli"]


def wait(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.TransportError, OSError):
            pass
        time.sleep(0.02)
    raise SystemExit(f"bench: {what} not within {timeout}s")


def embedded(cycles: int) -> list[float]:
    async def cycle() -> list[float]:
        async with bench_platform(suspend_timeout_seconds=-1) as b:
            args = (b.proxy_port, f"{b.endpoint_id}.{b.role}", b.password, b.database)
            await asyncio.to_thread(first_row, *args)
            out = []
            for _ in range(cycles):
                await b.platform.lifecycle.suspend(b.endpoint_id)
                out.append(await asyncio.to_thread(first_row, *args))
            return out

    return run(cycle())


def replicas(cycles: int, pg_admin: str) -> list[float]:
    name = f"selkie_bench_{secrets.token_hex(4)}"
    admin = create_engine(pg_admin, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(pg_admin).set(database=name).render_as_string(hide_password=False)
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="selkie-bench-") as tmp:
        api_port, proxy_port = free_port(), free_port()
        base = {k: v for k, v in os.environ.items() if not k.startswith("SELKIE_")}
        base.update(
            SELKIE_DATABASE_URL=url,
            SELKIE_INTERNAL_TOKEN=secrets.token_hex(16),
            SELKIE_LOG_LEVEL="warning",
        )
        api_env = {
            **base,
            "SELKIE_DATA_DIR": f"{tmp}/api",
            "SELKIE_API_LISTEN": f"127.0.0.1:{api_port}",
        }
        api_url = f"http://127.0.0.1:{api_port}"
        proxy_env = {
            **base,
            "SELKIE_DATA_DIR": f"{tmp}/proxy",
            "SELKIE_PROXY_LISTEN": f"127.0.0.1:{proxy_port}",
            "SELKIE_API_URL": api_url,
        }
        log = open(Path(tmp) / "log", "ab")  # noqa: SIM115
        try:
            procs.append(subprocess.Popen([*SELKIE, "api"], env=api_env, stdout=log, stderr=log))
            wait(lambda: httpx.get(api_url + "/healthz").status_code == 200, 120, "selkie api")
            procs.append(
                subprocess.Popen([*SELKIE, "proxy"], env=proxy_env, stdout=log, stderr=log)
            )
            wait(lambda: socket.create_connection(("127.0.0.1", proxy_port)), 30, "selkie proxy")
            key = subprocess.run(
                [*SELKIE, "api-keys", "create", "--name", "bench", "--admin"],
                env=api_env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            api = httpx.Client(
                base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=60
            )
            body = api.post(
                "/v1/projects",
                json={"project": {"default_endpoint_settings": {"suspend_timeout_seconds": -1}}},
            ).json()
            pid, ep = body["project"]["id"], body["endpoints"][0]["id"]
            role, db = body["roles"][0], body["databases"][0]["name"]
            args = (proxy_port, f"{ep}.{role['name']}", role["password"], db)
            path = f"/v1/projects/{pid}/endpoints/{ep}"

            def state() -> str:
                return str(api.get(path).json()["endpoint"]["current_state"])

            first_row(*args)
            out = []
            for _ in range(cycles):
                api.post(path + "/suspend")
                wait(lambda: state() == "suspended", 30, "suspended")
                out.append(first_row(*args))
            api.post(path + "/suspend")
            wait(lambda: state() == "suspended", 30, "suspended")
            return out
        finally:
            for p in reversed(procs):
                p.send_signal(signal.SIGINT)
                p.wait(30)
            log.close()
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    opts = parser.parse_args()
    one = embedded(opts.cycles)
    two = replicas(opts.cycles, opts.pg)
    print(
        f"\nresume: connect → first row of SELECT 1 on a suspended endpoint, {opts.cycles} "
        "cycles, PyMySQL, 0.25 CU (ms)\n"
    )
    print(f"{'topology':<58} {'p50':>8} {'p90':>8} {'p99':>8}")
    rows = [
        ("embedded (selkie up: one process, SQLite)", one),
        ("replicas (selkie proxy → HTTP → selkie api, PostgreSQL)", two),
    ]
    for label, values in rows:
        print(
            f"{label:<58} {pct(values, 50):>8.1f} {pct(values, 90):>8.1f} {pct(values, 99):>8.1f}"
        )
    print(
        f"\nratio replicas / embedded: p50 {pct(two, 50) / pct(one, 50):.2f}x, "
        f"p99 {pct(two, 99) / pct(one, 99):.2f}x"
    )


if __name__ == "__main__":
    main()
