"""The Kubernetes compute driver (and the branch storage that goes with it).

Per endpoint: a StatefulSet with 0 or 1 replicas running the MariaDB image (the page-server
image in ``pageserver`` mode), a headless Service, and a ConfigMap with the rendered
``my.cnf``. Per branch (``local`` storage mode): a PersistentVolumeClaim holding its datadir
(a branch of a branch is a CSI volume clone of its parent's claim) and a Secret with the
admin password that datadir was initialized with. Resources come from the endpoint's CU.

Suspend scales to 0 (the pod gets SIGTERM: a clean shutdown that dumps the buffer pool);
resume scales to 1 and waits for the pod's Ready condition with a watch, not by polling.
Kubernetes API errors become Selkie's own: 404 NotFound, 409 Conflict, 422 InvalidInput,
401/403 ConfigError (the service account's RBAC), anything else ComputeError.

This is the only module that imports the ``kubernetes`` client. No cluster runs on the
machines this was written on: the driver is tested against a fake API server that speaks
the REST and watch paths it uses, and the objects are validated against the Kubernetes
OpenAPI schemas; see docs/kubernetes.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

from selkie.compute.base import ComputeDriver, ComputeInfo, ComputeSpec
from selkie.compute.mariadb import Sizing, render_config, run_statements, timeouts
from selkie.errors import ComputeError, ConfigError, Conflict, InvalidInput, NotFound, SelkieError
from selkie.model import new_password

log = logging.getLogger(__name__)
T = TypeVar("T")

PORT = 3306
DATADIR = Path("/var/lib/mysql")
MANAGED = {"app.kubernetes.io/managed-by": "selkie"}
EP_LABEL = "selkie.dev/endpoint"
BRANCH_LABEL = "selkie.dev/branch"
PROJECT_LABEL = "selkie.dev/project"
COMPONENT = "app.kubernetes.io/component"


@dataclass(frozen=True, kw_only=True)
class KubeSettings:
    namespace: str = "default"
    kubeconfig: str = ""  # a kubeconfig file; empty: in-cluster, else the default file
    image: str = "mariadb:11.4"
    pageserver_image: str = ""
    storage_class: str = ""
    storage_size: str = "10Gi"
    stop_grace_seconds: int = 30


# --- names and objects (pure) ----------------------------------------------------------------


def compute_name(endpoint_id: str) -> str:
    return f"selkie-{endpoint_id}"


def pvc_name(branch_id: str) -> str:
    return f"selkie-{branch_id}-data"


def secret_name(branch_id: str) -> str:
    return f"selkie-{branch_id}-admin"


def _labels(spec: ComputeSpec, component: str) -> dict[str, str]:
    return {
        **MANAGED,
        "app.kubernetes.io/name": "selkie-compute",
        COMPONENT: component,
        EP_LABEL: spec.endpoint_id,
        BRANCH_LABEL: spec.branch_id,
        PROJECT_LABEL: spec.project_id,
    }


def render_cnf(spec: ComputeSpec) -> str:
    return render_config(
        sizing=Sizing.for_cu(spec.cu),
        datadir=DATADIR,
        socket=Path("/run/mysqld/mysqld.sock"),
        port=PORT,
        pid_file=Path("/run/mysqld/mysqld.pid"),
        error_log=None,  # stderr: the pod's log
        # The pod's own addresses: its private network and loopback.
        bind_address="0.0.0.0",  # noqa: S104
        extra=spec.server_options,
    )


def compute_objects(spec: ComputeSpec, ks: KubeSettings, *, replicas: int) -> list[dict[str, Any]]:
    """The ConfigMap, headless Service and StatefulSet of one endpoint's compute."""
    name = compute_name(spec.endpoint_id)
    cnf = render_cnf(spec)
    # Page-server options, not the history's (a binary log, semi-sync): an empty volume.
    pageserver = "innodb_page_server_address" in spec.server_options
    sizing = Sizing.for_cu(spec.cu)
    resources = {
        "cpu": f"{max(1, round(spec.cu * 1000))}m",
        "memory": f"{max(256, sizing.memory_bytes // 2**20)}Mi",
    }
    data_volume: dict[str, Any] = (
        {"name": "data", "emptyDir": {}}
        if pageserver
        else {"name": "data", "persistentVolumeClaim": {"claimName": pvc_name(spec.branch_id)}}
    )
    meta = {"name": name, "namespace": ks.namespace, "labels": _labels(spec, "compute")}
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {**meta, "name": f"{name}-config"},
        "data": {"selkie.cnf": cnf},
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "clusterIP": "None",
            "selector": {EP_LABEL: spec.endpoint_id},
            "ports": [{"name": "mysql", "port": PORT, "targetPort": "mysql"}],
        },
    }
    pod_labels = _labels(spec, "compute")
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta,
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {EP_LABEL: spec.endpoint_id}},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    # A new my.cnf (a resize) rolls the pod.
                    "annotations": {
                        "selkie.dev/config-digest": hashlib.sha256(cnf.encode()).hexdigest()[:16]
                    },
                },
                "spec": {
                    "terminationGracePeriodSeconds": ks.stop_grace_seconds,
                    "enableServiceLinks": False,
                    "automountServiceAccountToken": False,
                    "securityContext": {"fsGroup": 999},
                    "containers": [
                        {
                            "name": "mariadb",
                            "image": ks.pageserver_image if pageserver else ks.image,
                            "ports": [{"name": "mysql", "containerPort": PORT}],
                            "env": [
                                {
                                    "name": "MARIADB_ROOT_PASSWORD",
                                    "valueFrom": {
                                        "secretKeyRef": {
                                            "name": secret_name(spec.branch_id),
                                            "key": "password",
                                        }
                                    },
                                }
                            ],
                            "resources": {"requests": resources, "limits": resources},
                            "readinessProbe": {
                                "exec": {"command": ["mariadb-admin", "--protocol=socket", "ping"]},
                                "periodSeconds": 1,
                                "timeoutSeconds": 5,
                                "failureThreshold": 3,
                            },
                            "volumeMounts": [
                                {"name": "data", "mountPath": str(DATADIR)},
                                {
                                    "name": "config",
                                    "mountPath": "/etc/mysql/conf.d",
                                    "readOnly": True,
                                },
                            ],
                        }
                    ],
                    "volumes": [
                        data_volume,
                        {"name": "config", "configMap": {"name": f"{name}-config"}},
                    ],
                },
            },
        },
    }
    return [config_map, service, statefulset]


