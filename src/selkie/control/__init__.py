"""The control plane: services over the state store, and (later) the operations runner,
reconciler and scheduler that act on computes."""

from __future__ import annotations

from dataclasses import dataclass

from selkie.config import Settings
from selkie.control.api_keys import ApiKeyService
from selkie.control.base import Created
from selkie.control.branches import BranchService
from selkie.control.connections import ConnectionService
from selkie.control.consumption import ConsumptionService
from selkie.control.databases import DatabaseService
from selkie.control.endpoints import EndpointService
from selkie.control.operations import OperationService
from selkie.control.orgs import OrganizationService
from selkie.control.projects import ProjectService
from selkie.control.restores import RestoreService
from selkie.control.roles import RoleService
from selkie.store import Store


@dataclass(frozen=True)
class Control:
    """Every control-plane service over one store; what the API and the CLI call."""

    store: Store
    settings: Settings
    organizations: OrganizationService
    api_keys: ApiKeyService
    projects: ProjectService
    branches: BranchService
    endpoints: EndpointService
    roles: RoleService
    databases: DatabaseService
    operations: OperationService
    connections: ConnectionService
    consumption: ConsumptionService
    restores: RestoreService

    @classmethod
    def open(cls, store: Store, settings: Settings) -> Control:
        args = (store, settings)
        return cls(
            store=store,
            settings=settings,
            organizations=OrganizationService(*args),
            api_keys=ApiKeyService(*args),
            projects=ProjectService(*args),
            branches=BranchService(*args),
            endpoints=EndpointService(*args),
            roles=RoleService(*args),
            databases=DatabaseService(*args),
            operations=OperationService(*args),
            connections=ConnectionService(*args),
            consumption=ConsumptionService(*args),
            restores=RestoreService(*args),
        )


__all__ = ["Control", "Created"]
