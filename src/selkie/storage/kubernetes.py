"""``local`` storage on Kubernetes: a PersistentVolumeClaim per branch, cloned from its
parent's, with the compute's secret beside it. The driver that runs the computes is
:mod:`selkie.compute.kubernetes`.

The history reaches a claim's data two ways, both through the API's exec:

- a **hot copy** of a running compute (for a base image) is ``mariadb-backup --backup
  --stream=mbstream`` run in the compute's pod, its stdout unpacked by ``mbstream`` into a
  staging directory on this machine and prepared here (``mariadb-backup --prepare``:
  this machine's MariaDB must be the compute image's version);
- **restored data** (a rebuild of a lost claim, a branch at a past point, a restore) is
  staged on this machine and poured into a new claim by a *fill pod*: a pod of the
  compute image that mounts the claim and sleeps while ``tar -x`` runs in it with the
  staged files on its stdin, then is deleted before a compute mounts the claim.

Neither pod nor command gets anything of Selkie's: the compute pod's own admin password
(from its environment) is all ``mariadb-backup`` uses, and the fill pod has no secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException

from selkie.compute.base import ComputeInfo
from selkie.compute.kubeexec import run_in_pod
from selkie.compute.kubernetes import (
    BRANCH_LABEL,
    COMPONENT,
    DATADIR,
    MANAGED,
    KubernetesDriver,
    branch_objects,
    compute_name,
    mapped,
    pod_running,
    pvc_name,
    secret_name,
)
from selkie.errors import ComputeError, Conflict, NotFound, StorageError
from selkie.model import ProjectSettings, new_password
from selkie.storage.base import ParentState, StorageDriver
from selkie.storage.local import backup_position, run_tool

# The uid and gid of ``mysql`` in the MariaDB images: the owner of the files poured in.
MYSQL_UID = 999
# How long a hot copy or a fill may take (seconds): a claim's worth of data over the API.
COPY_TIMEOUT = 3600.0
# How long a fill pod may take to start, and a deleted claim or pod to go.
POD_TIMEOUT = 300.0
STREAM_CHUNK = 256 << 10
FILL_COMPONENT = "fill"
# In the compute pod: a hot copy to stdout, with the pod's own admin password.
BACKUP_SCRIPT = (
    "set -e; d=$(mktemp -d); trap 'rm -rf \"$d\"' EXIT; "
    'mariadb-backup --backup --stream=mbstream --target-dir="$d" '
    '--socket=/run/mysqld/mysqld.sock --user=root --password="$MARIADB_ROOT_PASSWORD"'
)


def fill_pod_name(branch_id: str) -> str:
    return f"selkie-{branch_id}-fill"


def fill_pod(branch_id: str, namespace: str, image: str) -> dict[str, Any]:
    """A pod that mounts the branch's claim and waits, for its data to be poured in."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": fill_pod_name(branch_id),
            "namespace": namespace,
            "labels": {**MANAGED, COMPONENT: FILL_COMPONENT, BRANCH_LABEL: branch_id},
        },
        "spec": {
            "restartPolicy": "Never",
            "enableServiceLinks": False,
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "fill",
                    "image": image,
                    "command": ["sleep", "3600"],
                    "volumeMounts": [{"name": "data", "mountPath": str(DATADIR)}],
                }
            ],
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": pvc_name(branch_id)}}
            ],
        },
    }