def branch_objects(
    branch_id: str,
    project_id: str,
    ks: KubeSettings,
    *,
    password: str,
    parent_id: str | None = None,
) -> list[dict[str, Any]]:
    """A branch's Secret (the admin password its datadir was made with) and its claim."""
    labels = {
        **MANAGED,
        "app.kubernetes.io/name": "selkie-branch",
        COMPONENT: "branch",
        BRANCH_LABEL: branch_id,
        PROJECT_LABEL: project_id,
    }
    pvc_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": ks.storage_size}},
    }
    if ks.storage_class:
        pvc_spec["storageClassName"] = ks.storage_class
    if parent_id is not None:
        pvc_spec["dataSource"] = {"kind": "PersistentVolumeClaim", "name": pvc_name(parent_id)}
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": secret_name(branch_id),
                "namespace": ks.namespace,
                "labels": labels,
            },
            "type": "Opaque",
            "data": {"password": base64.b64encode(password.encode()).decode()},
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": pvc_name(branch_id), "namespace": ks.namespace, "labels": labels},
            "spec": pvc_spec,
        },
    ]


# --- the API -------------------------------------------------------------------------------


def mapped(exc: ApiException, what: str) -> SelkieError:
    status = int(exc.status or 0)
    reason = f"Kubernetes API: {what}: {status} {exc.reason or ''}".strip()
    if status == 404:
        return NotFound(reason)
    if status == 409:
        return Conflict(reason)
    if status == 422:
        return InvalidInput(reason)
    if status in (401, 403):
        return ConfigError(f"{reason} (check the service account's RBAC in its namespace)")
    return ComputeError(reason)


