"""The whole platform on the Kubernetes driver, against the FAKE API server with a fake
kubelet that runs real mariadbd servers (no cluster can run on these machines): a client
through the proxy wakes a StatefulSet, writes, the endpoint suspends (scale to 0), and the
next client finds the data on the branch's claim."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest

from selkie.control.bootstrap import local_principal
from tests.compute.kubernetes.fake_apiserver import FakeApiServer
from tests.compute.kubernetes.kubelet import Kubelet
from tests.platforms import open_platform, require_mariadb

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def cluster(
    tmp_path: Path, template_datadir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeApiServer]:
    require_mariadb()
    kubelet = Kubelet(tmp_path / "kubelet", template_datadir)
    fake = FakeApiServer(kubelet=kubelet)
    config = tmp_path / "kubeconfig"
    config.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: "{fake.url}"}}}}]
users: [{{name: fake, user: {{token: not-a-real-token}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: fake, namespace: selkie-test}}}}]
current-context: fake
"""
    )
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with fake.running():
        try:
            yield fake
        finally:
            kubelet.kill_all()


async def test_fake_cluster_wake_write_suspend_resume(
    cluster: FakeApiServer, tmp_path: Path, template_datadir: Path
) -> None:
    async with open_platform(
        tmp_path,
        template_datadir,
        proxy=True,
        compute_driver="kubernetes",
        kubernetes_namespace="selkie-test",
        kubernetes_kubeconfig=str(tmp_path / "kubeconfig"),
    ) as p:
        who = local_principal(p.control)
        created = await asyncio.to_thread(p.control.projects.create, who, name="on-k8s")
        await p.runner.wait_idle()
        ep, role = created.endpoints[0].id, created.roles[0]
        assert p.proxy is not None

        def connect() -> pymysql.Connection:  # type: ignore[type-arg]
            return pymysql.connect(
                host="127.0.0.1",
                port=p.proxy.port,  # type: ignore[union-attr]
                user=f"{ep}.{role.name}",
                password=role.password,
                database=created.databases[0].name,
                autocommit=True,
                connect_timeout=60,
            )

        def write() -> str:
            conn = connect()
            with conn.cursor() as cur:
                cur.execute("CREATE TABLE t (v VARCHAR(20))")
                cur.execute("INSERT INTO t VALUES ('on a claim')")
                cur.execute("SELECT @@bind_address")
                (bind,) = cur.fetchone()  # type: ignore[misc]
            conn.close()
            return str(bind)

        bind = await asyncio.to_thread(write)
        assert bind.startswith("127.0.0.") and bind != "127.0.0.1"  # the pod's address
        sts = cluster.get("statefulsets", f"selkie-{ep}")
        assert sts is not None and sts["spec"]["replicas"] == 1
        branch = created.branch.id
        assert cluster.names("persistentvolumeclaims") == [f"selkie-{branch}-data"]
        assert cluster.names("secrets") == [f"selkie-{branch}-admin"]
        assert p.lifecycle.get(ep).current_state.value == "active"

        await p.lifecycle.suspend(ep)
        assert cluster.get("statefulsets", f"selkie-{ep}")["spec"]["replicas"] == 0  # type: ignore[index]
        assert cluster.get("pods", f"selkie-{ep}-0") is None

        def read() -> list[str]:
            conn = connect()
            with conn.cursor() as cur:
                cur.execute("SELECT v FROM t")
                rows = [r[0] for r in cur.fetchall()]
            conn.close()
            return rows

        assert await asyncio.to_thread(read) == ["on a claim"]
        assert p.start_metrics.start_counts[ep] == 2
        await p.lifecycle.suspend(ep)
