"""A fake Kubernetes API server: the REST and watch paths the compute driver uses, with a
tiny StatefulSet controller and kubelet (a pod appears, becomes Ready, terminates).

No cluster can run on the machines these tests run on; this server is what the driver is
tested against. It speaks the API's JSON (objects, lists with resourceVersions, Status
errors with their codes, watch streams of newline-delimited events) closely enough for the
official Python client, and lets a test make the next call fail with any status. With a
kubelet, pods made directly (not by a StatefulSet) run too, and ``exec`` works over the
API's WebSocket protocol (``v5.channel.k8s.io``: binary channels, stdin closed by a
``255, 0`` message, the exit status on channel 3).
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from tests.helpers import free_port

KINDS = {
    "configmaps": "ConfigMap",
    "services": "Service",
    "secrets": "Secret",
    "persistentvolumeclaims": "PersistentVolumeClaim",
    "pods": "Pod",
    "statefulsets": "StatefulSet",
}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _merge(into: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        elif value is None:
            into.pop(key, None)
        else:
            into[key] = copy.deepcopy(value)
    return into


def _status(code: int, reason: str, message: str) -> JSONResponse:
    return JSONResponse(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "reason": reason,
            "message": message,
            "code": code,
        },
        status_code=code,
    )


EXEC_V5 = "v5.channel.k8s.io"


def _exec_status(code: int, message: str = "") -> dict[str, Any]:
    """The Status a command's end sends on channel 3."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {},
        "status": "Failure",
        "message": message or f"command terminated with non-zero exit code: {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def _matches(obj: dict[str, Any], selector: str | None) -> bool:
    if not selector:
        return True
    labels = obj["metadata"].get("labels") or {}
    for term in selector.split(","):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


