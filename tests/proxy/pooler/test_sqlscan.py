"""The pooler's statement classifier as a pure function: what pins, what is tracked, and
that literals and comments cannot hide or fake either (the pooler tests drive the same
rules through real clients and computes)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selkie.proxy.pooler.sqlscan import classify, split_top_level


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("SELECT @x", "user variable"),
        ("SELECT 'a -- not a comment', @x", "user variable"),
        ("SELECT 'a # not a comment', @x", "user variable"),
        ('SELECT "it\\"s", @x', "user variable"),
        ("SELECT 'it''s' /* note */, @x", "user variable"),
        ("SELECT 1; SET @y = 2", "user variable"),
        ("CREATE TEMPORARY TABLE t (i INT)", "temporary table"),
        ("create or replace temporary table t (i int)", "temporary table"),
        ("SELECT GET_LOCK('a', 1)", "GET_LOCK"),
        ("SELECT RELEASE_ALL_LOCKS()", "GET_LOCK"),
        ("SELECT SQL_CALC_FOUND_ROWS * FROM t", "SQL_CALC_FOUND_ROWS"),
        ("SELECT FOUND_ROWS ()", "SQL_CALC_FOUND_ROWS"),
        ("PREPARE s FROM 'SELECT 1'", "PREPARE"),
        ("LOCK TABLES t WRITE", "LOCK TABLES"),
        ("XA START 'x'", "XA/HANDLER"),
        ("SET TRANSACTION READ ONLY", "SET TRANSACTION"),
        ("SET max_heap_table_size = 1 << 20", "unknown SET"),
        ("SET GLOBAL sql_mode = ''", "unknown SET"),
    ],
)
def test_what_pins(sql: str, reason: str) -> None:
    effect = classify(sql)
    assert effect.pin and effect.reason == reason


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "SELECT '@x', \"@y\", `@z` FROM t",
        "SELECT 1 -- @x in a comment",
        "SELECT 1 # SET @x = 1",
        "SELECT /* GET_LOCK('a', 1) */ 1",
        "INSERT INTO t VALUES ('create temporary table x'), ('found_rows()')",
        "SELECT @@session.sql_mode, @@version",
    ],
)
def test_what_does_not_pin(sql: str) -> None:
    assert not classify(sql).pin


def test_tracked_sets_use_and_flags() -> None:
    effect = classify("SET NAMES utf8mb4 COLLATE utf8mb4_unicode_ci")
    assert effect.sets == {"names": "NAMES utf8mb4 COLLATE utf8mb4_unicode_ci"}
    effect = classify("SET SESSION sql_mode = 'ANSI', @@time_zone = '+02:00'")
    assert effect.sets == {
        "sql_mode": "SESSION sql_mode = 'ANSI'",
        "time_zone": "@@time_zone = '+02:00'",
    }
    assert classify("SET sql_mode = 'a,b;c'").sets == {"sql_mode": "sql_mode = 'a,b;c'"}
    assert classify("USE `shop`").database == "shop"
    multi = classify("SET autocommit = 0; USE other; SELECT LAST_INSERT_ID()")
    assert multi.sets == {"autocommit": "autocommit = 0"} and multi.database == "other"
    assert multi.reads_last_insert_id and not multi.pin
    assert classify("CALL refresh()").untracked
    assert classify("CALL refresh()").reads_last_insert_id  # a procedure may read it
    assert not classify("SELECT 'CALL x'").untracked
    assert classify("UNLOCK TABLES").unpin_lock_tables


def test_what_the_server_runs_inside_executable_comments_counts() -> None:
    assert classify("/*!40101 SET NAMES latin1 */").sets == {"names": "NAMES latin1"}
    assert classify("/*!40101 SET @OLD_CS = @@character_set_client */").pin
    assert classify("/*M!100100 SET @x = 1 */").pin
    assert not classify("SELECT /*+ MAX_EXECUTION_TIME(1000) */ 1").pin


def test_sets_are_split_and_only_plain_values_overwrite() -> None:
    rails = "SET NAMES utf8mb4, @@SESSION.sql_mode = 'ANSI', @@SESSION.wait_timeout = 100"
    effect = classify(rails)
    assert set(effect.sets) == {"names", "sql_mode", "wait_timeout"}
    assert effect.sets["names"] == "NAMES utf8mb4"
    assert effect.overwrites == {"names", "sql_mode", "wait_timeout"}
    appended = classify("SET sql_mode = CONCAT(@@sql_mode, ',STRICT_ALL_TABLES')")
    assert "sql_mode" in appended.sets and not appended.overwrites
    assert classify("SET sql_mode = @saved").reason == "user variable"
    assert not classify("SELECT 1; SET time_zone = '+00:00'").overwrites


def test_last_insert_id_reads_and_writes() -> None:
    assert classify("SELECT LAST_INSERT_ID()").reads_last_insert_id
    assert classify("SELECT @@identity").reads_last_insert_id
    assert not classify("SELECT LAST_INSERT_ID()").pin
    assert classify("SELECT LAST_INSERT_ID(42)").reason == "LAST_INSERT_ID(expr)"
    assert classify("CREATE TEMPORARY SEQUENCE s").reason == "temporary table"


def test_unterminated_comments_and_literals_stay_linear() -> None:
    # Each used to make every later position rescan to the end (seconds for 60 KB).
    for text in (
        "'/*x" * 20_000,
        "\\'" * 20_000,
        "'\\" * 100_000,  # a quote, a backslash: the literal never closes
        '"\\' * 100_000,
        "/*" * 30_000,
        '"' + "a;" * 30_000,
    ):
        assert isinstance(classify(text).pin, bool)


def test_a_semicolon_in_a_literal_does_not_split() -> None:
    assert split_top_level("SELECT ';'; SELECT 2", ";") == ["SELECT ';'", "SELECT 2"]
    parts = split_top_level("a = 'x,y', b = (1,2), c = \"q\\\"r,s\", d = `w,v`, e = 'it''s,'")
    assert parts == ["a = 'x,y'", "b = (1,2)", 'c = "q\\"r,s"', "d = `w,v`", "e = 'it''s,'"]
    assert split_top_level("SELECT 1; SELECT 'open; x", ";") == ["SELECT 1", "SELECT 'open; x"]
    # An unterminated literal runs to the end: all data, and the server refuses the text.
    assert not classify("SELECT 'open; SET @x = 1").pin


def test_statements_of_megabytes_are_classified_like_small_ones() -> None:
    rows = ",".join(f"({i}, 'row {i}; -- #', \"@{i}\")" for i in range(50_000))
    big = f"INSERT INTO t VALUES {rows}"
    assert len(big) > 1_000_000
    assert classify(big) == classify("INSERT INTO t VALUES (1, 'x', \"@1\")")
    assert classify(big + ", (@x, 'y', 'z')").reason == "user variable"
    many = ";".join(f"INSERT INTO t VALUES ({i}, 'a;b')" for i in range(5_000))
    assert not classify(many).pin
    assert classify(many + "; SET @z = 1").pin


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(st.text(alphabet="SETLCK@'\"`;,()/*#-\\ \nabx=1", max_size=80))
def test_any_text_gets_an_answer(sql: str) -> None:
    effect = classify(sql)  # never raises, never recurses without end
    assert isinstance(effect.pin, bool)
