"""The manifests in ``deploy/`` are valid and agree with the code, checked offline.

Kubernetes kinds against the schemas ``kubernetes-validate`` ships (strict: an unknown field
fails); KEDA's ``ScaledObject`` and ``TriggerAuthentication`` against KEDA's own
CustomResourceDefinitions, kept in ``tests/support/keda`` (made strict the same way), and
each trigger's metadata against the keys its scaler reads. Then what only this project
knows: the worker pods' grace covers the workers', the stream and group a scaler reads are
the ones jobstream writes, the metrics a query names are the ones the web app serves, and
every selector finds its pods.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from broker.keys import Keys
from broker.store import GROUP
from web.routes.admin import _QUEUE_GAUGES

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KEDA = ROOT / "tests" / "support" / "keda"
KUBERNETES_VERSION = "1.31"
SIGN_OFF_SECONDS = 10
"""What a worker needs past its grace: its last writes take at most 5 s (job_broker.py)."""

REDIS_STREAMS_KEYS = {
    "address", "addresses", "host", "hosts", "port", "ports", "username", "password", "databaseIndex",
    "enableTLS", "unsafeSsl", "stream", "consumerGroup", "lagCount", "pendingEntriesCount",
    "streamLength", "activationLagCount", "sentinelMaster", "sentinelUsername", "sentinelPassword",
}  # fmt: skip
PROMETHEUS_KEYS = {
    "serverAddress", "query", "queryParameters", "threshold", "activationThreshold", "namespace",
    "customHeaders", "ignoreNullValues", "unsafeSsl", "awsRegion", "timeout", "identityOwner",
}  # fmt: skip
"""The trigger metadata KEDA v2.20's scalers read (pkg/scalers/redis_scaler.go, redis_streams_scaler.go,
prometheus_scaler.go); any other key is a typo KEDA would ignore."""


def documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((str(path.relative_to(ROOT)), doc))
    return found


DOCS = documents()


def of_kind(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for _, d in DOCS if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def strict(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` wherever it lists properties and says
    nothing of others (what ``kubectl apply --validate=strict`` does to a custom resource)."""
    schema = copy.deepcopy(schema)
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return schema


def keda_schema(kind: str) -> Any:
    for path in KEDA.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            return strict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    raise LookupError(kind)


def test_there_is_everything_the_issue_asks_for() -> None:
    kinds = sorted({(d["kind"], d["metadata"]["name"]) for _, d in DOCS})
    for wanted in [
        ("Deployment", "jobstream-web"), ("Service", "jobstream-web"), ("Deployment", "jobstream-worker"),
        ("PodDisruptionBudget", "jobstream-worker"), ("Deployment", "jobstream-scheduler"),
    ]:  # fmt: skip
        assert wanted in kinds
    triggers = {t["type"] for so in of_kind("ScaledObject") for t in so["spec"]["triggers"]}
    assert triggers == {"redis-streams", "prometheus"}


@pytest.mark.parametrize(("path", "doc"), DOCS, ids=[f"{p}:{d['kind']}" for p, d in DOCS])
def test_each_manifest_validates_against_its_schema(path: str, doc: dict[str, Any]) -> None:
    if doc["apiVersion"].startswith("keda.sh/"):
        jsonschema.validate(doc, keda_schema(doc["kind"]))
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validators_refuse_a_typo() -> None:
    worker = copy.deepcopy(of_kind("Deployment", "jobstream-worker")[0])
    worker["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, KUBERNETES_VERSION, strict=True)
    scaled = copy.deepcopy(of_kind("ScaledObject")[0])
    scaled["spec"]["minReplicas"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, keda_schema("ScaledObject"))


def test_worker_pods_wait_for_the_workers_grace() -> None:
    config = of_kind("ConfigMap", "jobstream")[0]["data"]
    grace = float(config["JOBSTREAM_SHUTDOWN_GRACE_SECONDS"])
    pod = of_kind("Deployment", "jobstream-worker")[0]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= grace + SIGN_OFF_SECONDS
    assert pod["containers"][0]["command"] == ["python", "-m", "workers"]
    assert pod["containers"][0]["ports"][0]["containerPort"] == int(config["JOBSTREAM_WORKER_METRICS_PORT"])


def test_selectors_find_their_pods() -> None:
    for kind, name in [("PodDisruptionBudget", "jobstream-worker"), ("Service", "jobstream-web")]:
        selector = of_kind(kind, name)[0]["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        target = of_kind("Deployment", name)[0]["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= target.items(), (kind, name)
    for scaled in of_kind("ScaledObject"):
        assert of_kind("Deployment", scaled["spec"]["scaleTargetRef"]["name"])


def test_triggers_read_what_jobstream_writes() -> None:
    prefix = of_kind("ConfigMap", "jobstream")[0]["data"]["JOBSTREAM_PREFIX"]
    served = {f"jobstream_queue_{name}" for name, _, _ in _QUEUE_GAUGES}
    for scaled in of_kind("ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            meta = trigger["metadata"]
            if trigger["type"] == "redis-streams":
                assert set(meta) <= REDIS_STREAMS_KEYS
                assert meta["stream"] == Keys(prefix).queue("default", 0)
                assert meta["consumerGroup"] == GROUP and int(meta["lagCount"]) > 0
            else:
                assert set(meta) <= PROMETHEUS_KEYS
                names = set(re.findall(r"jobstream_[a-z_]+", meta["query"]))
                assert names and names <= served, names - served
                float(meta["threshold"])