def _tar_chunks(staging: Path) -> Iterator[bytes]:
    """The staged directory as a tar stream, owned by the images' ``mysql``."""
    proc = subprocess.Popen(
        [
            "tar",
            "-c",
            "-f",
            "-",
            "-C",
            str(staging),
            f"--owner={MYSQL_UID}",
            f"--group={MYSQL_UID}",
            "--numeric-owner",
            ".",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        while chunk := proc.stdout.read(STREAM_CHUNK):
            yield chunk
    finally:
        proc.stdout.close()
        if proc.wait() != 0:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise StorageError(f"tar of the staged data failed: {err.strip()[-500:]}")


class KubernetesStorage(StorageDriver):
    """``local`` storage on Kubernetes: a claim per branch, cloned from its parent's."""

    def __init__(
        self, driver: KubernetesDriver, *, project_of: Callable[[str], str], scratch: Path
    ) -> None:
        self.driver = driver
        self.api = driver.api
        self.ks = driver.ks
        # Which project a branch belongs to (for labels).
        self.project_of = project_of
        # Where data is staged on this machine (restores, hot copies).
        self.scratch = scratch

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

    # --- the history's side: staged data in, hot copies out ---------------------------------

    def staging_dir(self, branch_id: str) -> Path:
        self.scratch.mkdir(parents=True, exist_ok=True)
        # Traversable by the unprivileged user restore servers run as, listable by no one.
        self.scratch.chmod(0o711)
        return self.scratch / f"{branch_id}.restore-{secrets.token_hex(4)}"

    async def hot_copy_of(self, endpoint_id: str, info: ComputeInfo, staging: Path) -> int:
        """``mariadb-backup --stream`` in the compute's pod, unpacked and prepared here."""

        def copy() -> None:
            staging.mkdir(parents=True)
            unpack = subprocess.Popen(
                ["mbstream", "-x", "-C", str(staging)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            assert unpack.stdin is not None
            sink = unpack.stdin
            try:
                run_in_pod(
                    self.api.core,
                    self.ks.namespace,
                    f"{compute_name(endpoint_id)}-0",
                    ["sh", "-c", BACKUP_SCRIPT],
                    container="mariadb",
                    stdout=sink.write,
                    timeout=COPY_TIMEOUT,
                )
            finally:
                sink.close()
                code = unpack.wait()
            if code != 0:
                err = unpack.stderr.read().decode(errors="replace") if unpack.stderr else ""
                raise StorageError(f"mbstream failed ({code}): {err.strip()[-500:]}")

        try:
            await asyncio.to_thread(copy)
        except ComputeError as exc:
            raise StorageError(f"hot copy of compute {endpoint_id}: {exc.message}") from exc
        await run_tool(
            shutil.which("mariadb-backup") or "mariadb-backup",
            "--prepare",
            f"--target-dir={staging}",
        )
        return await asyncio.to_thread(backup_position, staging)

    async def swap_in(
        self, branch_id: str, staging: Path, *, old_to: str | None = None, like: str | None = None
    ) -> None:
        """The branch's claim replaced by a new one holding ``staging``. The old data is
        not kept under another branch (a claim cannot be renamed)."""
        if old_to is not None:
            raise Conflict(
                "preserve_under_name is not supported for branches on Kubernetes computes"
            )
        password = await self.driver.password(like or branch_id)
        await self.api.delete("PersistentVolumeClaim", pvc_name(branch_id))
        await self._gone(
            "claim",
            lambda: self.api.core.read_namespaced_persistent_volume_claim(
                pvc_name(branch_id), self.ks.namespace
            ),
        )
        await self.fill_claim(branch_id, staging, password=password)

    async def fill_claim(self, branch_id: str, staging: Path, *, password: str) -> None:
        """A new claim for the branch holding ``staging`` (its Secret set to the admin
        password the staged data carries)."""
        project_id = await asyncio.to_thread(self.project_of, branch_id)
        secret, claim = branch_objects(branch_id, project_id, self.ks, password=password)
        try:
            await self.api.call(
                "create admin secret",
                self.api.core.create_namespaced_secret,
                self.ks.namespace,
                secret,
            )
        except Conflict:
            await self.api.call(
                "update admin secret",
                self.api.core.patch_namespaced_secret,
                secret_name(branch_id),
                self.ks.namespace,
                secret,
            )
        self.driver.forget_password(branch_id)
        await self.api.apply(claim)
        name = fill_pod_name(branch_id)
        await self._delete_pod(name)  # one a crash left
        await self.api.call(
            "create fill pod",
            self.api.core.create_namespaced_pod,
            self.ks.namespace,
            fill_pod(branch_id, self.ks.namespace, self.ks.image),
        )
        try:
            await self._wait_running(branch_id)
            await asyncio.to_thread(
                run_in_pod,
                self.api.core,
                self.ks.namespace,
                name,
                ["tar", "-x", "-f", "-", "-C", str(DATADIR), "--same-owner"],
                container="fill",
                stdin=_tar_chunks(staging),
                timeout=COPY_TIMEOUT,
            )
        except ComputeError as exc:
            raise StorageError(f"filling the claim of branch {branch_id}: {exc.message}") from exc
        finally:
            await self._delete_pod(name)

    async def _wait_running(self, branch_id: str) -> None:
        selector = f"{BRANCH_LABEL}={branch_id},{COMPONENT}={FILL_COMPONENT}"
        why = await self.api.wait_pod(selector, pod_running, "running", POD_TIMEOUT)
        if why is not None:
            raise StorageError(f"the fill pod of branch {branch_id} did not start: {why}")

    async def _delete_pod(self, name: str) -> None:
        with contextlib.suppress(NotFound):
            await self.api.call(
                "delete fill pod",
                self.api.core.delete_namespaced_pod,
                name,
                self.ks.namespace,
                grace_period_seconds=0,
            )
        await self._gone(
            "fill pod", lambda: self.api.core.read_namespaced_pod(name, self.ks.namespace)
        )

    async def _gone(self, what: str, read: Callable[[], Any]) -> None:
        """Until ``read`` answers 404 (deletions finish asynchronously)."""
        deadline = time.monotonic() + POD_TIMEOUT
        while time.monotonic() < deadline:
            try:
                await asyncio.to_thread(read)
            except ApiException as exc:
                if exc.status == 404:
                    return
                raise mapped(exc, f"read {what}") from exc
            await asyncio.sleep(0.2)
        raise StorageError(f"the {what} was not deleted within {POD_TIMEOUT:.0f}s")
