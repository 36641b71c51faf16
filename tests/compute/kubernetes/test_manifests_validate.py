"""The Kubernetes objects Selkie generates, and deploy/kubernetes, validated offline against
the Kubernetes OpenAPI schemas (kubernetes-validate; no cluster involved)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from selkie.compute.base import ComputeSpec
from selkie.compute.kubernetes import KubeSettings, branch_objects, compute_objects
from selkie.storage.kubernetes import fill_pod

VERSION = "1.30"
DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "kubernetes"


def validate(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, VERSION, strict=True)


@pytest.mark.parametrize("cu", [0.25, 1, 7.5])
@pytest.mark.parametrize("pageserver", [False, True])
def test_generated_compute_objects_validate(cu: float, pageserver: bool) -> None:
    spec = ComputeSpec(
        endpoint_id="ep-quiet-river-123456",
        project_id="p-cool-lake-654321",
        branch_id="br-dark-sea-111111",
        cu=cu,
        datadir=Path("/unused"),
        server_options={"innodb_page_server_address": "ps"} if pageserver else {},
    )
    ks = KubeSettings(namespace="selkie", pageserver_image="example/mariadb-ps:1")
    objects = compute_objects(spec, ks, replicas=1)
    assert [o["kind"] for o in objects] == ["ConfigMap", "Service", "StatefulSet"]
    for obj in objects:
        validate(obj)


def test_generated_branch_objects_validate() -> None:
    ks = KubeSettings(namespace="selkie", storage_class="fast")
    for parent in (None, "br-dark-sea-111111"):
        for obj in branch_objects("br-new-one-222222", "p-x", ks, password="pw", parent_id=parent):
            validate(obj)
    # The pod that pours restored data into a new claim.
    pod = fill_pod("br-new-one-222222", "selkie", "mariadb:11.4")
    validate(pod)
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert "env" not in pod["spec"]["containers"][0]  # nothing of Selkie's in it


def test_deploy_manifests_validate_and_keep_rbac_in_the_namespace() -> None:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Deployment",
        "Namespace",
        "NetworkPolicy",
        "NetworkPolicy",  # the API's internal port: proxies only
        "NetworkPolicy",  # the safekeeper's API: the API replicas only
        "Role",
        "RoleBinding",
        "Secret",
        "Service",
        "Service",
        "Service",
        "ServiceAccount",
        "StatefulSet",  # the safekeeper
    ]
    for doc in docs:
        validate(doc)
    # Namespace-scoped permissions only: no ClusterRole, nothing outside "selkie".
    assert all(d["metadata"].get("namespace", "selkie") == "selkie" for d in docs)
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    # The API replicas run `selkie api` with the service account; proxies get no token.
    by_name = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    api = by_name["selkie-api"]["spec"]["template"]["spec"]
    assert api["serviceAccountName"] == "selkie"
    assert api["containers"][0]["command"] == ["selkie", "api"]
    proxy = by_name["selkie-proxy"]["spec"]["template"]["spec"]
    assert proxy["automountServiceAccountToken"] is False
    assert proxy["containers"][0]["command"] == ["selkie", "proxy"]
    # The safekeeper: its own process and volume, the API replicas pointed at it, and of
    # the shared Secret only what it needs (no Kubernetes token, no state store URL).
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    sk = sts["spec"]["template"]["spec"]
    assert sk["containers"][0]["command"] == ["selkie", "safekeeper"]
    assert sk["automountServiceAccountToken"] is False
    env = {e["name"] for e in sk["containers"][0]["env"]}
    assert "SELKIE_DATABASE_URL" not in env and "envFrom" not in sk["containers"][0]
    assert {"SELKIE_SAFEKEEPER_KEY", "SELKIE_INTERNAL_TOKEN", "SELKIE_ARCHIVE_URL"} <= env
    settings = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert settings["SELKIE_SAFEKEEPER_URL"].endswith("selkie-safekeeper.selkie.svc:8083")


def test_an_invalid_object_is_refused() -> None:
    """The validation can fail: a StatefulSet without its selector is not valid."""
    spec = ComputeSpec(endpoint_id="ep-a", project_id="p", branch_id="b", cu=1, datadir=Path("/x"))
    sts = compute_objects(spec, KubeSettings(), replicas=1)[2]
    del sts["spec"]["selector"]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(sts)
