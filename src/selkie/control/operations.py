"""Operations: what the runner did or will do, as the API shows them."""

from __future__ import annotations

from sqlalchemy import select

from selkie import model
from selkie.control.base import ServiceBase
from selkie.errors import NotFound
from selkie.model import Principal
from selkie.store import Page, Store, convert
from selkie.store.tables import OperationRow


class OperationService(ServiceBase):
    def list(self, who: Principal, project_id: str, *, cursor: str | None, limit: int) -> Page:
        with self.store.read() as s:
            self.project_row(s, who, project_id)
            stmt = select(OperationRow).where(OperationRow.project_id == project_id)
            page = Store.page(
                s,
                stmt,
                created_col=OperationRow.created_at,
                key_col=OperationRow.id,
                cursor=cursor,
                limit=limit,
            )
            return Page([convert.operation(r) for r in page.items], page.cursor)

    def get(self, who: Principal, project_id: str, operation_id: str) -> model.Operation:
        with self.store.read() as s:
            self.project_row(s, who, project_id)
            row = s.get(OperationRow, operation_id)
            if row is None or row.project_id != project_id:
                raise NotFound(f"operation {operation_id} not found in project {project_id}")
            return convert.operation(row)
