"""What the first start of an empty installation creates: an organization, an API key and a
``demo`` project, so `selkie up` on a fresh machine ends with something to connect to."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

from selkie.control import Control, Created
from selkie.model import Principal
from selkie.store.tables import ProjectRow


@dataclass(frozen=True)
class FirstStart:
    api_key: str | None
    demo: Created | None


def local_principal(control: Control) -> Principal:
    """The operator on this machine, acting directly on the store (CLI without a server)."""
    org = control.organizations.ensure_default()
    return Principal(key_id=0, org_id=org.id, admin=True)


def first_start(control: Control) -> FirstStart:
    """Create an API key when there is none, and a demo project when there is no project."""
    who = local_principal(control)
    secret = None
    if control.api_keys.count() == 0:
        _, secret = control.api_keys.create(who, name="first-key")
    with control.store.read() as s:
        projects = int(s.execute(select(func.count(ProjectRow.id))).scalar_one())
    demo = control.projects.create(who, name="demo") if projects == 0 else None
    return FirstStart(api_key=secret, demo=demo)
