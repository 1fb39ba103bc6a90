"""What a job author may ask of the operator: the service account its pods run as, the namespace it
runs in. A pure check of the spec against the operator's settings; the reconcile fails the job with
`Reason.NOT_ALLOWED` and this message when it says no.

Note:
    A job's pods run user code with the token of their service account. A job naming the operator's
    own account would run with the right to create RayJobs (and so pods, as any account) in every
    namespace the operator serves; one naming an arbitrary account gets whatever that account may do.
    So only the allow-listed accounts are accepted, and never the operator's own.
"""

from __future__ import annotations

from trainforge.spec import TrainingJobSpec

from .settings import OperatorSettings


def refusal(spec: TrainingJobSpec, namespace: str, settings: OperatorSettings) -> str | None:
    """Why the operator will not run this job as written, naming the field; None when it will."""
    if (ns := namespace_refusal(namespace, settings)) is not None:
        return ns
    return account_refusal(spec.service_account_name, namespace, settings)


def namespace_refusal(namespace: str, settings: OperatorSettings) -> str | None:
    if settings.operator_namespace and namespace == settings.operator_namespace and not settings.jobs_in_own_namespace:
        return (f"metadata.namespace: {namespace!r} is the operator's own namespace, where its service account and "
                "secrets live; create the job in a job namespace (the chart's trainer.namespaces), or let the "
                "operator run jobs here (chart value trainer.allowJobsInReleaseNamespace)")
    return None


def account_refusal(account: str | None, namespace: str, settings: OperatorSettings) -> str | None:
    """`spec.serviceAccountName` unset (the trainer account) or allow-listed, and never the operator's."""
    if account is None:
        return None
    if account == settings.operator_service_account and namespace == settings.operator_namespace:
        return (f"spec.serviceAccountName: {account!r} is the operator's own service account; its token may create "
                "RayJobs in every namespace the operator serves. Leave the field unset to run as the trainer "
                f"account{_named(settings.trainer_service_account)}")
    allowed = settings.allowed_service_accounts
    if allowed and account not in allowed and account != settings.trainer_service_account:
        return (f"spec.serviceAccountName: {account!r} is not one the operator lets jobs run as (allowed: "
                f"{', '.join(sorted(set(allowed)))}); leave it unset, or ask the cluster admin to add it to the "
                "chart value trainer.allowedServiceAccounts")
    return None


def _named(account: str | None) -> str:
    return f" ({account!r})" if account else ""
