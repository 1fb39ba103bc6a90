"""The chart's ValidatingAdmissionPolicy on the trainer accounts' status writes, evaluated with a
real CEL implementation (cel-python, Kubernetes' string/list libraries from tests/support): a trainer
writes its own job's progress and outcome, from its head pod, and nothing the operator owns.

The API server's admission machinery itself (matchConstraints, the binding) is not emulated; the
manifests are checked against Kubernetes' schemas in test_chart.py."""

from __future__ import annotations

import copy
from typing import Any

import celpy
import pytest
from trainforge.lifecycle import OWNED_FIELDS
from trainforge.spec.crd import openapi_schema

from tests.support import kube_cel_lib as lib
from tests.support.chart import find, render

ENV = celpy.Environment()
TRAINER = "system:serviceaccount:ml:trainforge-trainer"
HEAD = "digits-a2-bcdfg-head-x7k2p"
OLD: dict[str, Any] = {
    "apiVersion": "trainforge.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "digits", "namespace": "ml"},
    "spec": {"task": {"entrypoint": "digits"}},
    "status": {"phase": "Running", "attempt": 2, "restarts": 1, "preemptions": 0, "startTime": "2026-12-03T10:00:00Z",
               "progress": {"epoch": 1, "step": 40}},
}


def policy(values: dict[str, Any] | None = None) -> dict[str, Any]:
    (vap,) = find(render(values or {}), "ValidatingAdmissionPolicy")
    return vap["spec"]


def run(expression: str, activation: dict[str, Any]) -> Any:
    return ENV.program(ENV.compile(expression), functions=lib.EXTENSIONS).evaluate(activation)


def admit(spec: dict[str, Any], new: dict[str, Any], user: str = TRAINER, pod: str | None = HEAD,
          old: dict[str, Any] = OLD) -> list[str]:
    """The messages of the validations that deny this UPDATE; [] when admitted or not matched."""
    extra = {"authentication.kubernetes.io/pod-name": [pod]} if pod else {}
    schema = openapi_schema()
    activation: dict[str, Any] = {"request": celpy.json_to_cel({"userInfo": {"username": user, "extra": extra}}),
                                  "object": lib.to_cel(new, schema, root=True),
                                  "oldObject": lib.to_cel(old, schema, root=True)}
    if not all(run(c["expression"], activation) for c in spec["matchConditions"]):
        return []
    activation["variables"] = celpy.json_to_cel({})
    activation["variables"] = celpy.celtypes.MapType(
        {celpy.celtypes.StringType(v["name"]): run(v["expression"], activation) for v in spec["variables"]})
    denied = []
    for rule in spec["validations"]:
        result = run(rule["expression"], activation)
        assert isinstance(result, celpy.celtypes.BoolType), (rule["expression"], result)  # no evaluation error
        if not result:
            denied.append(str(run(rule["messageExpression"], activation)) if "messageExpression" in rule
                          else rule["message"])
    return denied


def changed(base: dict[str, Any] = OLD, **status: Any) -> dict[str, Any]:
    new = copy.deepcopy(base)
    new["status"].update(status)
    return new


def test_the_head_pods_trainer_writes_progress_outcome_and_checkpoints() -> None:
    new = changed(progress={"epoch": 2, "step": 80}, latestCheckpoint="s3://b/r/checkpoint_80",
                  outcome={"attempt": 2, "result": "preempted", "message": "SIGTERM"})
    assert admit(policy(), new) == []


@pytest.mark.parametrize("field", ["attempt", "restarts", "startTime", "phase"])
def test_a_trainer_cannot_touch_what_the_operator_owns(field: str) -> None:
    value = {"attempt": 1, "restarts": 0, "startTime": "2026-12-03T11:00:00Z", "phase": "Succeeded"}[field]
    refusal = [f"status.{field} is the operator's: a trainer may not change it"]
    assert admit(policy(), changed(**{field: value})) == refusal
    dropped = copy.deepcopy(OLD)
    del dropped["status"][field]
    assert admit(policy(), dropped) == refusal


@pytest.mark.parametrize("pod", ["other-a1-bcdfg-head-x7k2p", "digits-a2-bcdfg-worker-workers-x7k2p",
                                 "digits-a1-a2-bcdfg-head-x7k2p", None])
def test_only_a_head_pod_of_the_job_itself_writes_its_status(pod: str | None) -> None:
    (message,) = admit(policy(), changed(progress={"epoch": 2, "step": 80}), pod=pod)
    assert message.startswith("a trainer writes only the status of its own job: pod ") and "of digits" in message


def test_long_names_still_match_as_kuberay_cuts_them() -> None:
    """KubeRay cuts a head pod's prefix (<cluster>) to 50 characters; the job name and -a<N>- survive."""
    name = "a" * 42
    old = copy.deepcopy(OLD)
    old["metadata"]["name"] = name
    pod = f"{name}-a999-bcdfg"[:50] + "-head-x7k2p"
    assert len(pod) == 61 and pod.startswith(f"{name}-a999-")
    assert admit(policy(), changed(old, progress={"epoch": 2, "step": 80}), pod=pod, old=old) == []


def test_the_operator_and_users_are_not_matched() -> None:
    new = changed(attempt=3, restarts=2)
    assert admit(policy(), new, user="system:serviceaccount:trainforge:trainforge", pod=None) == []
    assert admit(policy(), new, user="alice@example.com", pod=None) == []


def test_every_allowed_account_is_held_to_it_and_the_fields_are_the_lifecycles() -> None:
    spec = policy({"trainer": {"allowedServiceAccounts": ["team-data"]}})
    assert admit(spec, changed(attempt=9), user="system:serviceaccount:ml:team-data") != []
    guarded = {r["message"].split()[0].removeprefix("status.") for r in spec["validations"] if "message" in r}
    assert guarded == set(OWNED_FIELDS)
    assert not find(render({"trainer": {"statusPolicy": {"enabled": False}}}), "ValidatingAdmissionPolicy")
