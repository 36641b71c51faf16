"""The workloads: PyMySQL clients in threads, each recording what it did in a History.

*bank*: transfers between accounts in transactions (``SELECT … FOR UPDATE``, two
``UPDATE``s, ``COMMIT``) and reads of every balance. *append*: client ``c`` inserts
``(c, 1)``, ``(c, 2)``, … one at a time and reads every list in one statement.

A client that gets an error drops its connection and opens another (as an application
does); while the nemesis needs quiet (a warm freeze, a restore) the Gate holds clients
between operations.
"""

from __future__ import annotations

import random
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import pymysql

from tests.chaos.history import DEFINITE, History, Op, Outcome, now

ACCOUNTS = 8
BALANCE = 100

Connection = Any  # pymysql.Connection; untyped generics trip mypy in bench/


@dataclass(frozen=True)
class Target:
    """Where clients log in: the proxy's port, and ``<endpoint>[-pooler].<role>``."""

    port: int
    endpoint_id: str
    role: str
    password: str
    database: str

    def connect(self, *, pooled: bool, timeout: float = 30) -> Connection:
        suffix = "-pooler" if pooled else ""
        return pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user=f"{self.endpoint_id}{suffix}.{self.role}",
            password=self.password,
            database=self.database,
            autocommit=True,
            connect_timeout=timeout,
            read_timeout=timeout,
            write_timeout=timeout,
        )