class FakeApiServer:
    def __init__(
        self, *, ready_after: float = 0.2, terminate_after: float = 0.1, kubelet: Any = None
    ) -> None:
        # With a kubelet (tests/compute/kubernetes/kubelet.py), pods run real servers.
        self.kubelet = kubelet
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}  # (plural, name) -> object
        self.version = 100
        self.pod_events: list[tuple[int, str, dict[str, Any]]] = []
        self.requests: list[tuple[str, str, str]] = []  # (method, path, query)
        self.failures: dict[tuple[str, str], list[int]] = {}
        self.ready_after = ready_after
        self.terminate_after = terminate_after
        self.pod_ip = "10.1.2.3"
        # The exec protocols this server speaks, preferred first.
        self.exec_protocols = [EXEC_V5, "v4.channel.k8s.io"]
        self.port = free_port()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Condition | None = None
        self.app = Starlette(
            routes=[
                Route("/api/v1/namespaces/{ns}/pods/{name}/log", self.pod_log, methods=["GET"]),
                WebSocketRoute("/api/v1/namespaces/{ns}/pods/{name}/exec", self.pod_exec),
                Route(
                    "/apis/apps/v1/namespaces/{ns}/statefulsets/{name}/scale",
                    self.scale,
                    methods=["PATCH"],
                ),
                Route("/api/v1/namespaces/{ns}/{plural}", self.collection, methods=["GET", "POST"]),
                Route(
                    "/apis/apps/v1/namespaces/{ns}/{plural}",
                    self.collection,
                    methods=["GET", "POST"],
                ),
                Route(
                    "/api/v1/namespaces/{ns}/{plural}/{name}",
                    self.item,
                    methods=["GET", "PATCH", "PUT", "DELETE"],
                ),
                Route(
                    "/apis/apps/v1/namespaces/{ns}/{plural}/{name}",
                    self.item,
                    methods=["GET", "PATCH", "PUT", "DELETE"],
                ),
            ]
        )

    # --- test hooks ------------------------------------------------------------------------

    def fail_next(self, method: str, plural: str, status: int) -> None:
        """The next ``method`` on ``plural`` answers ``status`` (a Status body)."""
        self.failures.setdefault((method, plural), []).append(status)

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((plural, name))

    def names(self, plural: str) -> list[str]:
        return sorted(n for p, n in self.objects if p == plural)

    # --- plumbing --------------------------------------------------------------------------

    def _bump(self) -> int:
        self.version += 1
        return self.version

    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    async def _pod_event(self, kind: str, pod: dict[str, Any]) -> None:
        pod["metadata"]["resourceVersion"] = str(self._bump())
        self.pod_events.append((self.version, kind, copy.deepcopy(pod)))
        await self._notify()

    def _failure(self, request: Request, plural: str) -> Response | None:
        queue = self.failures.get((request.method, plural))
        if queue:
            code = queue.pop(0)
            reason = {403: "Forbidden", 404: "NotFound", 409: "Conflict", 422: "Invalid"}
            return _status(code, reason.get(code, "InternalError"), f"injected {code}")
        return None

    def _stamp(self, obj: dict[str, Any], plural: str, name: str, ns: str) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        meta.setdefault("name", name)
        meta["namespace"] = ns
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        meta["resourceVersion"] = str(self._bump())
        obj["kind"] = KINDS[plural]
        obj.setdefault("apiVersion", "apps/v1" if plural == "statefulsets" else "v1")
        return obj

    # --- routes ----------------------------------------------------------------------------

    async def collection(self, request: Request) -> Response:
        plural, ns = request.path_params["plural"], request.path_params["ns"]
        self.requests.append((request.method, request.url.path, request.url.query))
        if plural not in KINDS:
            return _status(404, "NotFound", f"no resource {plural}")
        failed = self._failure(request, plural)
        if failed is not None:
            return failed
        if request.method == "POST":
            obj = await request.json()
            name = obj["metadata"]["name"]
            if (plural, name) in self.objects:
                return _status(409, "AlreadyExists", f'{plural} "{name}" already exists')
            self.objects[(plural, name)] = self._stamp(obj, plural, name, ns)
            if plural == "statefulsets":
                await self._control(name)
            if plural == "pods":
                obj.setdefault("status", {"phase": "Pending", "conditions": []})
                await self._pod_event("ADDED", obj)
                assert self.loop is not None
                self.loop.call_later(
                    self.ready_after, lambda: asyncio.ensure_future(self._run(obj, attach=True))
                )
            return JSONResponse(obj, status_code=201)
        selector = request.query_params.get("labelSelector")
        if request.query_params.get("watch") in ("true", "True", "1"):
            queue = self.failures.get(("WATCH", plural))
            if queue:  # e.g. 410 Gone: the version asked for is too old
                code = queue.pop(0)
                return _status(code, "Expired" if code == 410 else "InternalError", "injected")
            since = int(request.query_params.get("resourceVersion") or 0)
            timeout = float(request.query_params.get("timeoutSeconds") or 30)
            return StreamingResponse(
                self._watch(selector, since, timeout), media_type="application/json"
            )
        items = [
            o for (p, _), o in sorted(self.objects.items()) if p == plural and _matches(o, selector)
        ]
        return JSONResponse(
            {
                "kind": KINDS[plural] + "List",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self.version)},
                "items": items,
            }
        )

    async def _watch(
        self, selector: str | None, since: int, timeout: float
    ) -> AsyncIterator[bytes]:
        assert self._changed is not None
        deadline = time.monotonic() + timeout
        sent = since
        while True:
            for version, kind, pod in list(self.pod_events):
                if version <= sent:
                    continue
                sent = version
                if _matches(pod, selector):
                    yield (json.dumps({"type": kind, "object": pod}) + "\n").encode()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait(), left)
                except TimeoutError:
                    return

    async def item(self, request: Request) -> Response:
        plural, ns, name = (request.path_params[k] for k in ("plural", "ns", "name"))
        self.requests.append((request.method, request.url.path, request.url.query))
        failed = self._failure(request, plural)
        if failed is not None:
            return failed
        obj = self.objects.get((plural, name))
        if obj is None:
            return _status(404, "NotFound", f'{plural} "{name}" not found')
        if request.method == "GET":
            return JSONResponse(obj)
        if request.method in ("PATCH", "PUT"):
            body = await request.json()
            if request.method == "PUT":
                obj = self.objects[(plural, name)] = self._stamp(body, plural, name, ns)
            else:
                _merge(obj, body)
                obj["metadata"]["resourceVersion"] = str(self._bump())
            if plural == "statefulsets":
                await self._control(name)
            return JSONResponse(obj)
        # DELETE: these kinds answer with the object, the others with a Status.
        if plural == "pods":
            await self._remove_pod(name)
            return JSONResponse(obj)
        if plural in ("services", "persistentvolumeclaims"):
            del self.objects[(plural, name)]
            if plural == "persistentvolumeclaims" and self.kubelet is not None:
                self.kubelet.release(name)
            return JSONResponse(obj)
        else:
            del self.objects[(plural, name)]
            if plural == "statefulsets":
                pod = self.objects.get(("pods", f"{name}-0"))
                if pod is not None:
                    await self._terminate(pod)
        return JSONResponse({"kind": "Status", "apiVersion": "v1", "status": "Success"})

    async def scale(self, request: Request) -> Response:
        ns, name = request.path_params["ns"], request.path_params["name"]
        self.requests.append((request.method, request.url.path, request.url.query))
        failed = self._failure(request, "scale")
        if failed is not None:
            return failed
        sts = self.objects.get(("statefulsets", name))
        if sts is None:
            return _status(404, "NotFound", f'statefulsets "{name}" not found')
        replicas = int((await request.json())["spec"]["replicas"])
        sts["spec"]["replicas"] = replicas
        await self._control(name)
        return JSONResponse(
            {
                "kind": "Scale",
                "apiVersion": "autoscaling/v1",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"replicas": replicas},
                "status": {"replicas": replicas},
            }
        )

    async def pod_log(self, request: Request) -> Response:
        name = request.path_params["name"]
        if ("pods", name) not in self.objects:
            return _status(404, "NotFound", f'pods "{name}" not found')
        return PlainTextResponse(f"[Note] mariadbd: ready for connections ({name})\n")

    async def pod_exec(self, ws: WebSocket) -> None:
        name = ws.path_params["name"]
        command = ws.query_params.getlist("command")
        offered = ws.scope.get("subprotocols") or []
        chosen = next((p for p in self.exec_protocols if p in offered), None)
        await ws.accept(subprotocol=chosen)
        pod = self.objects.get(("pods", name))
        if pod is None or self.kubelet is None or name not in self.kubelet.mounts:
            await ws.send_bytes(bytes([3]) + json.dumps(_exec_status(-1, "no such pod")).encode())
            await ws.close()
            return
        stdin = ws.query_params.get("stdin") in ("true", "True", "1")
        proc = await self.kubelet.exec(name, command, stdin=stdin)

        async def from_client() -> None:
            try:
                while True:
                    data = await ws.receive_bytes()
                    if data[:1] == b"\xff" and data[1:2] == b"\x00" and proc.stdin:
                        proc.stdin.close()
                    elif data[:1] == b"\x00" and proc.stdin:
                        proc.stdin.write(data[1:])
                        await proc.stdin.drain()
            except (WebSocketDisconnect, ConnectionError, RuntimeError):
                if proc.returncode is None:
                    proc.kill()

        async def to_client(stream: asyncio.StreamReader | None, channel: int) -> None:
            assert stream is not None
            while chunk := await stream.read(1 << 16):
                await ws.send_bytes(bytes([channel]) + chunk)

        reader = asyncio.create_task(from_client())
        try:
            await asyncio.gather(to_client(proc.stdout, 1), to_client(proc.stderr, 2))
            code = await proc.wait()
            await ws.send_bytes(bytes([3]) + json.dumps(_exec_status(code)).encode())
            await ws.close()
        finally:
            reader.cancel()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    # --- the controller and the kubelet -----------------------------------------------------

    async def _control(self, name: str) -> None:
        sts = self.objects[("statefulsets", name)]
        want = int(sts["spec"].get("replicas") or 0)
        pod = self.objects.get(("pods", f"{name}-0"))
        if want and pod is None:
            template = sts["spec"]["template"]
            pod = {
                "metadata": {"name": f"{name}-0", "labels": dict(template["metadata"]["labels"])},
                "spec": copy.deepcopy(template["spec"]),
                "status": {"phase": "Pending", "conditions": []},
            }
            self.objects[("pods", f"{name}-0")] = self._stamp(pod, "pods", f"{name}-0", "")
            await self._pod_event("ADDED", pod)
            assert self.loop is not None
            self.loop.call_later(self.ready_after, lambda: asyncio.ensure_future(self._run(pod)))
        elif not want and pod is not None:
            await self._terminate(pod)

    async def _run(self, pod: dict[str, Any], *, attach: bool = False) -> None:
        if ("pods", pod["metadata"]["name"]) not in self.objects or pod["metadata"].get(
            "deletionTimestamp"
        ):
            return
        image = pod["spec"]["containers"][0]["image"]
        if image.startswith("never"):
            return  # stays Pending
        if image.startswith("crash"):
            pod["status"]["containerStatuses"] = [
                {
                    "name": "mariadb",
                    "ready": False,
                    "restartCount": 3,
                    "image": image,
                    "imageID": "",
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                }
            ]
            await self._pod_event("MODIFIED", pod)
            return
        ip = self.pod_ip
        if self.kubelet is not None:
            try:
                run = self.kubelet.attach if attach else self.kubelet.run
                ip = await run(pod, self.objects)
            except Exception as exc:
                image = "crash"
                pod["spec"]["containers"][0]["image"] = image
                pod["status"]["containerStatuses"] = [
                    {
                        "name": "mariadb",
                        "ready": False,
                        "restartCount": 1,
                        "image": image,
                        "imageID": "",
                        "state": {
                            "waiting": {"reason": "CrashLoopBackOff", "message": str(exc)[-500:]}
                        },
                    }
                ]
                await self._pod_event("MODIFIED", pod)
                return
            if ("pods", pod["metadata"]["name"]) not in self.objects:
                await self.kubelet.terminate(pod["metadata"]["name"])
                return
        pod["status"] = {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True"}],
        }
        await self._pod_event("MODIFIED", pod)

    async def _terminate(self, pod: dict[str, Any]) -> None:
        if pod["metadata"].get("deletionTimestamp"):
            return
        pod["metadata"]["deletionTimestamp"] = _now()
        pod["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
        await self._pod_event("MODIFIED", pod)
        if pod["spec"]["containers"][0]["image"].startswith("stuck"):
            return  # ignores SIGTERM: only a forced delete removes it
        assert self.loop is not None
        name = pod["metadata"]["name"]
        self.loop.call_later(
            self.terminate_after, lambda: asyncio.ensure_future(self._remove_pod(name))
        )

    async def _remove_pod(self, name: str) -> None:
        if self.kubelet is not None:
            await self.kubelet.terminate(name)
        pod = self.objects.pop(("pods", name), None)
        if pod is not None:
            await self._pod_event("DELETED", pod)

    # --- running ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @contextmanager
    def running(self) -> Iterator[FakeApiServer]:
        server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        started = threading.Event()

        def serve() -> None:
            async def main() -> None:
                self.loop = asyncio.get_running_loop()
                self._changed = asyncio.Condition()
                started.set()
                await server.serve()

            asyncio.run(main())

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        started.wait(10)
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            yield self
        finally:
            server.should_exit = True
            thread.join(10)
