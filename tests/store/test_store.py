"""The state store on SQLite and on a real PostgreSQL: migrations, UTC timestamps,
compare-and-set transitions under concurrency, pagination, persistence."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select

from selkie.config import load_settings
from selkie.control import Control
from selkie.control.bootstrap import local_principal
from selkie.errors import Conflict, InvalidInput
from selkie.model import EndpointState
from selkie.store import Store
from selkie.store.tables import Base, EndpointRow, OperationRow


@pytest.fixture
def store(store_url: str):  # type: ignore[no-untyped-def]
    s = Store(store_url)
    yield s
    s.close()


@pytest.fixture
def control(store: Store, tmp_path) -> Control:  # type: ignore[no-untyped-def]
    return Control.open(store, load_settings(environ={"SELKIE_DATA_DIR": str(tmp_path)}))


def test_migrations_create_exactly_the_declared_schema(store: Store) -> None:
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        tables = set(inspect(conn).get_table_names())
    assert diff == []
    assert {"projects", "branches", "endpoints", "roles", "databases", "operations"} <= tables
    # Running the migrations again is a no-op.
    store.migrate()


def test_timestamps_are_utc_aware(control: Control) -> None:
    who = local_principal(control)
    created = control.projects.create(who, name="tz")
    got = control.projects.get(who, created.project.id)
    assert got.created_at.tzinfo is not None
    assert got.created_at.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - got.created_at) < timedelta(seconds=30)


def _endpoint(control: Control) -> str:
    created = control.projects.create(local_principal(control), name="cas")
    return created.endpoints[0].id


def test_transition_is_compare_and_set(store: Store, control: Control) -> None:
    ep = _endpoint(control)
    with store.write() as s:
        gen = Store.transition_endpoint(
            s,
            ep,
            expected_state=EndpointState.INIT,
            expected_generation=0,
            new_state=EndpointState.STARTING,
        )
    assert gen == 1
    # A stale generation or a wrong state loses and changes nothing.
    with store.write() as s:
        assert (
            Store.transition_endpoint(
                s,
                ep,
                expected_state=EndpointState.STARTING,
                expected_generation=0,
                new_state=EndpointState.ACTIVE,
            )
            is None
        )
        assert (
            Store.transition_endpoint(
                s,
                ep,
                expected_state=EndpointState.SUSPENDED,
                expected_generation=1,
                new_state=EndpointState.ACTIVE,
            )
            is None
        )
    with store.read() as s:
        row = s.get(EndpointRow, ep)
        assert row is not None
        assert (row.current_state, row.generation) == ("starting", 1)


def test_transition_rolls_back_with_its_transaction(store: Store, control: Control) -> None:
    """The usage event or operation written beside a transition shares its fate."""
    ep = _endpoint(control)
    with pytest.raises(RuntimeError), store.write() as s:
        Store.transition_endpoint(
            s,
            ep,
            expected_state=EndpointState.INIT,
            expected_generation=0,
            new_state=EndpointState.STARTING,
        )
        raise RuntimeError("crash between the transition and the commit")
    with store.read() as s:
        row = s.get(EndpointRow, ep)
        assert row is not None and row.current_state == "init" and row.generation == 0


def test_concurrent_transitions_exactly_one_wins(store: Store, control: Control) -> None:
    ep = _endpoint(control)
    wins: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def attempt() -> None:
        try:
            barrier.wait()
            with store.write() as s:
                gen = Store.transition_endpoint(
                    s,
                    ep,
                    expected_state=EndpointState.INIT,
                    expected_generation=0,
                    new_state=EndpointState.STARTING,
                )
                if gen is not None:
                    Store.set_meta(s, f"winner-{threading.get_ident()}", "1")
                    wins.append(gen)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert wins == [1]
    with store.read() as s:
        row = s.get(EndpointRow, ep)
        assert row is not None and row.generation == 1


def test_integrity_errors_become_conflicts(store: Store) -> None:
    with store.write() as s:
        Store.set_meta(s, "k", "v")
    from selkie.store.tables import MetaRow

    with pytest.raises(Conflict), store.write() as s:
        s.add(MetaRow(key="k", value="again"))
        s.flush()


def test_keyset_pagination_walks_everything_once(store: Store, control: Control) -> None:
    who = local_principal(control)
    made = {control.projects.create(who, name=f"p{i}").project.id for i in range(7)}
    seen: list[str] = []
    cursor = None
    while True:
        page = control.projects.list(who, cursor=cursor, limit=3)
        seen += [p.id for p in page.items]
        cursor = page.cursor
        if cursor is None:
            break
    assert sorted(seen) == sorted(made)
    with pytest.raises(InvalidInput):
        control.projects.list(who, cursor="not-a-cursor", limit=3)
    with pytest.raises(InvalidInput):
        control.projects.list(who, cursor=None, limit=0)


def test_state_survives_reopening(store_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = load_settings(environ={"SELKIE_DATA_DIR": str(tmp_path)})
    first = Store(store_url)
    ctl = Control.open(first, settings)
    created = ctl.projects.create(local_principal(ctl), name="durable")
    first.close()
    second = Store(store_url)
    try:
        ctl2 = Control.open(second, settings)
        got = ctl2.projects.get(local_principal(ctl2), created.project.id)
        assert got.name == "durable"
        with second.read() as s:
            ops = (
                s.execute(select(OperationRow).where(OperationRow.project_id == created.project.id))
                .scalars()
                .all()
            )
            assert [o.action for o in ops] == ["create_timeline"]
    finally:
        second.close()
