"""The Helm chart, rendered by the real Helm binary: lint, Kubernetes schemas, values schema, RBAC."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from trainforge.spec.yamlio import loads_all

from tests.support.chart import CHART, ChartError, find, helm, operator_rules, render, trainer_rules
from tests.support.kube_rules import draft4

K8S_VERSION = "1.32"
# Kinds whose schema is a CRD, not Kubernetes': checked separately (ours) or left to their operator.
CUSTOM_KINDS = {"ServiceMonitor", "KopfPeering", "ClusterKopfPeering"}
COMBOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"], "trainer": {"defaultStorage": "s3://ckpt/runs",
                                                                      "defaultEndpoint": "http://minio:9000",
                                                                      "networkPolicy": {"scope": "namespace"}}},
    "ha-monitored": {"operator": {"replicas": 2, "podAnnotations": {"a": "b"}, "priorityClassName": "high"},
                     "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}},
    "bring-your-own": {
        "crds": {"install": False}, "metrics": {"enabled": False},
        "serviceAccount": {"create": False, "name": "ops"}, "trainer": {"serviceAccount": {"create": False}},
        "operator": {"image": {"repository": "registry.example/tf-operator", "tag": "9.9", "pullPolicy": "Always"},
                     "nodeSelector": {"pool": "system"},
                     "tolerations": [{"key": "system", "operator": "Exists", "effect": "NoSchedule"}],
                     "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                         "nodeSelectorTerms": [{"matchExpressions": [
                             {"key": "pool", "operator": "In", "values": ["system"]}]}]}}}},
    },
}


def _values_file(tmp_path: Path, values: dict[str, Any]) -> str:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


@pytest.mark.parametrize("combo", sorted(COMBOS))
def test_helm_lint_strict_passes(combo: str, tmp_path: Path) -> None:
    done = helm("lint", "--strict", str(CHART), "-f", _values_file(tmp_path, COMBOS[combo]))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("combo", sorted(COMBOS))
def test_rendered_manifests_validate_against_the_kubernetes_schemas(combo: str) -> None:
    docs = render(COMBOS[combo])
    assert find(docs, "Deployment") and find(docs, "ClusterRole")
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {err.message} at {list(err.path)}")


def test_the_rendered_crd_is_the_generated_one_and_takes_the_examples(repo_root: Path) -> None:
    (crd,) = find(render(), "CustomResourceDefinition", "trainingjobs.trainforge.dev")
    generated = yaml.safe_load((CHART / "files" / "trainingjobs.trainforge.dev.yaml").read_text())
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert crd["spec"] == generated["spec"]
    schema = draft4(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    examples = sorted((repo_root / "examples").glob("*.yaml"))
    assert len(examples) >= 3
    for path in examples:
        for doc in loads_all(path.read_text()):
            jsonschema.Draft4Validator(schema).validate(doc)
    assert not find(render({"crds": {"install": False}}), "CustomResourceDefinition")


@pytest.mark.parametrize(("values", "field"), [
    ({"operator": {"replicas": 0}}, "operator.replicas"),
    ({"operator": {"logFormat": "xml"}}, "operator.logFormat"),
    ({"operator": {"image": {"pullPolicy": "Sometimes"}}}, "operator.image.pullPolicy"),
    ({"watchNamespaces": ["Team_A"]}, "watchNamespaces.0"),
    ({"trainer": {"defaultStorage": "my-bucket/runs"}}, "trainer.defaultStorage"),
    ({"metrics": {"port": 70000}}, "metrics.port"),
    ({"metrics": {"address": "localhost; rm -rf /"}}, "metrics.address"),
    ({"operator": {"healthAddress": "any"}}, "operator.healthAddress"),
    ({"trainer": {"networkPolicy": {"kuberayNamespace": "Kube_Ray"}}}, "trainer.networkPolicy.kuberayNamespace"),
    ({"replicas": 2}, "additional properties 'replicas' not allowed"),
])
def test_values_schema_rejects_bad_values(values: dict[str, Any], field: str) -> None:
    with pytest.raises(ChartError, match="values don't meet the specifications of the schema") as err:
        render(values)
    assert field.replace(".", "/") in str(err.value) or field in str(err.value), str(err.value)


def test_the_operator_pod_is_locked_down_and_probed() -> None:
    (deploy,) = find(render(), "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    ctx = container["securityContext"]
    assert ctx == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" and container["readinessProbe"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]  # the only writable path
    assert "--standalone" in container["args"] and "--all-namespaces" in container["args"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["TRAINFORGE_TRAINER_IMAGE"] == "ghcr.io/trainforge/trainer:0.1.0"
    assert env["TRAINFORGE_TRAINER_SERVICE_ACCOUNT"] == "trainforge-trainer"


def test_health_and_metrics_listen_where_the_values_say() -> None:
    def args_of(values: dict[str, Any]) -> list[str]:
        (container,) = find(render(values), "Deployment")[0]["spec"]["template"]["spec"]["containers"]
        return container["args"]

    assert {"--health-address=0.0.0.0", "--metrics-address=0.0.0.0"} <= set(args_of({}))
    narrowed = args_of({"operator": {"healthAddress": "::"}, "metrics": {"address": "127.0.0.1"}})
    assert {"--health-address=::", "--metrics-address=127.0.0.1"} <= set(narrowed)


def test_every_jobs_ray_cluster_is_fenced_unless_turned_off() -> None:
    """The operator makes each job's token Secret and NetworkPolicy (trainforge_operator.guard) from these."""
    def env_of(values: dict[str, Any]) -> dict[str, Any]:
        (container,) = find(render(values), "Deployment")[0]["spec"]["template"]["spec"]["containers"]
        return {e["name"]: e.get("value") for e in container["env"]}

    env = env_of({})
    assert (env["TRAINFORGE_RAY_AUTH"], env["TRAINFORGE_NETWORK_POLICY"]) == ("true", "true")
    assert env["TRAINFORGE_KUBERAY_POD_LABELS"] == "app.kubernetes.io/name=kuberay-operator"
    assert env["TRAINFORGE_KUBERAY_NAMESPACE"] == ""
    custom = env_of({"trainer": {"rayAuth": False, "networkPolicy": {
        "enabled": False, "kuberayNamespace": "kuberay",  # null drops a default key (Helm merges maps)
        "kuberayPodLabels": {"app.kubernetes.io/name": None, "app": "kuberay", "tier": "ctl"}}}})
    assert (custom["TRAINFORGE_RAY_AUTH"], custom["TRAINFORGE_NETWORK_POLICY"]) == ("false", "false")
    assert (custom["TRAINFORGE_KUBERAY_NAMESPACE"], custom["TRAINFORGE_KUBERAY_POD_LABELS"]) == (
        "kuberay", "app=kuberay,tier=ctl")


