"""The operator's policy on what a job may run as and where: the service-account escalation of the
default install (a job naming the operator's own account) is refused with a reason naming
spec.serviceAccountName, as is any account outside the allow-list, and jobs in the operator's own
namespace unless the admin allows them."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from trainforge_operator.settings import OperatorSettings

from tests.unit.test_reconcile import SETTINGS, job, step

CHART = dataclasses.replace(SETTINGS, trainer_service_account="trainforge-trainer",
                            allowed_service_accounts=("trainforge-trainer",),
                            operator_service_account="trainforge", operator_namespace="trainforge-system")


def in_namespace(namespace: str, **spec: Any) -> dict[str, Any]:
    doc = job(**spec)
    doc["metadata"]["namespace"] = namespace
    return doc


def failed_with(doc: dict[str, Any]) -> tuple[str, str]:
    assert doc["status"]["phase"] == "Failed", doc["status"]
    return doc["status"]["reason"], doc["status"]["message"]


def test_a_job_naming_the_operators_own_account_is_refused_even_when_allowed_and_in_its_namespace() -> None:
    lax = dataclasses.replace(CHART, allowed_service_accounts=(), jobs_in_own_namespace=True)
    decision, doc = step(in_namespace("trainforge-system", serviceAccountName="trainforge"), settings=lax)
    reason, message = failed_with(doc)
    assert reason == "NotAllowed" and decision.create is None
    assert message.startswith("spec.serviceAccountName: 'trainforge' is the operator's own service account")
    assert "trainforge-trainer" in message  # the way out: the trainer account


def test_an_account_outside_the_allow_list_is_refused_naming_the_field_and_the_chart_value() -> None:
    decision, doc = step(job(serviceAccountName="cluster-admin-sa"), settings=CHART)
    reason, message = failed_with(doc)
    assert reason == "NotAllowed" and decision.create is None
    assert "spec.serviceAccountName: 'cluster-admin-sa'" in message and "trainer.allowedServiceAccounts" in message


@pytest.mark.parametrize("account", [None, "trainforge-trainer"])
def test_the_trainer_account_runs(account: str | None) -> None:
    spec = {"serviceAccountName": account} if account else {}
    decision, doc = step(job(**spec), settings=CHART)
    assert decision.create is not None and doc["status"]["phase"] != "Failed"
    pod = decision.create["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "trainforge-trainer"


def test_an_allow_listed_account_runs() -> None:
    settings = dataclasses.replace(CHART, allowed_service_accounts=("trainforge-trainer", "team-a-data"))
    decision, _ = step(job(serviceAccountName="team-a-data"), settings=settings)
    assert decision.create is not None


def test_jobs_in_the_operators_namespace_are_refused_unless_allowed() -> None:
    decision, doc = step(in_namespace("trainforge-system"), settings=CHART)
    reason, message = failed_with(doc)
    assert reason == "NotAllowed" and message.startswith("metadata.namespace: 'trainforge-system'")
    assert "trainer.allowJobsInReleaseNamespace" in message and decision.create is None
    allowed = dataclasses.replace(CHART, jobs_in_own_namespace=True)
    assert step(in_namespace("trainforge-system"), settings=allowed)[0].create is not None


def test_without_operator_identity_an_explicit_account_runs() -> None:
    """Outside the chart (the local operator of the tests and `trainforge operator`), nothing is known
    about the operator's own account: an explicit account runs as given."""
    assert step(job(serviceAccountName="mine"), settings=SETTINGS)[0].create is not None


def test_settings_read_the_policy_from_the_environment() -> None:
    settings = OperatorSettings.from_env({
        "TRAINFORGE_ALLOWED_SERVICE_ACCOUNTS": "a, b,", "TRAINFORGE_OPERATOR_SERVICE_ACCOUNT": "op",
        "TRAINFORGE_OPERATOR_NAMESPACE": "sys", "TRAINFORGE_JOBS_IN_OPERATOR_NAMESPACE": "true"})
    assert settings.allowed_service_accounts == ("a", "b")
    assert (settings.operator_service_account, settings.operator_namespace, settings.jobs_in_own_namespace) == (
        "op", "sys", True)
