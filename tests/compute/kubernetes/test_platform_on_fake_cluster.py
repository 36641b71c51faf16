"""The whole platform on the Kubernetes driver, against the FAKE API server with a fake
kubelet that runs real mariadbd servers (no cluster can run on these machines): a client
through the proxy wakes a StatefulSet, writes, the endpoint suspends (scale to 0), and the
next client finds the data on the branch's claim. The safekeeper follows the pod over TCP
(another address than its own), with commits waiting for it once durability turns sync on
the running pod, and serves the branch's log while the pod is gone. Base images are hot
copies streamed out of the pod through exec; a branch at a past point and a lost claim are
restored from the archive into new claims, filled through a pod."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest

from selkie import model
from selkie.archive.layout import TimelineRef
from selkie.control.bootstrap import local_principal
from selkie.safekeeper.stream import file_name
from selkie.storage.images import HOT, list_images
from tests.compute.kubernetes.fake_apiserver import FakeApiServer
from tests.compute.kubernetes.kubelet import Kubelet
from tests.control.history.conftest import finished, start, wait_received
from tests.platforms import open_platform, require_mariadb
from tests.safekeeper.replicas import binlog_reader

pytestmark = pytest.mark.timeout(240)


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
        safekeeper_listen="127.0.0.1:0",
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

        def write_more(value: str) -> None:
            conn = connect()
            with conn.cursor() as cur:
                cur.execute("INSERT INTO t VALUES (%s)", (value,))
            conn.close()

        bind = await asyncio.to_thread(write)
        assert bind.startswith("127.0.0.") and bind != "127.0.0.1"  # the pod's address
        sts = cluster.get("statefulsets", f"selkie-{ep}")
        assert sts is not None and sts["spec"]["replicas"] == 1
        branch = created.branch.id
        assert cluster.names("persistentvolumeclaims") == [f"selkie-{branch}-data"]
        assert cluster.names("secrets") == [f"selkie-{branch}-admin"]
        assert p.lifecycle.get(ep).current_state.value == "active"

        # The safekeeper follows the pod over TCP; sync durability is switched on live.
        history = p.history
        assert history is not None and history.local is None
        timeline = history.current_timeline(branch)
        assert timeline is not None  # begun at the pod's position when first followed
        _, ops = await asyncio.to_thread(
            p.control.projects.update, who, created.project.id, settings={"durability": "sync"}
        )
        assert {o.action.value for o in ops} == {"apply_config"}
        await p.runner.wait_idle()
        (((enabled,),),) = await p.driver.execute(ep, ["SELECT @@rpl_semi_sync_master_enabled"])
        assert str(enabled) == "1"
        await asyncio.to_thread(write_more, "acknowledged")
        durable = await p.durability(ep, model.Durability.SYNC)
        assert durable.streaming and durable.sync_commit == "on", durable
        assert durable.received is not None

        # The first base image of a claim is a hot copy streamed out of the pod (due at
        # once: until it exists the timeline cannot be restored).
        await history.hot_images()
        ref = TimelineRef(created.project.id, timeline.id)
        images = await list_images(history.archive, ref)
        assert [i.kind for i in images] == [HOT]
        assert images[0].seq == await wait_received(p, ep)
        await asyncio.to_thread(write_more, "after the image")
        point = await wait_received(p, ep)
        await asyncio.to_thread(write_more, "not at the point")
        await wait_received(p, ep)

        # A branch at a past point: the image and the log up to the point, restored here
        # and poured into a new claim (no clone of the parent's) by a fill pod.
        child = await asyncio.to_thread(
            p.control.branches.create,
            who,
            created.project.id,
            name="past",
            parent_lsn=f"0-1-{point}",
            endpoints=[{"type": "read_write"}],
        )
        await finished(p, who, created.project.id, [o.id for o in child.operations])
        claim = cluster.get("persistentvolumeclaims", f"selkie-{child.branch.id}-data")
        assert claim is not None and "dataSource" not in claim["spec"]
        assert not [n for n in cluster.names("pods") if n.endswith("-fill")]
        await start(p, who, created.project.id, child.endpoints[0].id)
        db = created.databases[0].name
        (got,) = await p.driver.execute(child.endpoints[0].id, [f"SELECT v FROM {db}.t"])
        assert [r[0] for r in got] == ["on a claim", "acknowledged", "after the image"]
        await p.lifecycle.suspend(child.endpoints[0].id)

        await p.lifecycle.suspend(ep)
        assert cluster.get("statefulsets", f"selkie-{ep}")["spec"]["replicas"] == 0  # type: ignore[index]
        assert cluster.get("pods", f"selkie-{ep}-0") is None

        # The pod is gone; its log is the safekeeper's, served to a replication client.
        binlogs = history.binlogs
        assert binlogs.server is not None and binlogs.server.port is not None
        creds = binlogs.credentials(timeline.id)
        async with binlog_reader(
            binlogs.server.port, creds.user, creds.password, file_name(timeline.start_seq + 1)
        ) as reader:
            await reader.read_until("'on a claim'", "'not at the point'")

        def read() -> list[str]:
            conn = connect()
            with conn.cursor() as cur:
                cur.execute("SELECT v FROM t")
                rows = [r[0] for r in cur.fetchall()]
            conn.close()
            return rows

        everything = ["on a claim", "acknowledged", "after the image", "not at the point"]
        assert await asyncio.to_thread(read) == everything
        assert p.start_metrics.start_counts[ep] == 2
        await p.lifecycle.suspend(ep)

        # The claim is lost with its volume: the next start rebuilds it from the archive
        # (the image, then the log after it), never a new empty volume in its place.
        del cluster.objects[("persistentvolumeclaims", f"selkie-{branch}-data")]
        assert cluster.kubelet is not None
        cluster.kubelet.release(f"selkie-{branch}-data")
        await p.lifecycle.start(ep)
        assert await asyncio.to_thread(read) == everything
        assert history.metrics.restores == 2