def test_scope_namespace_renders_one_network_policy_per_trainer_namespace_instead_of_the_operators() -> None:
    """What the operator's per-job policy admits (the job's pods, KubeRay), widened to every trainforge
    job pod of the namespace: a NetworkPolicy cannot match "the pod's own job"."""
    assert not find(render({}), "NetworkPolicy")  # default scope job: the operator makes them
    docs = render({"watchNamespaces": ["team-a", "team-b"], "trainer": {"networkPolicy": {
        "scope": "namespace", "kuberayNamespace": "kuberay"}}})
    policies = find(docs, "NetworkPolicy")
    assert sorted(p["metadata"]["namespace"] for p in policies) == ["team-a", "team-b"]
    job_pods = {"matchExpressions": [{"key": "trainforge.dev/job", "operator": "Exists"}]}
    assert policies[0]["spec"] == {"podSelector": job_pods, "policyTypes": ["Ingress"], "ingress": [{"from": [
        {"podSelector": job_pods},
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}},
         "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kuberay"}}}]}]}
    (container,) = find(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TRAINFORGE_NETWORK_POLICY"] == "false"  # not both: the chart's would widen the job's
    off = render({"trainer": {"networkPolicy": {"enabled": False, "scope": "namespace"}}})
    assert not find(off, "NetworkPolicy")
    with pytest.raises(ChartError, match="scope"):
        render({"trainer": {"networkPolicy": {"scope": "cluster"}}})


def test_the_operator_knows_its_own_account_and_what_jobs_may_run_as() -> None:
    """The policy's inputs (trainforge_operator.policy): the operator's identity from the downward API,
    the allow-list with the trainer account first, and no jobs in the release namespace."""
    def env_of(values: dict[str, Any]) -> dict[str, Any]:
        (container,) = find(render(values), "Deployment")[0]["spec"]["template"]["spec"]["containers"]
        return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}

    env = env_of({})
    assert env["TRAINFORGE_OPERATOR_SERVICE_ACCOUNT"] == {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}
    assert env["TRAINFORGE_OPERATOR_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["TRAINFORGE_ALLOWED_SERVICE_ACCOUNTS"] == "trainforge-trainer"
    assert env["TRAINFORGE_JOBS_IN_OPERATOR_NAMESPACE"] == "false"
    more = env_of({"trainer": {"allowedServiceAccounts": ["team-data", "trainforge-trainer"]}})
    assert more["TRAINFORGE_ALLOWED_SERVICE_ACCOUNTS"] == "trainforge-trainer,team-data"


def test_jobs_do_not_run_in_the_release_namespace_by_default() -> None:
    def trainer_namespaces(values: dict[str, Any]) -> list[str]:
        return sorted(r["metadata"]["namespace"] for r in find(render(values), "Role", "trainforge-trainer"))

    assert trainer_namespaces({}) == ["default"]  # watching every namespace, and the release's is "trainforge"
    assert trainer_namespaces({"watchNamespaces": ["trainforge", "team-a"]}) == ["team-a"]
    allowed = {"trainer": {"namespaces": ["trainforge"], "allowJobsInReleaseNamespace": True}}
    assert trainer_namespaces(allowed) == ["trainforge"]
    assert trainer_namespaces({"trainer": {"namespaces": ["trainforge"]}}) == []


def test_more_replicas_elect_a_leader_through_kopf_peering() -> None:
    docs = render({"operator": {"replicas": 3}})
    (container,) = find(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    assert "--peering=tf-trainforge" in container["args"] and "--standalone" not in container["args"]
    (peering,) = find(docs, "ClusterKopfPeering")
    assert peering["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    assert {"apiGroups": ["kopf.dev"], "resources": ["clusterkopfpeerings"],
            "verbs": ["get", "list", "watch", "patch"]} in operator_rules(docs)


def test_namespaced_mode_grants_jobs_only_in_the_watched_namespaces() -> None:
    docs = render({"watchNamespaces": ["team-a", "team-b"]})
    cluster_resources = {r for rule in operator_rules(docs) for r in rule["resources"]}
    assert cluster_resources == {"customresourcedefinitions", "namespaces"}
    roles = find(docs, "Role", "tf-trainforge-operator")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    trainer_namespaces = sorted(r["metadata"]["namespace"] for r in find(docs, "Role", "trainforge-trainer"))
    assert trainer_namespaces == ["team-a", "team-b"]
    (container,) = find(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    assert "--namespace=team-a" in container["args"] and "--all-namespaces" not in container["args"]


def documented_rules(readme: Path, title: str) -> list[dict[str, Any]]:
    """The rules a README YAML block titled `# <title>` lists."""
    for block in re.findall(r"```yaml\n(.*?)```", readme.read_text(), re.S):
        if block.startswith(f"# {title}\n"):
            return yaml.safe_load(block)["rules"]
    raise AssertionError(f"README has no ```yaml block starting with '# {title}'")


def test_the_roles_grant_exactly_what_the_readme_documents(repo_root: Path) -> None:
    docs = render()
    assert operator_rules(docs) == documented_rules(repo_root / "README.md", "operator ClusterRole")
    assert trainer_rules(docs) == documented_rules(repo_root / "README.md", "trainer Role")


def notes(*args: str) -> str:
    done = helm("install", "tf", str(CHART), "-n", "ml", "--dry-run=client", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.split("NOTES:", 1)[1]


def test_notes_warn_when_kuberay_is_missing_and_show_a_first_job() -> None:
    missing = notes()
    assert "WARNING: KubeRay is not installed" in missing and "helm install kuberay-operator" in missing
    assert "kubectl apply -n default -f examples/digits-ddp.yaml" in missing  # not the release's namespace
    assert "WARNING: no job namespace" in notes("--set", "trainer.namespaces={ml}")
    # On a cluster serving ray.io/v1 RayJob the warning is left out (.Capabilities; `--dry-run=client`
    # cannot be told of extra API versions, so that branch is not rendered here).
    assert "--set" not in missing and "rollout status deployment/tf-trainforge-operator" in missing


def test_the_grafana_dashboard_is_off_by_default_and_queries_only_the_operators_metrics() -> None:
    import json

    from trainforge_operator.metrics import REGISTRY

    assert not [c for c in find(render({}), "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    (config,) = [c for c in find(render({"metrics": {"grafanaDashboard": {"enabled": True, "annotations": {
        "grafana_folder": "Training"}}}}), "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config["metadata"]["annotations"] == {"grafana_folder": "Training"}
    dashboard = json.loads(config["data"]["trainforge-operator.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\btrainforge_[a-z_]+", e)}
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    exported = {f.name + s for f in REGISTRY.collect() for s in suffixes.get(f.type, ("",))}
    exported |= {"trainforge_jobs"}  # a collector registered when the operator starts
    assert used and used <= exported, used - exported
