"""The checker on hand-made histories: each anomaly it exists for is caught, and what a
correct database may do (an indeterminate append there or not, a retryable error) is not
reported."""

from __future__ import annotations

from tests.chaos.checker import check
from tests.chaos.history import History, Op, Outcome

OK, FAIL, INFO = Outcome.OK, Outcome.FAIL, Outcome.INFO


def history(*ops: Op) -> History:
    h = History()
    for op in ops:
        h.add(op)
    return h


def append(client: int, value: int, start: float, end: float, outcome: Outcome = OK) -> Op:
    error = None if outcome is OK else 2013
    return Op("append", client, start, end, outcome, value=value, error=error)


def read(start: float, end: float, lists: dict[int, list[int]], client: int = 9) -> Op:
    return Op("read", client, start, end, OK, result=lists)


def balance(start: float, balances: dict[int, int]) -> Op:
    return Op("balance", 9, start, start + 0.1, OK, result=balances)


def test_a_correct_history_passes() -> None:
    h = history(
        append(1, 1, 0, 1),
        append(1, 2, 1, 2, INFO),  # never answered: it did happen
        append(1, 3, 2, 3),
        append(2, 1, 0, 1, INFO),  # never answered: it did not happen
        append(2, 2, 1, 2),
        read(1.5, 1.6, {1: [1]}),
        read(3.5, 3.6, {1: [1, 2, 3], 2: [2]}),
        read(4, 5, {1: [1, 2, 3], 2: [2]}),
        balance(1, {1: 60, 2: 40}),
        Op("transfer", 3, 0, 1, INFO, error=1927, message="lost its backend"),
        Op("transfer", 3, 1, 2, FAIL, error=1213, message="deadlock"),
    )
    report = check(h, accounts=2, balance=50)
    assert report.valid, report.summary()
    assert report.errors == {1927: 1, 1213: 1, 2013: 2}


def test_a_lost_acknowledged_append_is_caught() -> None:
    h = history(append(1, 1, 0, 1), append(1, 2, 1, 2), read(3, 4, {1: [1]}))
    report = check(h, accounts=1, balance=0)
    assert len(report.lost) == 1 and "lacks 2" in report.lost[0], report.summary()
    assert not report.anomalies


def test_an_append_answered_after_the_read_began_is_not_required() -> None:
    h = history(append(1, 1, 0, 3), read(2, 4, {1: []}))
    assert check(h, accounts=1, balance=0).valid


def test_a_stale_read_is_caught() -> None:
    """An indeterminate append one read saw, and a later read did not."""
    h = history(
        append(1, 1, 0, 1),
        append(1, 2, 1, 9, INFO),
        read(2, 3, {1: [1, 2]}),
        read(4, 5, {1: [1]}),
    )
    report = check(h, accounts=1, balance=0)
    assert not report.lost
    assert len(report.anomalies) == 1 and "stale" in report.anomalies[0], report.summary()


def test_concurrent_reads_may_differ() -> None:
    h = history(
        append(1, 1, 0, 1),
        append(1, 2, 1, 9, INFO),
        read(2, 5, {1: [1, 2]}),
        read(3, 6, {1: [1]}),
    )
    assert check(h, accounts=1, balance=0).valid


def test_order_duplicates_and_phantoms_are_caught() -> None:
    h = history(
        append(1, 1, 0, 1),
        append(1, 2, 1, 2),
        append(1, 3, 2, 3, FAIL),
        read(4, 5, {1: [2, 1]}),
        read(6, 7, {1: [1, 2, 2]}),
        read(8, 9, {1: [1, 2, 3, 7]}),
    )
    h.ops[2].error = 1205
    found = check(h, accounts=1, balance=0).anomalies
    assert any("out of order" in x for x in found), found
    assert any("holds 2 2 times" in x for x in found), found
    assert any("holds 3, whose append failed" in x for x in found), found
    assert any("holds 7, never appended" in x for x in found), found


def test_a_changed_total_and_a_negative_balance_are_caught() -> None:
    h = history(balance(1, {1: 60, 2: 50}), balance(2, {1: 110, 2: -10}))
    found = check(h, accounts=2, balance=50).anomalies
    assert len(found) == 2, found
    assert "total 110 instead of 100" in found[0]
    assert "negative balances {2: -10}" in found[1]


def test_an_unexpected_error_code_is_caught() -> None:
    h = history(
        Op("transfer", 1, 0, 1, FAIL, error=1146, message="Table 'db.accounts' doesn't exist"),
        Op("read", 2, 0, 1, INFO, error=0, message="ValueError: ..."),
        Op("append", 3, 0, 1, INFO, value=1, error=2013, message="Lost connection"),
    )
    report = check(h, accounts=1, balance=0)
    assert len(report.unexpected) == 2, report.summary()
    assert "error 1146" in report.unexpected[0] and "error 0" in report.unexpected[1]
    assert not report.valid


def test_a_known_error_is_tolerated_only_during_its_faults() -> None:
    """1290 (read_only before a clean stop) during a suspend is counted apart; the same code
    outside any fault is unexpected, and the refused append must not show up."""
    h = history(
        Op("append", 1, 9.9, 10.3, FAIL, value=1, error=1290, message="--read-only"),
        Op("append", 1, 20.0, 20.1, FAIL, value=2, error=1290, message="--read-only"),
        read(30, 31, {1: [1]}),
    )
    h.fault("suspend", 10.0, 11.0)
    report = check(h, accounts=1, balance=0, known={1290: ("suspend",)})
    assert len(report.known) == 1 and "during suspend" in report.known[0], report.summary()
    assert len(report.unexpected) == 1 and "at 20.000" in report.unexpected[0], report.summary()
    assert any("holds 1, whose append failed (1290)" in x for x in report.anomalies)
