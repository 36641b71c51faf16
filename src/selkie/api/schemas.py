"""Request and response bodies of the REST API, shaped like Neon's v2 API.

Requests are pydantic models that forbid unknown fields, so a typo is a 422, not a silent
default. Responses embed the frozen snapshots from :mod:`selkie.model` directly.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from selkie import model
from selkie.metering.billing import Invoice

# Ids and names in paths: bounded and printable, so nothing odd reaches the store.
IdStr = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
NameStr = Annotated[str, Field(min_length=1, max_length=64)]
CU = Annotated[float, Field(ge=model.CU_MIN, le=model.CU_MAX, multiple_of=0.25)]
SuspendTimeout = Annotated[StrictInt, Field(ge=-1, le=model.SUSPEND_TIMEOUT_MAX)]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- requests ------------------------------------------------------------------------------


class EndpointSettingsIn(Request):
    autoscaling_limit_min_cu: CU | None = None
    autoscaling_limit_max_cu: CU | None = None
    suspend_timeout_seconds: SuspendTimeout | None = None


class ProjectSettingsIn(Request):
    require_tls: StrictBool | None = None
    storage_mode: model.StorageMode | None = None
    page_server_address: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    page_server_port: Annotated[StrictInt, Field(ge=1, le=65535)] | None = None
    safekeeper_url: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    max_active_endpoints: Annotated[StrictInt, Field(ge=0, le=10_000)] | None = None
    max_cu: CU | None = None
    compute_time_limit_seconds: Annotated[StrictInt, Field(ge=0)] | None = None
    storage_limit_bytes: Annotated[StrictInt, Field(ge=0)] | None = None
    plan: NameStr | None = None
    durability: model.Durability | None = None
    history_retention_seconds: (
        Annotated[StrictInt, Field(ge=0, le=model.HISTORY_RETENTION_MAX)] | None
    ) = None


class BranchSpecIn(Request):
    name: NameStr | None = None
    role_name: NameStr | None = None
    database_name: NameStr | None = None


class ProjectCreateIn(Request):
    name: NameStr | None = None
    org_id: IdStr | None = None
    region_id: NameStr | None = None
    default_endpoint_settings: EndpointSettingsIn | None = None
    settings: ProjectSettingsIn | None = None
    branch: BranchSpecIn | None = None


class ProjectCreateRequest(Request):
    project: ProjectCreateIn = Field(default_factory=ProjectCreateIn)


class ProjectUpdateIn(Request):
    name: NameStr | None = None
    default_endpoint_settings: EndpointSettingsIn | None = None
    settings: ProjectSettingsIn | None = None


class ProjectUpdateRequest(Request):
    project: ProjectUpdateIn


class BranchCreateIn(Request):
    name: NameStr | None = None
    parent_id: IdStr | None = None
    # The parent as it was at a time (RFC 3339) or a GTID position (e.g. 0-1-1234).
    parent_timestamp: datetime | None = None
    parent_lsn: Annotated[str, Field(min_length=5, max_length=64)] | None = None
    # When the branch is deleted with its endpoints (RFC 3339, in the future).
    expires_at: datetime | None = None


class EndpointSpecIn(Request):
    type: model.EndpointType = model.EndpointType.READ_WRITE
    autoscaling_limit_min_cu: CU | None = None
    autoscaling_limit_max_cu: CU | None = None
    suspend_timeout_seconds: SuspendTimeout | None = None


class BranchCreateRequest(Request):
    branch: BranchCreateIn = Field(default_factory=BranchCreateIn)
    endpoints: list[EndpointSpecIn] = Field(default_factory=list, max_length=1)


class BranchRestoreRequest(Request):
    """Replace the branch's data with ``source_branch_id``'s (the branch itself to go back
    in time) as of ``source_timestamp`` or ``source_lsn`` (neither: its latest state).
    ``preserve_under_name`` keeps the data being replaced as a new branch of that name."""

    source_branch_id: IdStr
    source_timestamp: datetime | None = None
    source_lsn: Annotated[str, Field(min_length=5, max_length=64)] | None = None
    preserve_under_name: NameStr | None = None


class BranchUpdateIn(Request):
    name: NameStr | None = None
    protected: StrictBool | None = None
    # A time (RFC 3339) to delete the branch at; null: never (left out: unchanged).
    expires_at: datetime | None = None


class BranchUpdateRequest(Request):
    branch: BranchUpdateIn


class EndpointCreateIn(Request):
    branch_id: IdStr
    type: model.EndpointType = model.EndpointType.READ_WRITE
    autoscaling_limit_min_cu: CU | None = None
    autoscaling_limit_max_cu: CU | None = None
    suspend_timeout_seconds: SuspendTimeout | None = None
    pooler_enabled: StrictBool = False
    pooler_mode: model.PoolerMode = model.PoolerMode.TRANSACTION


class EndpointCreateRequest(Request):
    endpoint: EndpointCreateIn


class EndpointUpdateIn(Request):
    autoscaling_limit_min_cu: CU | None = None
    autoscaling_limit_max_cu: CU | None = None
    suspend_timeout_seconds: SuspendTimeout | None = None
    pooler_enabled: StrictBool | None = None
    pooler_mode: model.PoolerMode | None = None
    disabled: StrictBool | None = None


class EndpointUpdateRequest(Request):
    endpoint: EndpointUpdateIn


class RoleCreateIn(Request):
    name: NameStr


class RoleCreateRequest(Request):
    role: RoleCreateIn


class DatabaseCreateIn(Request):
    name: NameStr
    owner_name: NameStr


class DatabaseCreateRequest(Request):
    database: DatabaseCreateIn


class ApiKeyCreateRequest(Request):
    key_name: NameStr
    org_id: IdStr | None = None
    admin: StrictBool = False


class OrganizationCreateIn(Request):
    name: NameStr


class OrganizationCreateRequest(Request):
    organization: OrganizationCreateIn


# --- responses -----------------------------------------------------------------------------


class Pagination(BaseModel):
    """``cursor`` fetches the next page (pass it back as ``?cursor=``); null at the end."""

    cursor: str | None = None


class ErrorBody(BaseModel):
    code: str
    message: str


class ProjectResponse(BaseModel):
    project: model.Project


class ProjectOperationsResponse(BaseModel):
    """A project changed or deleted, with the operations that carry it out."""

    project: model.Project
    operations: list[model.Operation]


class ProjectsResponse(BaseModel):
    projects: list[model.Project]
    pagination: Pagination


class CreatedResponse(BaseModel):
    project: model.Project
    branch: model.Branch
    endpoints: list[model.Endpoint]
    roles: list[model.Role]
    databases: list[model.Database]
    operations: list[model.Operation]
    connection_uris: list[model.ConnectionUri]


class BranchResponse(BaseModel):
    branch: model.Branch


class BranchOperationsResponse(BaseModel):
    branch: model.Branch
    operations: list[model.Operation]


class BranchesResponse(BaseModel):
    branches: list[model.Branch]
    pagination: Pagination


class EndpointResponse(BaseModel):
    endpoint: model.Endpoint


class EndpointOperationsResponse(BaseModel):
    endpoint: model.Endpoint
    operations: list[model.Operation]


class PoolerMetrics(BaseModel):
    clients: int = 0
    backends_in_use: int = 0
    backends_idle: int = 0
    clients_waiting: int = 0
    pinned_sessions: int = 0
    backends_peak: int = 0
    backend_resets: int = 0
    fast_lane_commands: int = 0


class PoolerResponse(BaseModel):
    endpoint_id: str
    pooler_enabled: bool
    pooler_mode: model.PoolerMode
    metrics: PoolerMetrics


class DurabilityResponse(BaseModel):
    """Where an endpoint's commits stand: received and fsynced by the safekeeper, and held
    by the archive. ``durability`` is the project's setting; ``sync_commit`` what the
    compute does, read from its server: ``on`` while commits wait for the safekeeper,
    ``off`` while they do not (async), ``fallen_back`` while waiting is on but commits do
    not wait (the safekeeper did not answer within the timeout, or is not connected), and
    null when no compute runs (a suspended one takes the setting at its next start or
    thaw) or it did not answer within a second."""

    endpoint_id: str
    durability: model.Durability
    streaming: bool
    sync_commit: Literal["on", "off", "fallen_back"] | None
    lag_seconds: float
    lag_bytes: int
    received: str | None
    archived: str | None
    error: str | None


class EndpointsResponse(BaseModel):
    endpoints: list[model.Endpoint]
    pagination: Pagination


class RoleResponse(BaseModel):
    role: model.Role


class RoleOperationsResponse(BaseModel):
    role: model.Role
    operations: list[model.Operation]


class RolesResponse(BaseModel):
    roles: list[model.Role]


class DatabaseResponse(BaseModel):
    database: model.Database


class DatabaseOperationsResponse(BaseModel):
    database: model.Database
    operations: list[model.Operation]


class DatabasesResponse(BaseModel):
    databases: list[model.Database]


class OperationResponse(BaseModel):
    operation: model.Operation


class OperationsResponse(BaseModel):
    operations: list[model.Operation]
    pagination: Pagination


class ConnectionUriResponse(BaseModel):
    uri: str
    connection_parameters: model.ConnectionParameters
    password_included: Literal[False] = False


class ApiKeyCreatedResponse(BaseModel):
    id: int
    key: str
    name: str
    org_id: str
    admin: bool
    created_at: str


class ApiKeysResponse(BaseModel):
    api_keys: list[model.ApiKey]
    pagination: Pagination


class OrganizationResponse(BaseModel):
    organization: model.Organization


class OrganizationsResponse(BaseModel):
    organizations: list[model.Organization]
    pagination: Pagination


class Health(BaseModel):
    """Up or not. No version: an unauthenticated caller need not learn what to attack."""

    status: Literal["ok"]
    # Whether this process leads the scheduler (None: it runs none).
    leader: bool | None = None


class ConsumptionPeriod(BaseModel):
    timeframe_start: datetime
    timeframe_end: datetime
    active_time_seconds: float
    compute_time_seconds: float
    written_data_bytes: int
    data_transfer_bytes: int
    data_storage_bytes_hour: float
    instant_restore_bytes_hour: float


class ProjectConsumption(BaseModel):
    project_id: str
    consumption: list[ConsumptionPeriod]


class ConsumptionResponse(BaseModel):
    projects: list[ProjectConsumption]


class QuotaOut(BaseModel):
    compute_time_limit_seconds: int | None
    storage_limit_bytes: int | None
    # Why computes may not run now (the proxy refuses wakes with this); empty when they may.
    exceeded: list[str]


class ProjectUsageResponse(BaseModel):
    project_id: str
    plan: str
    period_start: datetime
    period_end: datetime
    active_time_seconds: float
    compute_time_seconds: float
    written_data_bytes: int
    data_transfer_bytes: int
    data_storage_bytes_hour: float
    instant_restore_bytes_hour: float
    storage_bytes: int
    quota: QuotaOut


class InvoiceResponse(BaseModel):
    invoice: Invoice


class SchemaDiffResponse(BaseModel):
    """A unified diff of two branches' schemas (empty: the same)."""

    diff: str