class Gate:
    """Lets clients through between operations; ``close`` waits until none is inside."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._open.set()
        self._cond = threading.Condition()
        self._inside = 0

    @contextmanager
    def through(self, stop: threading.Event) -> Iterator[bool]:
        while not self._open.wait(0.1):
            if stop.is_set():
                yield False
                return
        with self._cond:
            self._inside += 1
        try:
            yield True
        finally:
            with self._cond:
                self._inside -= 1
                self._cond.notify_all()

    def close(self, timeout: float = 60) -> bool:
        """Hold clients; True once none is mid-operation (False after ``timeout``)."""
        self._open.clear()
        with self._cond:
            return self._cond.wait_for(lambda: self._inside == 0, timeout)

    def open(self) -> None:
        self._open.set()


def setup_schema(target: Target) -> None:
    conn = target.connect(pooled=False, timeout=60)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE accounts (id INT PRIMARY KEY, balance INT NOT NULL)")
            cur.executemany(
                "INSERT INTO accounts VALUES (%s, %s)", [(i, BALANCE) for i in range(ACCOUNTS)]
            )
            cur.execute(
                "CREATE TABLE appends (pos BIGINT AUTO_INCREMENT PRIMARY KEY, "
                "list INT NOT NULL, value INT NOT NULL, KEY (list))"
            )
    finally:
        conn.close()


def error_of(exc: BaseException) -> tuple[int, str]:
    """The MySQL code of a client error (0 when it is not one) and its message."""
    if isinstance(exc, pymysql.err.MySQLError) and exc.args and isinstance(exc.args[0], int):
        return exc.args[0], str(exc.args[1] if len(exc.args) > 1 else "")
    return 0, f"{type(exc).__name__}: {exc}"


def transfer(conn: Connection, rng: random.Random) -> Any:
    a, b = rng.sample(range(ACCOUNTS), 2)
    amount = rng.randint(1, 30)
    conn.begin()
    with conn.cursor() as cur:
        cur.execute(
            "SELECT id, balance FROM accounts WHERE id IN (%s, %s) ORDER BY id FOR UPDATE",
            (a, b),
        )
        balances = dict(cur.fetchall())
        if balances[a] < amount:
            conn.rollback()
            return None
        cur.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, a))
        cur.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, b))
    conn.commit()
    return (a, b, amount)


def balances(conn: Connection) -> dict[int, int]:
    with conn.cursor() as cur:
        cur.execute("SELECT id, balance FROM accounts")
        return {int(k): int(v) for k, v in cur.fetchall()}


def append(conn: Connection, client: int, value: int) -> None:
    with conn.cursor() as cur:
        cur.execute("INSERT INTO appends (list, value) VALUES (%s, %s)", (client, value))


def read_lists(conn: Connection) -> dict[int, array[int]]:
    # Arrays, not lists of ints: a long run keeps thousands of reads of growing lists in its
    # history (4 bytes a value instead of 36).
    lists: dict[int, array[int]] = {}
    with conn.cursor() as cur:
        cur.execute("SELECT list, value FROM appends ORDER BY pos")
        for lst, value in cur.fetchall():
            lists.setdefault(int(lst), array("i")).append(int(value))
    return lists


class Client(threading.Thread):
    """One workload client: ``bank`` or ``append``, plain or through the pooler."""

    def __init__(
        self,
        client_id: int,
        kind: str,
        *,
        target: Target,
        pooled: bool,
        history: History,
        gate: Gate,
        stop: threading.Event,
        seed: int,
    ) -> None:
        super().__init__(name=f"chaos-{kind}-{client_id}", daemon=True)
        self.client_id, self.kind, self.pooled = client_id, kind, pooled
        self.target, self.history, self.gate, self.stop = target, history, gate, stop
        self.rng = random.Random(seed)
        self.conn: Connection | None = None
        self.next_value = 1

    def run(self) -> None:
        while not self.stop.is_set():
            with self.gate.through(self.stop) as go:
                if go:
                    self.step()

    def step(self) -> None:
        if self.conn is None:
            start = now()
            try:
                self.conn = self.target.connect(pooled=self.pooled)
            except Exception as exc:
                code, message = error_of(exc)
                self.history.add(
                    Op(
                        "connect",
                        self.client_id,
                        start,
                        now(),
                        Outcome.FAIL,
                        None,
                        None,
                        code,
                        message,
                    )
                )
                # The proxy may be restarting: a refused connect comes back at once.
                time.sleep(0.2)
                return
        if self.kind == "bank":
            if self.rng.random() < 0.3:
                self.record("balance", lambda c: (None, balances(c)), write=False)
            else:
                self.record("transfer", lambda c: (None, transfer(c, self.rng)), write=True)
        else:
            if self.rng.random() < 0.2:
                self.record("read", lambda c: (None, read_lists(c)), write=False)
            else:
                value = self.next_value
                self.next_value += 1
                self.record("append", lambda c: self.append(c, value), write=True)

    def append(self, conn: Connection, value: int) -> tuple[int, None]:
        append(conn, self.client_id, value)
        return value, None

    def record(
        self, kind: str, run: Callable[[Connection], tuple[Any, Any]], *, write: bool
    ) -> None:
        start = now()
        value = self.next_value - 1 if kind == "append" else None
        try:
            value, result = run(self.conn)
        except Exception as exc:
            code, message = error_of(exc)
            # A write whose answer never came may have happened; one refused did not.
            outcome = Outcome.FAIL if code in DEFINITE or not write else Outcome.INFO
            self.history.add(
                Op(kind, self.client_id, start, now(), outcome, value, None, code, message)
            )
            self.drop()
            return
        self.history.add(Op(kind, self.client_id, start, now(), Outcome.OK, value, result))

    def drop(self) -> None:
        if self.conn is not None:
            with suppress(Exception):
                self.conn.close()
            self.conn = None


def final_reads(target: Target, history: History, deadline: float) -> None:
    """After the faults: one read of every list and one of every balance, retried until
    answered (the platform may still be waking)."""
    for kind, read in (("read", read_lists), ("balance", balances)):
        while True:
            start = now()
            try:
                conn = target.connect(pooled=False, timeout=60)
                try:
                    result: Any = read(conn)
                finally:
                    conn.close()
            except Exception as exc:
                code, message = error_of(exc)
                history.add(Op(kind, -1, start, now(), Outcome.FAIL, None, None, code, message))
                if now() > deadline:
                    raise
                time.sleep(0.5)
                continue
            history.add(Op(kind, -1, start, now(), Outcome.OK, None, result))
            break
