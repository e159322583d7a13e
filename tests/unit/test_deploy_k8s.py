"""deploy/k8s: every manifest validates against the Kubernetes OpenAPI schemas (strict: no
unknown fields), offline, with the schemas kubernetes-validate ships. KEDA's ScaledObject is a
custom resource whose schema is not bundled: it is checked against the subset of KEDA's CRD
written out below, plus structure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
VERSIONS = ("1.29.0", "1.33.0")  # an older and a recent cluster

_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
SCALED_OBJECT = {  # from KEDA's CRD (keda.sh/v1alpha1 ScaledObject), the fields used here
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer"},
                "advanced": {"type": "object"},
                "fallback": {"type": "object"},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metadata": _STR_MAP,  # map[string]string: numbers must be quoted
                            "authenticationRef": {"type": "object"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
}


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def _builtin() -> list[tuple[str, dict[str, Any]]]:
    return [(f, d) for f, d in _documents() if d["kind"] not in ("ScaledObject", "Kustomization")]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_builtin_manifest_validates_against_the_kubernetes_schemas(version: str) -> None:
    docs = _builtin()
    assert len(docs) >= 12
    for filename, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{filename} {doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}"
            )


def test_the_validator_rejects_a_broken_manifest() -> None:
    _f, deployment = next((f, d) for f, d in _builtin() if d["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["replicas"] = "two"
    broken["spec"]["template"]["spec"]["containerz"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def _kinds() -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d.get("metadata", {}).get("name", "")): d for _f, d in _documents()}


def test_what_the_deployment_needs_is_there() -> None:
    k = _kinds()
    for kind, name in [
        ("Deployment", "kiln-gateway"),
        ("Service", "kiln-gateway"),
        ("HorizontalPodAutoscaler", "kiln-gateway"),
        ("Deployment", "kiln-worker"),
        ("ScaledObject", "kiln-worker"),
        ("Job", "kiln-trainer"),
        ("Job", "kiln-db-upgrade"),
        ("Service", "redis"),
        ("Service", "postgres"),
    ]:
        assert (kind, name) in k, (kind, name)
    assert k[("Service", "redis")]["spec"]["type"] == "ExternalName"
    assert k[("Service", "postgres")]["spec"]["type"] == "ExternalName"
    worker = k[("Deployment", "kiln-worker")]["spec"]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    trainer = k[("Job", "kiln-trainer")]["spec"]["template"]["spec"]["containers"][0]
    assert trainer["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert trainer["command"][:2] == ["kiln", "trainer"]
    # it serves /metrics on the port its scrape annotation names
    annotations = k[("Job", "kiln-trainer")]["spec"]["template"]["metadata"]["annotations"]
    port = trainer["command"][trainer["command"].index("--metrics-port") + 1]
    assert port == annotations["prometheus.io/port"]
    assert trainer["command"][trainer["command"].index("--metrics-host") + 1] == "0.0.0.0"
    ddp = k[("Job", "kiln-trainer-ddp")]["spec"]["template"]["spec"]["containers"][0]
    assert ddp["resources"]["limits"]["nvidia.com/gpu"] >= 2 and ddp["command"] == trainer["command"]
    migrate = k[("Job", "kiln-db-upgrade")]["spec"]["template"]["spec"]["containers"][0]
    assert migrate["command"] == ["kiln", "db", "upgrade"]
    hpa = k[("HorizontalPodAutoscaler", "kiln-gateway")]["spec"]["scaleTargetRef"]
    assert (hpa["kind"], hpa["name"]) == ("Deployment", "kiln-gateway")


def test_keda_scaled_object_scales_workers_on_the_redis_stream() -> None:
    so = _kinds()[("ScaledObject", "kiln-worker")]
    jsonschema.Draft202012Validator(SCALED_OBJECT).validate(so)
    assert so["spec"]["scaleTargetRef"]["name"] == "kiln-worker"
    assert ("Deployment", "kiln-worker") in _kinds()
    streams = [t for t in so["spec"]["triggers"] if t["type"] == "redis-streams"]
    assert streams, "a redis-streams trigger"
    for trig in streams:
        meta = trig["metadata"]
        assert meta["stream"].startswith("kiln:req:") and meta["consumerGroup"] == "workers"
        assert {"lagCount", "pendingEntriesCount", "streamLength"} & set(meta)
    broken = yaml.safe_load(yaml.safe_dump(so))
    broken["spec"]["triggers"][0]["metadata"]["lagCount"] = 32  # KEDA wants strings
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(SCALED_OBJECT).validate(broken)


def test_stream_names_and_group_match_the_code() -> None:
    from workers.contract.redis_keys import GROUP, RedisKeys

    so = _kinds()[("ScaledObject", "kiln-worker")]
    meta = next(t for t in so["spec"]["triggers"] if t["type"] == "redis-streams")["metadata"]
    assert meta["consumerGroup"] == GROUP
    assert RedisKeys("kiln").request_stream(1) == meta["stream"]


def test_kustomization_lists_every_manifest_and_env_names_are_settings() -> None:
    from service.settings import Settings

    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files
    known = {f"KILN_{n.upper()}" for n in Settings.model_fields}
    k = _kinds()
    env = {**k[("ConfigMap", "kiln-config")]["data"], **k[("Secret", "kiln-secrets")]["stringData"]}
    assert set(env) <= known, set(env) - known


def test_scraped_pods_are_named_after_the_alerting_jobs() -> None:
    """prometheus-k8s.yml makes a pod's app.kubernetes.io/name its job; the alerts use these."""
    jobs = set()
    for _f, d in _builtin():
        template = d.get("spec", {}).get("template", {}).get("metadata", {})
        if template.get("annotations", {}).get("prometheus.io/scrape") == "true":
            jobs.add(template["labels"]["app.kubernetes.io/name"])
    assert jobs == {"kiln-gateway", "kiln-worker", "kiln-trainer"}
    alerts = (ROOT / "deploy" / "prometheus" / "alerts.yml").read_text()
    assert 'job="kiln-worker"' in alerts and 'job="kiln-gateway"' in alerts


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    pods = []
    for label, doc in _documents():
        spec = doc.get("spec", {})
        template = spec.get("jobTemplate", {}).get("spec", spec).get("template")
        if template:
            pods.append((f"{label} {doc['kind']}", template["spec"]))
    return pods


def test_every_pod_runs_non_root_with_a_read_only_root_and_no_api_token() -> None:
    pods = _pod_specs()
    assert len(pods) >= 4
    for label, pod in pods:
        assert pod.get("automountServiceAccountToken") is False, label
        assert pod["securityContext"]["runAsNonRoot"] is True, label
        # the DDP trainer: unshare/setns for its ranks' network, inside a pod user namespace
        if label.startswith("trainer-ddp-job.yaml"):
            assert pod["securityContext"]["seccompProfile"]["type"] == "Unconfined", label
            assert pod["hostUsers"] is False, label
        else:
            assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", label
        mounts = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, label
            assert sc["allowPrivilegeEscalation"] is False, label
            assert sc["capabilities"]["drop"] == ["ALL"], label
            for m in c.get("volumeMounts", []):
                if m["mountPath"] == "/tmp":
                    assert "emptyDir" in mounts[m["name"]], label
