"""The system under test: a real `selkie up` as a process (so it can be killed -9 and started
again on the same data dir), optionally with `selkie safekeeper` as a process of its own (so
it can be stopped) and its state in a private PostgreSQL (so it can be restarted; never the
machine's own server), and the one endpoint the workloads use."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests.chaos.workloads import Target
from tests.helpers import SELKIE, first_key, free_port, mariadbd_processes, selkie_env


class Cluster:
    def __init__(
        self,
        root: Path,
        *,
        template: Path | None = None,
        own_safekeeper: bool = False,
        own_postgres: bool = False,
    ) -> None:
        self.root = root
        self.env = selkie_env(root, template)
        self.env["SELKIE_LOG_LEVEL"] = "warning"
        self.log = root / "selkie.log"
        self.up: subprocess.Popen[bytes] | None = None
        self.safekeeper: subprocess.Popen[bytes] | None = None
        self.sk_env: dict[str, str] = {}
        if own_safekeeper:
            key, token = secrets.token_hex(32), secrets.token_hex(32)
            api = f"127.0.0.1:{free_port()}"
            self.sk_env = {k: v for k, v in os.environ.items() if not k.startswith("SELKIE_")}
            self.sk_env.update(
                SELKIE_DATA_DIR=str(root / "sk-data"),
                SELKIE_SAFEKEEPER_DIR=str(root / "sk"),
                SELKIE_ARCHIVE_URL=f"file://{root / 'archive'}",
                SELKIE_SAFEKEEPER_KEY=key,
                SELKIE_INTERNAL_TOKEN=token,
                SELKIE_SAFEKEEPER_LISTEN=f"127.0.0.1:{free_port()}",
                SELKIE_SAFEKEEPER_API_LISTEN=api,
                SELKIE_LOG_LEVEL="warning",
            )
            self.env.update(
                SELKIE_ARCHIVE_URL=self.sk_env["SELKIE_ARCHIVE_URL"],
                SELKIE_SAFEKEEPER_KEY=key,
                SELKIE_INTERNAL_TOKEN=token,
                SELKIE_SAFEKEEPER_URL=f"http://{api}",
                SELKIE_SAFEKEEPER_FOLLOW="tcp",
            )
        self.pg_dir: Path | None = None
        if own_postgres:
            self.pg_dir = root / "pg"
            self.pg_port = free_port()
            self.env["SELKIE_DATABASE_URL"] = (
                f"postgresql+psycopg://postgres@127.0.0.1:{self.pg_port}/postgres"
            )
        self.project_id = ""
        self.branch_id = ""
        self.target: Target | None = None
        self.api: httpx.Client | None = None

    # --- processes -------------------------------------------------------------------------

    def _spawn(self, command: str, env: dict[str, str], log: Path, health: str) -> Any:
        with open(log, "ab") as out:
            proc = subprocess.Popen([*SELKIE, command], env=env, stdout=out, stderr=out)
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"selkie {command} exited {proc.returncode}: see {log}")
            try:
                if httpx.get(health, timeout=1).status_code == 200:
                    return proc
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"selkie {command} did not answer: see {log}")
            time.sleep(0.1)

    def _pg_ctl(self, *args: str) -> None:
        """pg_ctl (or initdb) of the private PostgreSQL, as the postgres OS user when root."""
        assert self.pg_dir is not None
        (binary,) = glob.glob(f"/usr/lib/postgresql/*/bin/{args[0]}")[-1:] or [args[0]]
        user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(
            [*user, binary, *args[1:]],
            check=True,
            capture_output=True,
            timeout=120,
            cwd="/",
        )

    def postgres_start(self) -> None:
        assert self.pg_dir is not None
        if not (self.pg_dir / "PG_VERSION").exists():
            self.pg_dir.mkdir(exist_ok=True)
            if os.geteuid() == 0:
                shutil.chown(self.pg_dir, "postgres", "postgres")
            self._pg_ctl("initdb", "-D", str(self.pg_dir), "-A", "trust", "-U", "postgres")
        options = f"-p {self.pg_port} -c listen_addresses=127.0.0.1 -k {self.pg_dir}"
        self._pg_ctl(
            "pg_ctl", "start", "-w", "-D", str(self.pg_dir), "-o", options, "-l",
            str(self.pg_dir / "log"),
        )  # fmt: skip

    def postgres_restart(self) -> None:
        """An immediate stop (no shutdown checkpoint, as a crash) and a start."""
        assert self.pg_dir is not None
        self._pg_ctl("pg_ctl", "stop", "-w", "-m", "immediate", "-D", str(self.pg_dir))
        self.postgres_start()

    def start(self) -> None:
        """Start the processes; the first time, find the endpoint `selkie up` made and give
        it a pooler (transaction mode) and room to autoscale."""
        if self.pg_dir is not None and not (self.pg_dir / "postmaster.pid").exists():
            self.postgres_start()
        if self.sk_env and (self.safekeeper is None or self.safekeeper.poll() is not None):
            api = self.sk_env["SELKIE_SAFEKEEPER_API_LISTEN"]
            self.safekeeper = self._spawn(
                "safekeeper", self.sk_env, self.root / "safekeeper.log", f"http://{api}/healthz"
            )
        self.up = self._spawn("up", self.env, self.log, f"{self.env['SELKIE_API_URL']}/healthz")
        if self.target is None:
            found = re.search(r"-u (\S+)\.(\S+) -p(\S+) (\S+)", self.log.read_text())
            assert found is not None, self.log.read_text()
            endpoint_id, role, password, database = found.groups()
            port = int(self.env["SELKIE_PROXY_LISTEN"].rsplit(":", 1)[1])
            self.target = Target(port, endpoint_id, role, password, database)
            self.api = httpx.Client(
                base_url=self.env["SELKIE_API_URL"],
                headers={"Authorization": f"Bearer {first_key(self.log)}"},
                timeout=60,
            )
            project = self.api.get("/v1/projects").json()["projects"][0]
            self.project_id = project["id"]
            self.branch_id = self.endpoint()["branch_id"]
            self.patch_endpoint(
                pooler_enabled=True,
                pooler_mode="transaction",
                autoscaling_limit_min_cu=0.25,
                autoscaling_limit_max_cu=1,
            )

    def kill_up(self) -> None:
        """kill -9 of `selkie up` (its computes are left running, as after a crash)."""
        assert self.up is not None
        self.up.kill()
        self.up.wait()

    def stop(self) -> None:
        for proc in (self.up, self.safekeeper):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        # A compute of a killed `selkie up` that no later one stopped: never leave one behind.
        for pid in mariadbd_processes(self.root / "data").values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.api is not None:
            self.api.close()
        if self.pg_dir is not None and (self.pg_dir / "postmaster.pid").exists():
            self._pg_ctl("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.pg_dir))

    # --- the API ---------------------------------------------------------------------------

    @property
    def endpoint_path(self) -> str:
        assert self.target is not None
        return f"/v1/projects/{self.project_id}/endpoints/{self.target.endpoint_id}"

    def call(self, method: str, path: str, **kw: Any) -> Any:
        assert self.api is not None
        r = self.api.request(method, path, **kw)
        if r.status_code >= 300:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text}")
        return r.json()

    def endpoint(self) -> dict[str, Any]:
        body: dict[str, Any] = self.call("GET", self.endpoint_path)["endpoint"]
        return body

    def patch_endpoint(self, **changes: Any) -> None:
        body = self.call("PATCH", self.endpoint_path, json={"endpoint": changes})
        self.wait_operations(body["operations"])

    def wait_operations(self, ops: list[dict[str, Any]], timeout: float = 120) -> None:
        for op in ops:
            deadline = time.monotonic() + timeout
            while True:
                body = self.call("GET", f"/v1/projects/{self.project_id}/operations/{op['id']}")
                status = body["operation"]["status"]
                if status in ("finished", "skipped"):
                    break
                if status in ("failed", "cancelled"):
                    raise RuntimeError(f"operation {op['action']} {status}: {body}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"operation {op['action']} still {status}: {body}")
                time.sleep(0.1)

    def compute_pid(self) -> int | None:
        assert self.target is not None
        return mariadbd_processes(self.root / "data").get(self.target.endpoint_id)
