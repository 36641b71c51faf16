"""A fake kubelet for the fake API server: runs each compute pod as a real ``mariadbd`` on
its own loopback address (127.0.0.N:3306, never the machine's shared 127.0.0.1:3306), with
the ConfigMap's my.cnf, the claim's directory as its datadir, and the root password from
the branch's Secret, as the MariaDB image would. A claim made with a ``dataSource`` starts
as a copy of its source's directory (a CSI clone).

``exec`` runs a command "in" a pod: in a private mount namespace where the pod's volumes
are bind-mounted where the pod sees them (the claim on /var/lib/mysql, the server's socket
directory on /run/mysqld), with the pod's environment (the admin password), as the API's
exec would run it in the container. Pods that are not computes (no mariadb to run, a
``sleep``: the pods that fill a claim) only get their volumes.

No cluster can run on the machines these tests run on; with this, the whole platform runs
on the Kubernetes driver end to end: objects through the API, real servers behind them.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import shutil
import signal
import socket
import tempfile
from pathlib import Path
from typing import Any

from selkie.compute.local import find_mariadbd

_ADDRESSES = itertools.count(20)


class Kubelet:
    def __init__(self, root: Path, template: Path) -> None:
        self.root = root
        self.template = template
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.addresses: dict[str, str] = {}
        # Per pod: its claim's directory, its socket directory, its environment.
        self.mounts: dict[str, tuple[Path, Path, dict[str, str]]] = {}

    def _claim_dir(self, pod: dict[str, Any], objects: dict[tuple[str, str], Any]) -> Path:
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        claim = volumes["data"].get("persistentVolumeClaim", {}).get("claimName")
        if not claim:
            return self.root / "empty" / pod["metadata"]["name"]
        datadir = self.root / "claims" / claim
        if not datadir.exists():
            pvc = objects.get(("persistentvolumeclaims", claim)) or {}
            source = (pvc.get("spec") or {}).get("dataSource") or {}
            if source.get("name"):
                shutil.copytree(self.root / "claims" / source["name"], datadir, symlinks=True)
            else:
                datadir.mkdir(parents=True)
        return datadir

    async def attach(self, pod: dict[str, Any], objects: dict[tuple[str, str], Any]) -> str:
        """A pod that runs no server (a claim being filled): its volumes, for exec."""
        name = pod["metadata"]["name"]
        datadir = await asyncio.to_thread(self._claim_dir, pod, objects)
        self.mounts[name] = (datadir, Path(tempfile.mkdtemp(prefix="kubelet-")), {})
        return self.addresses.setdefault(name, f"127.0.0.{next(_ADDRESSES)}")

    async def run(self, pod: dict[str, Any], objects: dict[tuple[str, str], dict[str, Any]]) -> str:
        """Start the pod's server; returns its IP once it accepts connections."""
        name = pod["metadata"]["name"]
        spec = pod["spec"]
        container = spec["containers"][0]
        volumes = {v["name"]: v for v in spec["volumes"]}
        datadir = await asyncio.to_thread(self._claim_dir, pod, objects)
        if not (datadir / "mysql").is_dir():  # the image initializes an empty volume
            await asyncio.to_thread(shutil.rmtree, datadir, True)
            await asyncio.to_thread(shutil.copytree, self.template, datadir, symlinks=True)
        ref = container["env"][0]["valueFrom"]["secretKeyRef"]
        secret = objects[("secrets", ref["name"])]
        password = base64.b64decode(secret["data"][ref["key"]]).decode()
        cnf_name = volumes["config"]["configMap"]["name"]
        run = self.root / "pods" / name
        run.mkdir(parents=True, exist_ok=True)
        (run / "my.cnf").write_text(objects[("configmaps", cnf_name)]["data"]["selkie.cnf"])
        (run / "init.sql").write_text(
            f"CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY '{password}';\n"
            f"ALTER USER 'root'@'%' IDENTIFIED BY '{password}';\n"
            "GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;\n"
        )
        (run / "tmp").mkdir(exist_ok=True)
        # A unix socket path must stay under 108 bytes; pytest's tmp paths are long.
        sockdir = Path(tempfile.mkdtemp(prefix="kubelet-"))
        sock = sockdir / "mysqld.sock"
        self.mounts[name] = (datadir, sockdir, {"MARIADB_ROOT_PASSWORD": password})
        ip = self.addresses.setdefault(name, f"127.0.0.{next(_ADDRESSES)}")
        proc = await asyncio.create_subprocess_exec(
            find_mariadbd(),
            f"--defaults-file={run / 'my.cnf'}",
            f"--datadir={datadir}",
            f"--socket={sock}",
            f"--pid-file={run / 'mysqld.pid'}",
            f"--log-error={run / 'error.log'}",
            f"--tmpdir={run / 'tmp'}",
            f"--init-file={run / 'init.sql'}",
            f"--bind-address={ip}",
            "--port=3306",
            *(["--user=root"] if os.geteuid() == 0 else []),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs[name] = proc
        for _ in range(600):  # the readiness probe
            if proc.returncode is not None:
                raise RuntimeError((run / "error.log").read_text()[-2000:])
            try:
                socket.create_connection((ip, 3306), timeout=0.2).close()
                return ip
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError(f"{name} not ready")

    async def exec(
        self, name: str, command: list[str], *, stdin: bool
    ) -> asyncio.subprocess.Process:
        """``command`` as the pod's container would run it (see the module's docstring)."""
        datadir, sockdir, env = self.mounts[name]
        script = (
            'mkdir -p /var/lib/mysql /run/mysqld && mount --bind "$1" /var/lib/mysql && '
            'mount --bind "$2" /run/mysqld && shift 2 && exec "$@"'
        )
        return await asyncio.create_subprocess_exec(
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "kubelet-exec",
            str(datadir),
            str(sockdir),
            *command,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/root", **env},
            start_new_session=True,
        )

    def release(self, claim: str) -> None:
        """The claim is deleted: its volume goes with it (reclaim policy Delete)."""
        shutil.rmtree(self.root / "claims" / claim, ignore_errors=True)

    async def terminate(self, name: str) -> None:
        self.mounts.pop(name, None)
        proc = self.procs.pop(name, None)
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                os.killpg(proc.pid, signal.SIGKILL)
