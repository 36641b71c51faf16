"""The Kubernetes compute driver against a FAKE API server (no cluster can run on these
machines): objects made, scale to 1 and a watch until Ready, scale to 0, errors mapped."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes import client as k8s

from selkie.compute.base import ComputeSpec
from selkie.compute.kubernetes import KubernetesDriver, KubeSettings
from selkie.errors import ComputeError, ConfigError, InvalidInput
from selkie.model import ProjectSettings
from selkie.storage.base import ParentState
from selkie.storage.kubernetes import KubernetesStorage
from tests.compute.kubernetes.fake_apiserver import FakeApiServer

pytestmark = pytest.mark.timeout(60)
NS = "selkie-test"


@pytest.fixture
async def fake() -> AsyncIterator[FakeApiServer]:
    server = FakeApiServer()
    with server.running():
        yield server


def make_driver(fake: FakeApiServer, **kw: object) -> KubernetesDriver:
    conf = k8s.Configuration(host=fake.url)
    ks = KubeSettings(namespace=NS, stop_grace_seconds=2, **kw)  # type: ignore[arg-type]
    return KubernetesDriver(ks, api_client=k8s.ApiClient(conf))


def spec(ep: str = "ep-a", cu: float = 0.5, **kw: object) -> ComputeSpec:
    return ComputeSpec(
        endpoint_id=ep, project_id="p-1", branch_id="br-1", cu=cu, datadir=Path("/x"), **kw
    )  # type: ignore[arg-type]


async def test_fake_api_start_waits_for_ready_with_a_watch_then_stop_scales_to_zero(
    fake: FakeApiServer,
) -> None:
    driver = make_driver(fake)
    info = await driver.start(spec(), timeout=10)
    assert (info.running, info.host, info.port) == (True, "10.1.2.3", 3306)
    assert fake.names("configmaps") == ["selkie-ep-a-config"]
    assert fake.names("services") == ["selkie-ep-a"]
    sts = fake.get("statefulsets", "selkie-ep-a")
    assert sts is not None and sts["spec"]["replicas"] == 1
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": "2048Mi"}
    assert container["image"] == "mariadb:11.4"
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "selkie-br-1-data"
    cnf = fake.get("configmaps", "selkie-ep-a-config")["data"]["selkie.cnf"]  # type: ignore[index]
    assert "innodb_buffer_pool_size=1073741824" in cnf and "log-error" not in cnf
    # Readiness came from a watch (one list, then watch streams), not from polling reads.
    pod_reads = [r for r in fake.requests if r[0] == "GET" and "/pods" in r[1]]
    assert any("watch=true" in q.lower() for _, _, q in pod_reads)
    assert len(pod_reads) <= 4, pod_reads
    assert (await driver.inspect("ep-a")).running
    assert [c.endpoint_id for c in await driver.list_computes() if c.running] == ["ep-a"]
    assert "ready for connections" in driver.error_log_tail("ep-a")

    await driver.start(spec(), timeout=10)  # idempotent: existing objects are updated
    await driver.stop("ep-a", timeout=5)
    assert fake.get("statefulsets", "selkie-ep-a")["spec"]["replicas"] == 0  # type: ignore[index]
    assert fake.get("pods", "selkie-ep-a-0") is None
    assert not (await driver.inspect("ep-a")).running
    await driver.stop("ep-a", timeout=5)  # stopping a stopped compute is a no-op

    # A resize: the same objects, new resources and a new config digest (the pod rolls).
    digest = sts["spec"]["template"]["metadata"]["annotations"]["selkie.dev/config-digest"]
    await driver.start(spec(cu=2), timeout=10)
    sts = fake.get("statefulsets", "selkie-ep-a")
    assert sts is not None
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "2000m", "memory": "8192Mi"}
    assert sts["spec"]["template"]["metadata"]["annotations"]["selkie.dev/config-digest"] != digest
    await driver.stop("ep-a", timeout=5)

    await driver.remove("ep-a")
    assert fake.names("statefulsets") == fake.names("services") == fake.names("configmaps") == []
    await driver.remove("ep-a")  # 404s are fine: already gone


async def test_fake_api_crash_loop_and_timeout_fail_the_start_and_scale_back(
    fake: FakeApiServer,
) -> None:
    crashing = make_driver(fake, image="crash:1")
    with pytest.raises(ComputeError, match="CrashLoopBackOff"):
        await crashing.start(spec("ep-c"), timeout=10)
    assert fake.get("statefulsets", "selkie-ep-c")["spec"]["replicas"] == 0  # type: ignore[index]
    assert fake.get("pods", "selkie-ep-c-0") is None

    never = make_driver(fake, image="never:1")
    with pytest.raises(ComputeError, match="not ready within 1s"):
        await never.start(spec("ep-n"), timeout=1)
    assert fake.get("pods", "selkie-ep-n-0") is None


async def test_fake_api_an_expired_watch_lists_again(fake: FakeApiServer) -> None:
    fake.fail_next("WATCH", "pods", 410)
    driver = make_driver(fake)
    assert (await driver.start(spec("ep-w"), timeout=10)).running
    assert not fake.failures[("WATCH", "pods")]  # the 410 was served, and survived
    await driver.stop("ep-w", timeout=5)


async def test_fake_api_a_pod_that_will_not_stop_is_deleted(fake: FakeApiServer) -> None:
    driver = make_driver(fake, image="stuck:1")
    await driver.start(spec("ep-s"), timeout=10)
    await driver.stop("ep-s", timeout=1)
    assert fake.get("pods", "selkie-ep-s-0") is None
    assert any(m == "DELETE" and p.endswith("/pods/selkie-ep-s-0") for m, p, _ in fake.requests)


async def test_fake_api_errors_become_selkie_errors(fake: FakeApiServer) -> None:
    driver = make_driver(fake)
    assert not (await driver.inspect("ep-missing")).running  # 404: not running
    fake.fail_next("POST", "statefulsets", 403)
    with pytest.raises(ConfigError, match="RBAC"):
        await driver.start(spec("ep-e"), timeout=5)
    fake.fail_next("POST", "statefulsets", 422)
    with pytest.raises(InvalidInput, match="422"):
        await driver.start(spec("ep-e"), timeout=5)
    fake.fail_next("POST", "configmaps", 500)
    with pytest.raises(ComputeError, match="500"):
        await driver.start(spec("ep-e"), timeout=5)
    fake.fail_next("PATCH", "scale", 500)
    with pytest.raises(ComputeError):
        await driver.stop("ep-e", timeout=5)
    with pytest.raises(ComputeError, match="not running"):
        await driver.execute("ep-e", ["SELECT 1"])
    # After the injected failures the same calls work: nothing was left half-made.
    assert (await driver.start(spec("ep-e"), timeout=10)).running
    await driver.stop("ep-e", timeout=5)


async def test_fake_api_branches_are_claims_cloned_from_their_parent(
    fake: FakeApiServer, tmp_path: Path
) -> None:
    driver = make_driver(fake, storage_class="fast", storage_size="20Gi")
    storage = KubernetesStorage(driver, project_of=lambda _: "p-1", scratch=tmp_path)
    settings = ProjectSettings()
    assert not storage.branch_exists("br-1")
    await storage.create_branch("br-1", parent=None, settings=settings)
    await storage.create_branch("br-1", parent=None, settings=settings)  # idempotent
    assert storage.branch_exists("br-1")
    pvc = fake.get("persistentvolumeclaims", "selkie-br-1-data")
    assert pvc is not None and pvc["spec"]["storageClassName"] == "fast"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert "dataSource" not in pvc["spec"]
    await storage.create_branch("br-2", parent=ParentState(branch_id="br-1"), settings=settings)
    child = fake.get("persistentvolumeclaims", "selkie-br-2-data")
    assert child is not None
    assert child["spec"]["dataSource"] == {
        "kind": "PersistentVolumeClaim",
        "name": "selkie-br-1-data",
    }

    def password(branch: str) -> str:
        secret = fake.get("secrets", f"selkie-{branch}-admin")
        assert secret is not None
        return base64.b64decode(secret["data"]["password"]).decode()

    assert len(password("br-1")) == 32 and password("br-2") == password("br-1")
    await storage.delete_branch("br-2")
    await storage.delete_branch("br-2")
    assert fake.names("persistentvolumeclaims") == ["selkie-br-1-data"]
    assert fake.names("secrets") == ["selkie-br-1-admin"]
    assert await storage.branch_size("br-1") is None


async def test_fake_api_pageserver_computes_use_their_image_and_no_claim(
    fake: FakeApiServer,
) -> None:
    driver = make_driver(fake, pageserver_image="registry.example/mariadb-pageserver:1")
    await driver.start(
        spec("ep-p", server_options={"innodb_page_server_address": "ps"}), timeout=10
    )
    sts = fake.get("statefulsets", "selkie-ep-p")
    assert sts is not None
    pod_spec = sts["spec"]["template"]["spec"]
    assert pod_spec["containers"][0]["image"] == "registry.example/mariadb-pageserver:1"
    assert {"name": "data", "emptyDir": {}} in pod_spec["volumes"]
    cnf = fake.get("configmaps", "selkie-ep-p-config")["data"]["selkie.cnf"]  # type: ignore[index]
    assert "innodb_page_server_address=ps" in cnf
    await driver.stop("ep-p", timeout=5)
