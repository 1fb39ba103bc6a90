"""The Helm chart as the tests see it: rendered by the real Helm binary (`make tools` fetches it), and
the RBAC it grants, to check API calls against."""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.kube_rules import ApiCall

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "trainforge"
HELM = ROOT / ".tools" / "helm" / "helm"
RELEASE, NAMESPACE = "tf", "trainforge"
OPERATOR_AGENTS = ("kopf/", "trainforge-operator/")
TRAINER_AGENT = "trainforge-trainer/"


def helm(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    if not HELM.exists():
        pytest.fail(f"{HELM} is missing: `make tools` (part of `make test`) fetches it")
    return subprocess.run([str(HELM), *args], input=stdin, capture_output=True, text=True, timeout=60)


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """`helm template` of the chart with `values`; the rendered objects."""
    return [doc for doc in yaml.safe_load_all(_template(json.dumps(values or {}, sort_keys=True))) if doc]


@functools.cache
def _template(values_json: str) -> str:
    done = helm("template", RELEASE, str(CHART), "-n", NAMESPACE, "-f", "-", stdin=values_json)
    if done.returncode != 0:
        raise ChartError(done.stderr.strip())
    return done.stdout


class ChartError(Exception):
    """Helm refused to render (schema violations, template errors); the message is Helm's."""


def find(docs: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]


def operator_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    (role,) = find(docs, "ClusterRole", f"{RELEASE}-trainforge-operator")
    return list(role["rules"])


def trainer_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    (role,) = find(docs, "Role", "trainforge-trainer")
    return list(role["rules"])


def allows(rules: list[dict[str, Any]], call: ApiCall) -> bool:
    """Whether RBAC `rules` allow `call` (resource requests; discovery URLs are open to every user)."""
    if call.resource is None:
        return True
    resource = f"{call.resource}/{call.subresource}" if call.subresource else call.resource
    return any((call.group or "") in rule.get("apiGroups", []) and resource in rule.get("resources", [])
               and call.verb in rule.get("verbs", []) for rule in rules)


def refused(calls: Iterable[ApiCall], docs: list[dict[str, Any]]) -> list[str]:
    """The operator's and the trainer's calls that the chart's roles would refuse."""
    operator, trainer = operator_rules(docs), trainer_rules(docs)
    problems = []
    for call in calls:
        if call.user_agent.startswith(OPERATOR_AGENTS):
            rules, who = operator, "operator"
        elif call.user_agent.startswith(TRAINER_AGENT):
            rules, who = trainer, "trainer"
        else:
            continue
        if not allows(rules, call):
            problems.append(f"{who}: {call.verb} {call.group or 'core'}/{call.resource}"
                            f"{'/' + call.subresource if call.subresource else ''} ({call.path})")
    return sorted(set(problems))


@pytest.fixture
def rbac_checked(kube: Any) -> Any:
    """After the test: every call the operator and the trainer made is one the chart's roles allow."""
    yield
    problems = refused(kube.requests, render())
    assert not problems, "calls the chart's RBAC would refuse:\n" + "\n".join(problems)