def _pod_ready(pod: Any) -> bool:
    if pod is None or pod.metadata.deletion_timestamp is not None or pod.status is None:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def pod_running(pod: Any) -> bool:
    """Its server is up, as far as the control plane is concerned: the pod is Running, has
    an address and is not being deleted. (Ready is what a start waits for; a pod that fails
    a probe or two under load is still running its server.)"""
    return (
        pod is not None
        and pod.metadata.deletion_timestamp is None
        and pod.status is not None
        and pod.status.phase == "Running"
        and bool(pod.status.pod_ip)
    )


def pod_failure(pod: Any) -> str | None:
    """Why a pod will not become ready on its own (a crash loop, a bad image), or None."""
    for cs in (pod.status.container_statuses or []) if pod.status else []:
        waiting = cs.state.waiting if cs.state else None
        if waiting is not None and waiting.reason in (
            "CrashLoopBackOff",
            "ErrImagePull",
            "ImagePullBackOff",
            "CreateContainerConfigError",
            "InvalidImageName",
        ):
            return f"{waiting.reason}: {waiting.message or ''}".strip()
    return None


_Watch: Any = k8s_watch.Watch


class KubeApi:
    """The calls the driver makes, each mapping API errors, run off the event loop."""

    def __init__(self, ks: KubeSettings, api_client: Any = None) -> None:
        self.ks = ks
        if api_client is None:
            loader: Any = k8s_config
            if ks.kubeconfig:
                loader.load_kube_config(config_file=ks.kubeconfig)
            else:
                try:
                    loader.load_incluster_config()
                except k8s_config.ConfigException:
                    loader.load_kube_config()
            api_client = k8s.ApiClient()
        self.api_client = api_client
        # Typed as Any: the client's models are generated and loosely typed.
        self.core: Any = k8s.CoreV1Api(api_client)
        self.apps: Any = k8s.AppsV1Api(api_client)

    async def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        def run() -> T:
            try:
                return fn(*args, **kwargs)
            except ApiException as exc:
                raise mapped(exc, what) from exc

        return await asyncio.to_thread(run)

    async def apply(self, obj: dict[str, Any]) -> None:
        """Create the object, or bring an existing one to this spec."""
        kind, name, ns = obj["kind"], obj["metadata"]["name"], self.ks.namespace
        create, patch = {
            "ConfigMap": (
                self.core.create_namespaced_config_map,
                self.core.patch_namespaced_config_map,
            ),
            "Service": (self.core.create_namespaced_service, None),
            "StatefulSet": (
                self.apps.create_namespaced_stateful_set,
                self.apps.patch_namespaced_stateful_set,
            ),
            "Secret": (self.core.create_namespaced_secret, None),
            "PersistentVolumeClaim": (
                self.core.create_namespaced_persistent_volume_claim,
                None,
            ),
        }[kind]
        try:
            await self.call(f"create {kind} {name}", create, ns, obj)
        except Conflict:
            if patch is not None:  # Services, Secrets and claims keep what they were made with
                await self.call(f"update {kind} {name}", patch, name, ns, obj)

    async def delete(self, kind: str, name: str) -> None:
        fn = {
            "ConfigMap": self.core.delete_namespaced_config_map,
            "Service": self.core.delete_namespaced_service,
            "StatefulSet": self.apps.delete_namespaced_stateful_set,
            "Secret": self.core.delete_namespaced_secret,
            "PersistentVolumeClaim": self.core.delete_namespaced_persistent_volume_claim,
        }[kind]
        with contextlib.suppress(NotFound):
            await self.call(f"delete {kind} {name}", fn, name, self.ks.namespace)

    async def pod(self, endpoint_id: str) -> Any:
        try:
            return await self.call(
                "read pod",
                self.core.read_namespaced_pod,
                f"{compute_name(endpoint_id)}-0",
                self.ks.namespace,
            )
        except NotFound:
            return None

    async def wait_pod(
        self, selector: str, done: Callable[[Any], bool], what: str, timeout: float
    ) -> str | None:
        """Until a pod matching ``selector`` is ``done`` (None), or why it will not be on
        its own (a crash loop, a bad image) or was not ``what`` in time."""
        failure: list[str] = []

        def until(kind: str, pod: Any) -> bool:
            if kind in ("LIST", "DELETED"):
                return False
            reason = pod_failure(pod)
            if reason is not None:
                failure.append(reason)
                return True
            return done(pod)

        ok = await asyncio.to_thread(self.watch_pods, selector, until, timeout)
        if failure:
            return failure[0]
        return None if ok else f"not {what} within {timeout:.0f}s"

    def watch_pods(self, selector: str, until: Callable[[str, Any], bool], timeout: float) -> bool:
        """Block until ``until(event_type, pod)`` holds for a pod matching ``selector``:
        first on a list, then on a watch from that list's resourceVersion (nothing is
        missed between the two). False on timeout. Runs in a worker thread."""
        deadline = time.monotonic() + timeout

        def listed() -> str | None:
            """Check the current pods; the version to watch from, or None when done."""
            pods = self.core.list_namespaced_pod(self.ks.namespace, label_selector=selector)
            if any(until("LISTED", p) for p in pods.items) or until("LIST", pods.items):
                return None
            return str(pods.metadata.resource_version)

        try:
            version = listed()
            if version is None:
                return True
            w: Any = _Watch()
            while (left := deadline - time.monotonic()) > 0:
                try:
                    for event in w.stream(
                        self.core.list_namespaced_pod,
                        self.ks.namespace,
                        label_selector=selector,
                        resource_version=version,
                        timeout_seconds=max(1, int(left)),
                        _request_timeout=left + 5,
                    ):
                        obj = event["object"]
                        version = obj.metadata.resource_version or version
                        if until(event["type"], obj):
                            w.stop()
                            return True
                        if time.monotonic() > deadline:
                            w.stop()
                            return False
                except ApiException as exc:
                    if exc.status != 410:
                        raise
                    # Our version is too old for the server (410 Gone): list again.
                    version = listed()
                    if version is None:
                        return True
            return False
        except ApiException as exc:
            raise mapped(exc, "watch pods") from exc


