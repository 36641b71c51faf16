"""Property-based fuzzing of the API from its own OpenAPI document (schemathesis): whatever
a client sends, the answer is never a 5xx. Runs once with the generated ids and once with the
ids of real objects, so the handlers behind the 404s are exercised too."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from schemathesis.openapi import from_asgi

from selkie.api.app import create_app
from selkie.config import load_settings
from selkie.control import Control
from selkie.control.bootstrap import local_principal
from selkie.store import Store


@pytest.fixture
def world(tmp_path) -> Iterator[dict[str, Any]]:  # type: ignore[no-untyped-def]
    settings_ = load_settings(environ={"SELKIE_DATA_DIR": str(tmp_path)})
    store = Store(settings_.effective_database_url)
    control = Control.open(store, settings_)
    who = local_principal(control)
    _, key = control.api_keys.create(who, name="fuzz")
    created = control.projects.create(who, name="fuzz")
    app = create_app(control)
    yield {
        "app": app,
        "key": key,
        "ids": {
            "project_id": created.project.id,
            "branch_id": created.branch.id,
            "endpoint_id": created.endpoints[0].id,
            "role_name": created.roles[0].name,
            "database_name": created.databases[0].name,
            "operation_id": created.operations[0].id,
            "org_id": who.org_id,
        },
    }
    store.close()


def _operations(world: dict[str, Any]) -> list[Any]:
    schema = from_asgi("/openapi.json", world["app"])
    return [result.ok() for result in schema.get_all_operations()]


def _call(case: Any, world: dict[str, Any]) -> None:
    response = case.call(headers={"Authorization": f"Bearer {world['key']}"})
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
    )
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"code", "message"} and body["message"], body


def _fuzz(world: dict[str, Any], *, real_ids: bool) -> int:
    """Run every operation's generated cases; returns how many requests were made."""
    calls = 0
    for operation in _operations(world):

        @FUZZ
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            nonlocal calls
            if real_ids and case.path_parameters:
                for name in list(case.path_parameters):
                    if name in world["ids"]:
                        case.path_parameters[name] = world["ids"][name]
            calls += 1
            _call(case, world)

        run()
    return calls


FUZZ = settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)


def test_generated_requests_never_5xx(world: dict[str, Any]) -> None:
    assert _fuzz(world, real_ids=False) > 300


def test_requests_on_real_objects_never_5xx(world: dict[str, Any]) -> None:
    assert _fuzz(world, real_ids=True) > 300
