"""``local`` storage on Kubernetes: a PersistentVolumeClaim per branch, cloned from its
parent's, with the compute's secret beside it. The driver that runs the computes is
:mod:`selkie.compute.kubernetes`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from kubernetes.client.exceptions import ApiException

from selkie.compute.kubernetes import (
    DATADIR,
    KubernetesDriver,
    branch_objects,
    mapped,
    pvc_name,
    secret_name,
)
from selkie.model import ProjectSettings, new_password
from selkie.storage.base import ParentState, StorageDriver


class KubernetesStorage(StorageDriver):
    """``local`` storage on Kubernetes: a claim per branch, cloned from its parent's."""

    def __init__(self, driver: KubernetesDriver, *, project_of: Callable[[str], str]) -> None:
        self.driver = driver
        self.api = driver.api
        self.ks = driver.ks
        # Which project a branch belongs to (for labels).
        self.project_of = project_of

    async def create_branch(
        self, branch_id: str, *, parent: ParentState | None, settings: ProjectSettings
    ) -> None:
        if parent is None:
            password = new_password(32)
        else:
            # The clone carries the parent's datadir, and with it the parent's password.
            password = await self.driver.password(parent.branch_id)
        project_id = await asyncio.to_thread(self.project_of, branch_id)
        for obj in branch_objects(
            branch_id,
            project_id,
            self.ks,
            password=password,
            parent_id=parent.branch_id if parent else None,
        ):
            await self.api.apply(obj)

    def compute_datadir(self, branch_id: str, endpoint_id: str) -> Path:
        return DATADIR

    async def prepare_compute(
        self, branch_id: str, endpoint_id: str, settings: ProjectSettings
    ) -> dict[str, str]:
        return {}

    async def delete_branch(self, branch_id: str) -> None:
        await self.api.delete("PersistentVolumeClaim", pvc_name(branch_id))
        await self.api.delete("Secret", secret_name(branch_id))
        self.driver.forget_password(branch_id)

    async def branch_size(self, branch_id: str) -> int | None:
        return None  # a claim's usage is the volume plugin's to meter, not visible here

    def branch_exists(self, branch_id: str) -> bool:
        try:
            self.api.core.read_namespaced_persistent_volume_claim(
                pvc_name(branch_id), self.ks.namespace
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise mapped(exc, "read claim") from exc
        return True
