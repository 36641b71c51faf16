"""A full disk told from MariaDB's own error log lines (as 10.11 writes them), only those
of the server's current run."""

from __future__ import annotations

from selkie.compute.diskfull import disk_full, disk_full_reason, with_cause

START = (
    "2026-12-07  2:23:19 0 [Note] Starting MariaDB 10.11.19-MariaDB-0+deb12u1-log source "
    "revision 5843d8475120241667a7ce0f8a1abb6c9b43a273 server_uid tUBz= as process 30886"
)
INNODB = (
    "2026-12-07  2:08:49 8 [ERROR] InnoDB: preallocating 50331648 bytes for file "
    "./selkiedb/t.ibd failed with error 28"
)
BINLOG = (
    "2026-12-07  2:25:12 7 [Warning] mariadbd: Disk is full writing './binlog.000002' "
    '(Errcode: 28 "No space left on device"). Waiting for someone to free space... '
    "(Expect up to 60 secs delay for server to continue after freeing disk space)"
)
FATAL = "2026-12-07  2:08:49 8 [ERROR] [FATAL] InnoDB: Error (Out of disk space) in rollback."
READY = "2026-12-07  2:23:20 0 [Note] /usr/sbin/mariadbd: ready for connections."


def test_the_first_line_of_the_current_run_is_the_evidence() -> None:
    log = "\n".join([START, READY, INNODB, FATAL, "backtrace…"])
    assert disk_full(log) == (
        "InnoDB: preallocating 50331648 bytes for file ./selkiedb/t.ibd failed with error 28"
    )
    assert disk_full("\n".join([START, BINLOG])) == BINLOG.split("[Warning] ")[1]
    assert disk_full(FATAL) == "[FATAL] InnoDB: Error (Out of disk space) in rollback."


def test_an_earlier_run_or_other_errors_say_nothing() -> None:
    assert disk_full("\n".join([START, INNODB, FATAL, START, READY])) is None
    other = "2026-12-07  2:08:49 8 [ERROR] InnoDB: Table t is corrupted (error 128)"
    assert disk_full("\n".join([START, other])) is None


def test_a_reason_names_the_disk_once() -> None:
    log = "\n".join([START, INNODB])
    reason = with_cause("mariadbd exited unexpectedly (signal SIGABRT)", log)
    assert reason.startswith("the compute's disk is full (InnoDB: preallocating")
    assert reason.endswith(". mariadbd exited unexpectedly (signal SIGABRT)")
    named = disk_full_reason("x; 0 KiB free")
    assert with_cause(named, log) == named
    assert with_cause("killed", READY) == "killed"
