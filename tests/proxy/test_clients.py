"""Real clients through the real proxy to real computes: the mariadb CLI, PyMySQL,
mysqlclient, mysql-connector-python and SQLAlchemy; TLS with and without SNI; big rows,
multi-statements, prepared statements, LOAD DATA LOCAL INFILE, COM_CHANGE_USER and
COM_RESET_CONNECTION."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import mysql.connector
import MySQLdb
import pymysql
import pytest
import sqlalchemy

from tests.conftest import need_service
from tests.proxy.conftest import Db

pytestmark = pytest.mark.timeout(120)


def pymysql_conn(db: Db, **kw):  # type: ignore[no-untyped-def]
    args = dict(
        host="127.0.0.1",
        port=db.port,
        user=db.user,
        password=db.password,
        database=db.database,
        autocommit=True,
        connect_timeout=30,
    )
    args.update(kw)
    return pymysql.connect(**args)


def one(conn, sql: str, args=None):  # type: ignore[no-untyped-def]
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()


# --- the mariadb command-line client ---------------------------------------------------------


def mariadb_cli(
    db: Db, sql: str, *extra: str, password: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The mariadb command-line client through the proxy, as the project's owner."""
    binary = shutil.which("mariadb")
    if binary is None:
        need_service("mariadb CLI", "not installed")
    assert binary
    return subprocess.run(
        [
            binary,
            "-h",
            "127.0.0.1",
            "-P",
            str(db.port),
            "-u",
            db.user,
            f"-p{db.password if password is None else password}",
            "--batch",
            "--skip-column-names",
            *extra,
            db.database,
            "-e",
            sql,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


async def test_mariadb_cli_plain_and_tls(db: Db) -> None:
    out = await asyncio.to_thread(
        mariadb_cli, db, "SELECT CONCAT('hello ', CURRENT_USER())", "--ssl=0"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"hello {db.role}@localhost"
    out = await asyncio.to_thread(
        mariadb_cli, db, "SHOW STATUS LIKE 'Ssl_cipher'", "--ssl", f"--ssl-ca={db.cert}"
    )
    assert out.returncode == 0, out.stderr
    # The compute leg is plaintext on loopback; the client leg is what TLS protects.
    out = await asyncio.to_thread(
        mariadb_cli, db, "SELECT 1", "--ssl", f"--ssl-ca={db.cert}", "--ssl-verify-server-cert"
    )
    assert out.returncode == 0, out.stderr


async def test_mariadb_cli_wrong_password(db: Db) -> None:
    out = await asyncio.to_thread(mariadb_cli, db, "SELECT 1", "--ssl=0", password="nope")
    assert out.returncode == 1
    assert "ERROR 1045 (28000)" in out.stderr


# --- PyMySQL -----------------------------------------------------------------------------------


async def test_pymysql_tls_sni_with_plain_role(db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def resolve(host, *args, **kw):  # type: ignore[no-untyped-def]
        if isinstance(host, str) and host.endswith(".selkie.localhost"):
            host = "127.0.0.1"
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)

    def run() -> tuple:  # type: ignore[type-arg]
        conn = pymysql_conn(
            db,
            host=f"{db.endpoint_id}.selkie.localhost",
            user=db.role,
            ssl_ca=str(db.cert),
            ssl_verify_cert=True,
            ssl_verify_identity=True,
        )
        try:
            return one(conn, "SELECT CURRENT_USER()")
        finally:
            conn.close()

    assert await asyncio.to_thread(run) == (f"{db.role}@localhost",)


async def test_pymysql_without_tls_and_naming_no_endpoint(db: Db) -> None:
    def run() -> tuple:  # type: ignore[type-arg]
        conn = pymysql_conn(db, ssl_disabled=True)
        try:
            return one(conn, "SELECT 40 + 2")
        finally:
            conn.close()

    assert await asyncio.to_thread(run) == (42,)
    with pytest.raises(pymysql.err.OperationalError) as err:
        await asyncio.to_thread(pymysql_conn, db, user=db.role, ssl_disabled=True)
    code, message = err.value.args
    assert code == 1045
    assert "'<endpoint_id>.<role>'" in message and "SNI" in message


async def test_row_larger_than_16_mib_both_ways(db: Db) -> None:
    size = 17 * 1024 * 1024 + 123

    def run() -> tuple[int, str]:
        conn = pymysql_conn(db, max_allowed_packet=64 * 1024 * 1024)
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE TABLE big (id INT PRIMARY KEY, b LONGBLOB)")
                payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
                cur.execute("INSERT INTO big VALUES (1, %s)", (payload,))
                cur.execute("SELECT b FROM big WHERE id = 1")
                (got,) = cur.fetchone()
                cur.execute("SELECT LENGTH(b), MD5(b) FROM big")
                length, md5 = cur.fetchone()
                import hashlib

                assert got == payload
                return length, md5 == hashlib.md5(payload).hexdigest()  # type: ignore[return-value]
        finally:
            conn.close()

    assert await asyncio.to_thread(run) == (size, True)


async def test_multi_statements_and_load_data_local(db: Db, tmp_path: Path) -> None:
    csv = tmp_path / "rows.csv"
    csv.write_text("".join(f"{i},name{i}\n" for i in range(1, 5001)))

    def run() -> tuple[list[object], int]:
        conn = pymysql_conn(
            db, client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS, local_infile=True
        )
        try:
            results = []
            with conn.cursor() as cur:
                cur.execute("SELECT 1; SELECT 2, 3; CREATE TABLE l (id INT PRIMARY KEY, name TEXT)")
                results.append(cur.fetchall())
                while cur.nextset():
                    results.append(cur.fetchall())
                cur.execute(f"LOAD DATA LOCAL INFILE '{csv}' INTO TABLE l FIELDS TERMINATED BY ','")
                cur.execute("SELECT COUNT(*) FROM l")
                return results, cur.fetchone()[0]
        finally:
            conn.close()

    results, count = await asyncio.to_thread(run)
    assert results[0] == ((1,),) and results[1] == ((2, 3),)
    assert count == 5000


# --- mysqlclient (MySQLdb) ---------------------------------------------------------------------


def mysqldb_conn(db: Db, **kw: Any) -> MySQLdb.Connection:
    """mysqlclient (libmariadb underneath) through the proxy; plaintext unless ``kw`` says."""
    args: dict[str, Any] = dict(
        host="127.0.0.1",
        port=db.port,
        user=db.user,
        password=db.password,
        database=db.database,
    )
    if "ssl" not in kw:
        args["ssl_mode"] = "DISABLED"
    args.update(kw)
    return MySQLdb.connect(**args)


async def test_mysqlclient(db: Db) -> None:
    def run() -> tuple:  # type: ignore[type-arg]
        conn = mysqldb_conn(db)
        try:
            cur = conn.cursor()
            cur.execute("CREATE TABLE m (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(10))")
            cur.executemany("INSERT INTO m (v) VALUES (%s)", [("a",), ("b",)])
            conn.commit()
            cur.execute("SELECT GROUP_CONCAT(v ORDER BY id) FROM m")
            return cur.fetchone()
        finally:
            conn.close()

    assert await asyncio.to_thread(run) == ("a,b",)


# --- mysql-connector-python --------------------------------------------------------------------


def connector(db: Db, **kw):  # type: ignore[no-untyped-def]
    args = dict(
        host="127.0.0.1",
        port=db.port,
        user=db.user,
        password=db.password,
        database=db.database,
        use_pure=True,
        ssl_disabled=True,
        autocommit=True,
    )
    args.update(kw)
    return mysql.connector.connect(**args)


async def test_connector_prepared_statements(db: Db) -> None:
    def run() -> list[tuple]:  # type: ignore[type-arg]
        cnx = connector(db)
        try:
            cur = cnx.cursor(prepared=True)
            cur.execute("CREATE TABLE p (id INT PRIMARY KEY, v DOUBLE, s VARCHAR(20))")
            for i in range(1, 4):
                cur.execute("INSERT INTO p VALUES (?, ?, ?)", (i, i * 1.5, f"s{i}"))
            cur.execute("SELECT id, v, s FROM p WHERE id >= ? ORDER BY id", (2,))
            return [tuple(r) for r in cur.fetchall()]
        finally:
            cnx.close()

    assert await asyncio.to_thread(run) == [(2, 3.0, "s2"), (3, 4.5, "s3")]


async def test_connector_change_user_and_reset_connection(db: Db) -> None:
    who = db.platform.control
    from selkie.control.bootstrap import local_principal

    principal = local_principal(who)
    role, _ = await asyncio.to_thread(
        who.roles.create, principal, db.created.project.id, db.created.branch.id, name="second"
    )
    await db.platform.runner.wait_idle()

    def run() -> tuple[str, str, object, object]:
        cnx = connector(db)
        try:
            cur = cnx.cursor()
            cur.execute("SET @marker = 42")
            cnx.cmd_change_user(
                username=f"{db.endpoint_id}.second", password=role.password or "", database=""
            )
            cur = cnx.cursor()
            cur.execute("SELECT CURRENT_USER()")
            after_change = cur.fetchone()[0]
            cnx.cmd_change_user(username="second", password=role.password or "", database="")
            cur = cnx.cursor()
            cur.execute("SELECT CURRENT_USER()")
            plain = cur.fetchone()[0]
            cur.execute("SET @marker = 7")
            cnx.cmd_reset_connection()
            cur = cnx.cursor()
            cur.execute("SELECT @marker, CURRENT_USER()")
            marker, user = cur.fetchone()
            return after_change, plain, marker, user
        finally:
            cnx.close()

    after, plain, marker, user = await asyncio.to_thread(run)
    assert after == "second@localhost" and plain == "second@localhost"
    assert marker is None and user == "second@localhost"


async def test_change_user_with_a_wrong_password_is_refused(db: Db) -> None:
    def run() -> None:
        cnx = connector(db)
        try:
            cnx.cmd_change_user(username=db.user, password="wrong", database="")
        finally:
            cnx.close()

    proxy = db.platform.proxy
    assert proxy is not None
    before = proxy.logins["failed"]
    with pytest.raises(mysql.connector.Error) as err:
        await asyncio.to_thread(run)
    assert err.value.errno == 1045
    # Counted, and paced, like any failed login.
    assert proxy.logins["failed"] == before + 1
    assert proxy.failures.count(("role", db.endpoint_id, db.role)) == 1


async def test_connector_caching_sha2_client_is_switched_to_native(db: Db) -> None:
    def run() -> tuple:  # type: ignore[type-arg]
        cnx = connector(db, auth_plugin="caching_sha2_password")
        try:
            cur = cnx.cursor()
            cur.execute("SELECT CURRENT_USER()")
            return cur.fetchone()
        finally:
            cnx.close()

    assert await asyncio.to_thread(run) == (f"{db.role}@localhost",)


# --- SQLAlchemy --------------------------------------------------------------------------------


async def test_sqlalchemy(db: Db) -> None:
    def run() -> list[tuple]:  # type: ignore[type-arg]
        engine = sqlalchemy.create_engine(
            f"mysql+pymysql://{db.user}:{db.password}@127.0.0.1:{db.port}/{db.database}",
            connect_args={"ssl_disabled": True},
        )
        meta = sqlalchemy.MetaData()
        t = sqlalchemy.Table(
            "sa",
            meta,
            sqlalchemy.Column("id", sqlalchemy.Integer, primary_key=True),
            sqlalchemy.Column("name", sqlalchemy.String(20)),
        )
        try:
            meta.create_all(engine)
            with engine.begin() as conn:
                conn.execute(t.insert(), [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}])
            with engine.connect() as conn:
                return [tuple(r) for r in conn.execute(sqlalchemy.select(t).order_by(t.c.id))]
        finally:
            engine.dispose()

    assert await asyncio.to_thread(run) == [(1, "x"), (2, "y")]
