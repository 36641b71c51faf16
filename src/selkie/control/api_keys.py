"""API keys: who may call the API. Keys are stored hashed; the key itself is shown once."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from selkie import model
from selkie.control.base import ServiceBase, check_org_limit
from selkie.errors import Forbidden, NotFound, Unauthorized
from selkie.model import Principal, utcnow
from selkie.store import Page, Store, convert
from selkie.store.tables import ApiKeyRow, OrganizationRow

# last_used_at is informational; writing it on every request would serialize reads on SQLite.
_LAST_USED_RESOLUTION = timedelta(seconds=60)


class ApiKeyService(ServiceBase):
    def create(
        self,
        who: Principal,
        *,
        name: str,
        org_id: str | None = None,
        admin: bool = False,
    ) -> tuple[model.ApiKey, str]:
        """Create a key; returns it with its secret, which is shown this once only."""
        model.validate_name("API key", name)
        target_org = org_id or who.org_id
        if admin and not who.admin:
            raise Forbidden("only an admin API key can create admin keys")
        if target_org != who.org_id and not who.admin:
            raise NotFound(f"organization {target_org} not found")
        secret = model.new_api_key()
        with self.store.write() as s:
            if s.get(OrganizationRow, target_org) is None:
                raise NotFound(f"organization {target_org} not found")
            check_org_limit(s, self.settings, target_org, "api_keys")
            row = ApiKeyRow(
                org_id=target_org, name=name, key_hash=model.hash_api_key(secret), admin=admin
            )
            s.add(row)
            s.flush()
            return convert.api_key(row), secret

    def list(self, who: Principal, *, cursor: str | None, limit: int) -> Page:
        with self.store.read() as s:
            stmt = select(ApiKeyRow).where(ApiKeyRow.revoked_at.is_(None))
            if not who.admin:
                # An ordinary key sees its organization's ordinary keys; admin keys are the
                # operator's.
                stmt = stmt.where(ApiKeyRow.org_id == who.org_id).where(ApiKeyRow.admin.is_(False))
            page = Store.page(
                s,
                stmt,
                created_col=ApiKeyRow.created_at,
                key_col=ApiKeyRow.id,
                cursor=cursor,
                limit=limit,
            )
            return Page([convert.api_key(r) for r in page.items], page.cursor)

    def revoke(self, who: Principal, key_id: int) -> model.ApiKey:
        with self.store.write() as s:
            row = s.get(ApiKeyRow, key_id)
            if (
                row is None
                or row.revoked_at is not None
                or not who.sees(row.org_id)
                or (row.admin and not who.admin)
            ):
                raise NotFound(f"API key {key_id} not found")
            row.revoked_at = utcnow()
            s.flush()
            return convert.api_key(row)

    def authenticate(self, secret: str) -> Principal:
        """Map a bearer token to its principal; Unauthorized for anything else."""
        if not secret:
            raise Unauthorized("missing API key: send Authorization: Bearer <key>")
        digest = model.hash_api_key(secret)
        with self.store.read() as s:
            row = s.execute(select(ApiKeyRow).where(ApiKeyRow.key_hash == digest)).scalar()
            if row is None or row.revoked_at is not None:
                raise Unauthorized("invalid or revoked API key")
            principal = Principal(key_id=row.id, org_id=row.org_id, admin=row.admin)
            stale = row.last_used_at is None or utcnow() - row.last_used_at > _LAST_USED_RESOLUTION
        if stale:
            with self.store.write() as s:
                fresh = s.get(ApiKeyRow, principal.key_id)
                if fresh is not None:
                    fresh.last_used_at = utcnow()
        return principal

    def principal(self, key_id: int) -> Principal:
        """The principal of a key authenticated earlier (a console session), as long as
        the key is still valid; Unauthorized once it is revoked or gone."""
        with self.store.read() as s:
            row = s.get(ApiKeyRow, key_id)
            if row is None or row.revoked_at is not None:
                raise Unauthorized("the API key of this session was revoked")
            return Principal(key_id=row.id, org_id=row.org_id, admin=row.admin)

    def count(self) -> int:
        with self.store.read() as s:
            return int(s.execute(select(func.count(ApiKeyRow.id))).scalar_one())