class KubernetesDriver(ComputeDriver):
    local_datadirs = False  # they are in the pods' volumes

    def __init__(self, ks: KubeSettings, *, api_client: Any = None) -> None:
        super().__init__()
        self.ks = ks
        self.api = KubeApi(ks, api_client)
        self._passwords: dict[str, str] = {}

    async def start(self, spec: ComputeSpec, *, timeout: float) -> ComputeInfo:
        if spec.server_options:
            # Pageserver mode has no branch claim, and so no branch storage to have made
            # the admin Secret: make it here (an existing one is kept).
            secret = branch_objects(
                spec.branch_id, spec.project_id, self.ks, password=new_password(32)
            )[0]
            await self.api.apply(secret)
        for obj in compute_objects(spec, self.ks, replicas=1):
            await self.api.apply(obj)
        selector = f"{EP_LABEL}={spec.endpoint_id}"
        why = await self.api.wait_pod(selector, _pod_ready, "ready", timeout)
        if why is None:
            return await self.inspect(spec.endpoint_id)
        tail = await asyncio.to_thread(self.error_log_tail, spec.endpoint_id)
        await self.stop(spec.endpoint_id, timeout=self.ks.stop_grace_seconds)
        raise ComputeError(f"compute {spec.endpoint_id} did not start: {why}\n{tail}".strip())

    async def stop(self, endpoint_id: str, *, timeout: float) -> None:
        name = compute_name(endpoint_id)
        with contextlib.suppress(NotFound):  # never made: nothing runs
            await self.api.call(
                f"scale {name}",
                self.api.apps.patch_namespaced_stateful_set_scale,
                name,
                self.ks.namespace,
                {"spec": {"replicas": 0}},
            )

        def gone(kind: str, pod: Any) -> bool:
            return kind == "DELETED" or (kind == "LIST" and not pod)

        selector = f"{EP_LABEL}={endpoint_id}"
        if await asyncio.to_thread(self.api.watch_pods, selector, gone, timeout):
            return
        # It did not stop in time: the equivalent of SIGKILL.
        log.warning("compute %s did not stop in %.0fs; deleting its pod", endpoint_id, timeout)
        try:
            await self.api.call(
                "delete pod",
                self.api.core.delete_namespaced_pod,
                f"{name}-0",
                self.ks.namespace,
                grace_period_seconds=0,
            )
        except NotFound:
            return
        await asyncio.to_thread(self.api.watch_pods, selector, gone, 30)

    def _info(self, endpoint_id: str, pod: Any) -> ComputeInfo:
        if not pod_running(pod):
            return ComputeInfo(endpoint_id=endpoint_id, running=False)
        return ComputeInfo(endpoint_id=endpoint_id, running=True, host=pod.status.pod_ip, port=PORT)

    async def inspect(self, endpoint_id: str) -> ComputeInfo:
        return self._info(endpoint_id, await self.api.pod(endpoint_id))

    async def list_computes(self) -> list[ComputeInfo]:
        pods: Any = await self.api.call(
            "list pods",
            self.api.core.list_namespaced_pod,
            self.ks.namespace,
            label_selector=f"app.kubernetes.io/managed-by=selkie,{COMPONENT}=compute",
        )
        out = []
        for pod in pods.items:
            endpoint_id = (pod.metadata.labels or {}).get(EP_LABEL)
            if endpoint_id:
                out.append(self._info(endpoint_id, pod))
        return out

    async def adopt(self, endpoint_id: str) -> ComputeInfo:
        # Kubernetes supervises the pod; there is nothing to take over.
        return await self.inspect(endpoint_id)

    def forget_password(self, branch_id: str) -> None:
        self._passwords.pop(branch_id, None)

    async def password(self, branch_id: str) -> str:
        """The branch's admin password, from its secret (cached)."""
        cached = self._passwords.get(branch_id)
        if cached is not None:
            return cached
        secret: Any = await self.api.call(
            "read admin secret",
            self.api.core.read_namespaced_secret,
            secret_name(branch_id),
            self.ks.namespace,
        )
        password = base64.b64decode(secret.data["password"]).decode()
        self._passwords[branch_id] = password
        return password

    async def execute(
        self, endpoint_id: str, statements: Sequence[str], *, timeout: float | None = None
    ) -> list[list[tuple[Any, ...]]]:
        pod = await self.api.pod(endpoint_id)
        if not pod_running(pod):
            raise ComputeError(f"compute {endpoint_id} is not running")
        branch_id = (pod.metadata.labels or {}).get(BRANCH_LABEL, "")
        password = await self.password(branch_id)
        self.note_admin_statements(endpoint_id, len(statements))
        return await asyncio.to_thread(
            run_statements,
            endpoint_id,
            statements,
            host=pod.status.pod_ip,
            port=PORT,
            user="root",
            password=password,
            **timeouts(timeout),
        )

    async def remove(self, endpoint_id: str) -> None:
        name = compute_name(endpoint_id)
        await self.api.delete("StatefulSet", name)
        await self.api.delete("Service", name)
        await self.api.delete("ConfigMap", f"{name}-config")

    def error_log_tail(self, endpoint_id: str, *, lines: int = 15) -> str:
        try:
            return str(
                self.api.core.read_namespaced_pod_log(
                    f"{compute_name(endpoint_id)}-0", self.ks.namespace, tail_lines=lines
                )
            ).strip()
        except Exception:
            return ""
