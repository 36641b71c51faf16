"""Commands run in a pod's container through the Kubernetes API's exec, with binary stdin
and stdout streamed (not buffered whole): how base images are taken of a compute pod
(``mariadb-backup --stream``) and how a new claim is filled with restored data (``tar -x``).

The API's WebSocket protocol ``v5.channel.k8s.io`` (Kubernetes 1.30 and later) is needed:
it is the one that can close a command's stdin, which ``tar -x`` waits for. Each message
is a channel number and bytes: 0 stdin, 1 stdout, 2 stderr, 3 the command's end (a Status,
with the exit code when it failed); ``255, n`` closes channel ``n``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from kubernetes.client.exceptions import ApiException
from kubernetes.stream import stream as k8s_stream

from selkie.errors import ComputeError, ConfigError

STDIN, STDOUT, STDERR, STATUS = 0, 1, 2, 3
V5 = "v5.channel.k8s.io"
# How much of a failed command's stderr its error quotes.
STDERR_KEPT = 4000


def exit_code(status: bytes) -> int:
    """The exit code a channel-3 Status says (0 for Success; -1 when it says none)."""
    if not status.strip():
        return -1
    try:
        doc = json.loads(status)
    except ValueError:
        return -1
    if doc.get("status") == "Success":
        return 0
    for cause in (doc.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            try:
                return int(cause.get("message"))
            except (TypeError, ValueError):
                return -1
    return -1


def run_in_pod(
    core: Any,
    namespace: str,
    pod: str,
    command: list[str],
    *,
    container: str,
    stdin: Iterable[bytes] | None = None,
    stdout: Callable[[bytes], object] | None = None,
    timeout: float,
) -> str:
    """Run ``command`` in the pod's container; blocks (a worker thread). What ``stdin``
    yields is sent and then stdin is closed; stdout goes to ``stdout`` as it arrives.
    Returns the command's stderr; a ComputeError with it when the command fails, the
    stream breaks or ``timeout`` passes."""
    what = f"{command[0]} in pod {pod}"
    try:
        ws: Any = k8s_stream(
            core.connect_get_namespaced_pod_exec,
            pod,
            namespace,
            command=command,
            container=container,
            stdin=stdin is not None,
            stdout=True,
            stderr=True,
            tty=False,
            _preload_content=False,
            binary=True,
        )
    except ApiException as exc:
        if exc.status in (401, 403):
            raise ConfigError(
                f"Kubernetes API: exec {what}: {exc.status} (the service account needs "
                "create on pods/exec in its namespace)"
            ) from exc
        raise ComputeError(f"Kubernetes API: exec {what}: {exc.status} {exc.reason}") from exc
    deadline = time.monotonic() + timeout
    err = bytearray()
    status = bytearray()

    def pump(wait: float) -> None:
        ws.update(timeout=wait)
        out = ws.read_channel(STDOUT)
        if out and stdout is not None:
            stdout(out)
        err.extend(ws.read_channel(STDERR))
        del err[:-STDERR_KEPT]
        status.extend(ws.read_channel(STATUS))

    try:
        if stdin is not None:
            if ws.subprotocol != V5:
                raise ComputeError(
                    f"exec {what}: the API server speaks {ws.subprotocol or 'no'} exec "
                    f"protocol; {V5} (Kubernetes 1.30 or later) is needed to send data"
                )
            for chunk in stdin:
                if not ws.is_open():
                    break
                ws.write_stdin(bytes(chunk))
                pump(0)
                if time.monotonic() > deadline:
                    raise ComputeError(f"exec {what}: not done in {timeout:.0f}s")
            if ws.is_open():
                ws.close_channel(STDIN)
        while ws.is_open():
            if time.monotonic() > deadline:
                raise ComputeError(f"exec {what}: not done in {timeout:.0f}s")
            pump(1.0)
        pump(0)
    finally:
        ws.close()
    text = err.decode(errors="replace").strip()
    code = exit_code(bytes(status))
    if code != 0:
        lines = text.splitlines()
        errors = [x for x in lines if "ERROR" in x or "rror:" in x] or lines[-10:]
        raise ComputeError(f"{what} failed ({code}): " + "\n".join(errors[:10]))
    return text
