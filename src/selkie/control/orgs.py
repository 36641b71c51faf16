"""Organizations: the tenants that own projects, and the default one of a fresh install."""

from __future__ import annotations

from sqlalchemy import select

from selkie import model
from selkie.control.base import ServiceBase
from selkie.errors import Forbidden, NotFound
from selkie.model import Principal
from selkie.store import Page, Store, convert
from selkie.store.tables import MetaRow, OrganizationRow

DEFAULT_ORG_META = "default_org_id"


class OrganizationService(ServiceBase):
    def ensure_default(self) -> model.Organization:
        """The organization that the first start creates, and that keys default to."""
        with self.store.write() as s:
            meta = s.get(MetaRow, DEFAULT_ORG_META)
            if meta is not None:
                row = s.get(OrganizationRow, meta.value)
                if row is not None:
                    return convert.organization(row)
            row = OrganizationRow(id=model.new_id("org"), name="default")
            s.add(row)
            s.flush()
            Store.set_meta(s, DEFAULT_ORG_META, row.id)
            return convert.organization(row)

    def create(self, who: Principal, *, name: str) -> model.Organization:
        if not who.admin:
            raise Forbidden("only an admin API key can create organizations")
        model.validate_name("organization", name)
        with self.store.write() as s:
            row = OrganizationRow(id=model.new_id("org"), name=name)
            s.add(row)
            s.flush()
            return convert.organization(row)

    def list(self, who: Principal, *, cursor: str | None, limit: int) -> Page:
        with self.store.read() as s:
            stmt = select(OrganizationRow)
            if not who.admin:
                stmt = stmt.where(OrganizationRow.id == who.org_id)
            page = Store.page(
                s,
                stmt,
                created_col=OrganizationRow.created_at,
                key_col=OrganizationRow.id,
                cursor=cursor,
                limit=limit,
            )
            return Page([convert.organization(r) for r in page.items], page.cursor)

    def get(self, who: Principal, org_id: str) -> model.Organization:
        with self.store.read() as s:
            row = s.get(OrganizationRow, org_id)
            if row is None or not who.sees(row.id):
                raise NotFound(f"organization {org_id} not found")
            return convert.organization(row)
