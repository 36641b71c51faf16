"""Commands in a pod through the API's exec (``v5.channel.k8s.io``), against the FAKE API
server whose kubelet runs them with the pod's claim mounted: binary data both ways (more
than one WebSocket frame), stdin closed so ``cat`` ends, a failing command's exit code and
stderr in the error, a fill pod pouring a directory into a claim, and an API server that
cannot close stdin refused with the reason."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes import client as k8s

from selkie.compute.kubeexec import exit_code, run_in_pod
from selkie.compute.kubernetes import KubernetesDriver, KubeSettings
from selkie.errors import ComputeError
from selkie.storage.kubernetes import KubernetesStorage, fill_pod, fill_pod_name
from tests.compute.kubernetes.fake_apiserver import FakeApiServer
from tests.compute.kubernetes.kubelet import Kubelet

pytestmark = pytest.mark.timeout(60)
NS = "selkie-test"


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[FakeApiServer]:
    server = FakeApiServer(kubelet=Kubelet(tmp_path / "kubelet", tmp_path / "no-template"))
    with server.running():
        yield server


def storage(fake: FakeApiServer, scratch: Path) -> KubernetesStorage:
    driver = KubernetesDriver(
        KubeSettings(namespace=NS), api_client=k8s.ApiClient(k8s.Configuration(host=fake.url))
    )
    return KubernetesStorage(driver, project_of=lambda _: "p-1", scratch=scratch)


async def running_fill_pod(st: KubernetesStorage, branch: str) -> str:
    """A fill pod running on a new, empty claim of the branch."""
    await st.api.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": f"selkie-{branch}-data"},
            "spec": {"accessModes": ["ReadWriteOnce"]},
        }
    )
    await st.api.call(
        "create", st.api.core.create_namespaced_pod, NS, fill_pod(branch, NS, "mariadb:11.4")
    )
    await st._wait_running(branch)
    return fill_pod_name(branch)


async def test_exec_streams_binary_both_ways_and_reports_failures(
    cluster: FakeApiServer, tmp_path: Path
) -> None:
    st = storage(cluster, tmp_path / "scratch")
    pod = await running_fill_pod(st, "br-x")
    blob = os.urandom(3 << 20)  # every byte value, many frames

    def chunks() -> list[bytes]:
        return [blob[i : i + 100_000] for i in range(0, len(blob), 100_000)]

    def run(command: list[str], **kw: object) -> str:
        return run_in_pod(
            st.api.core,
            NS,
            pod,
            command,
            container="fill",
            timeout=30,
            **kw,  # type: ignore[arg-type]
        )

    await asyncio.to_thread(run, ["sh", "-c", "cat > /var/lib/mysql/blob"], stdin=chunks())
    assert (tmp_path / "kubelet/claims/selkie-br-x-data/blob").read_bytes() == blob
    got = bytearray()
    await asyncio.to_thread(run, ["cat", "/var/lib/mysql/blob"], stdout=got.extend)
    assert bytes(got) == blob

    with pytest.raises(ComputeError, match=r"failed \(3\): .*no space in the pod") as err:
        await asyncio.to_thread(run, ["sh", "-c", "echo 'ERROR: no space in the pod' >&2; exit 3"])
    assert "sh in pod selkie-br-x-fill" in err.value.message
    assert exit_code(b"") == -1 and exit_code(b'{"status": "Success"}') == 0


async def test_a_fill_pod_pours_staged_data_into_a_new_claim(
    cluster: FakeApiServer, tmp_path: Path
) -> None:
    st = storage(cluster, tmp_path / "scratch")
    staging = st.staging_dir("br-y")
    (staging / "mysql").mkdir(parents=True)
    (staging / "mysql" / "user.frm").write_bytes(b"\x00\xfe" * 5000)
    (staging / "ibdata1").write_bytes(os.urandom(100_000))
    await st.fill_claim("br-y", staging, password="s3cret")
    claim = tmp_path / "kubelet/claims/selkie-br-y-data"
    assert (claim / "ibdata1").read_bytes() == (staging / "ibdata1").read_bytes()
    assert (claim / "mysql/user.frm").read_bytes() == b"\x00\xfe" * 5000
    assert (claim / "ibdata1").stat().st_uid == 999  # the images' mysql
    assert cluster.names("pods") == []  # the fill pod is gone before a compute mounts it
    assert cluster.names("persistentvolumeclaims") == ["selkie-br-y-data"]
    assert await st.driver.password("br-y") == "s3cret"


async def test_an_api_server_without_v5_exec_is_refused_before_sending(
    cluster: FakeApiServer, tmp_path: Path
) -> None:
    st = storage(cluster, tmp_path / "scratch")
    pod = await running_fill_pod(st, "br-z")
    cluster.exec_protocols = ["v4.channel.k8s.io"]
    with pytest.raises(ComputeError, match=r"v5.channel.k8s.io \(Kubernetes 1.30 or later\)"):
        await asyncio.to_thread(
            run_in_pod,
            st.api.core,
            NS,
            pod,
            ["tar", "-x"],
            container="fill",
            stdin=[b"x"],
            timeout=10,
        )
