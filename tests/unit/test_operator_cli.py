"""`python -m trainforge_operator` options → kopf.run arguments; the entrypoint's env contract."""

from __future__ import annotations

import urllib.request

from trainforge.spec.contract import SPEC_ENV
from trainforge_operator import metrics
from trainforge_operator.__main__ import parse_args, run_kwargs
from trainforge_operator.settings import OperatorSettings
from trainforge_trainer import run


def test_defaults_watch_every_namespace_standalone_with_health() -> None:
    kwargs = run_kwargs(parse_args([]))
    assert kwargs["clusterwide"] and kwargs["standalone"]
    assert kwargs["liveness_endpoint"] == "http://0.0.0.0:8080/healthz"


def test_the_health_endpoint_listens_on_the_address_asked_for() -> None:
    assert run_kwargs(parse_args(["--health-address", "127.0.0.1"]))["liveness_endpoint"] == \
        "http://127.0.0.1:8080/healthz"
    assert run_kwargs(parse_args(["--health-address", "::1", "--health-port", "9"]))["liveness_endpoint"] == \
        "http://[::1]:9/healthz"


def test_metrics_listen_on_the_address_asked_for() -> None:
    server, _ = metrics.serve(0, "127.0.0.1")
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            assert b"trainforge" in answer.read()
    finally:
        server.shutdown()
        server.server_close()


def test_namespaces_from_flags_or_env_and_peering() -> None:
    kwargs = run_kwargs(parse_args(["-n", "team-a", "-n", "team-b", "--peering", "trainforge", "--priority", "5"]))
    assert kwargs["namespaces"] == ["team-a", "team-b"] and not kwargs["clusterwide"]
    assert kwargs["peering_name"] == "trainforge" and kwargs["priority"] == 5 and "standalone" not in kwargs
    from_env = run_kwargs(parse_args(["--health-port", "0"]), "ml, research")
    assert from_env["namespaces"] == ["ml", "research"] and "liveness_endpoint" not in from_env


def test_settings_from_env() -> None:
    s = OperatorSettings.from_env({"TRAINFORGE_TRAINER_IMAGE": "reg/t:1", "TRAINFORGE_DEFAULT_STORAGE": "s3://b/p",
                                   "TRAINFORGE_HEAD_LOST_GRACE_S": "30", "TRAINFORGE_WATCH_NAMESPACES": "a,b"})
    assert (s.trainer_image, s.default_storage, s.head_lost_grace_s, s.namespaces) == ("reg/t:1", "s3://b/p", 30.0,
                                                                                        ("a", "b"))


def test_operator_and_trainer_agree_on_the_payload_variable() -> None:
    assert run.SPEC_ENV == SPEC_ENV  # two images, one contract


def test_peering_replicas_get_distinct_random_priorities_unless_one_is_given() -> None:
    priorities = {run_kwargs(parse_args(["--peering", "tf"]))["priority"] for _ in range(20)}
    assert len(priorities) > 15 and all(p > 0 for p in priorities)  # equal priorities would freeze kopf


def test_the_trainer_service_account_comes_from_the_env() -> None:
    assert OperatorSettings.from_env({"TRAINFORGE_TRAINER_SERVICE_ACCOUNT": "tf-trainer"}).trainer_service_account \
        == "tf-trainer"
    assert OperatorSettings.from_env({}).trainer_service_account is None
