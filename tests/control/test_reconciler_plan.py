"""The reconciler's decisions, as a pure function of recorded and observed state."""

from __future__ import annotations

from selkie.compute.base import ComputeInfo
from selkie.control.reconciler import Recorded, plan
from selkie.model import EndpointState as S


def rec(ep: str, state: S) -> Recorded:
    return Recorded(ep, state, 3)


def up(ep: str) -> ComputeInfo:
    return ComputeInfo(endpoint_id=ep, running=True, pid=1)


def test_plan_covers_every_combination() -> None:
    recorded = [
        rec("active-up", S.ACTIVE),
        rec("active-gone", S.ACTIVE),
        rec("starting-up", S.STARTING),
        rec("starting-gone", S.STARTING),
        rec("suspending-up", S.SUSPENDING),
        rec("suspending-gone", S.SUSPENDING),
        rec("suspended-up", S.SUSPENDED),
        rec("suspended", S.SUSPENDED),
        rec("deleted-up", S.DELETED),
        rec("failed-up", S.FAILED),
    ]
    observed = [
        up(e)
        for e in (
            "active-up",
            "starting-up",
            "suspending-up",
            "suspended-up",
            "deleted-up",
            "failed-up",
            "unknown-up",
        )
    ]
    observed.append(ComputeInfo(endpoint_id="suspended", running=False))
    p = plan(recorded, observed)
    assert p.adopt == ["active-up"]
    assert sorted(p.stop) == sorted(
        [
            ("starting-up", S.SUSPENDED),
            ("suspending-up", S.SUSPENDED),
            ("suspended-up", S.SUSPENDED),  # a warm one's frozen compute: recorded cold
            ("deleted-up", None),
            ("failed-up", None),
            ("unknown-up", None),
        ]
    )
    assert p.fail == ["active-gone"]
    assert sorted(p.settle) == ["starting-gone", "suspending-gone"]


def test_nothing_to_do_when_they_agree() -> None:
    p = plan([rec("a", S.ACTIVE), rec("b", S.SUSPENDED)], [up("a")])
    assert (p.adopt, p.stop, p.fail, p.settle) == (["a"], [], [], [])


def test_with_a_shared_store_recent_changes_are_left_to_their_owner() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 11, 29, 12, tzinfo=UTC)
    grace = timedelta(seconds=90)

    def at(state: S, ep: str, age: float) -> Recorded:
        return Recorded(ep, state, 3, updated_at=now - timedelta(seconds=age))

    recorded = [
        at(S.SUSPENDED, "just-started-elsewhere", 1),  # observed up, record not yet active
        at(S.SUSPENDED, "orphan", 600),
        at(S.STARTING, "starting-now", 5),
        at(S.STARTING, "stuck-starting", 600),
        at(S.ACTIVE, "active-just-now", 2),  # observed gone: may have started after the list
        at(S.ACTIVE, "dead", 600),
    ]
    observed = [up("just-started-elsewhere"), up("orphan")]
    out = plan(recorded, observed, now=now, grace=grace)
    assert out.stop == [("orphan", S.SUSPENDED)]
    assert out.settle == ["stuck-starting"]
    assert out.fail == ["dead"]
    assert out.adopt == []
    # Without a grace (one control plane), everything is acted on at once.
    alone = plan(recorded, observed)
    assert ("just-started-elsewhere", S.SUSPENDED) in alone.stop
    assert "starting-now" in alone.settle and "active-just-now" in alone.fail
