"""Shared fixtures. Paths are resolved from the repository root so tests run from any directory."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["tests.support.kube", "tests.support.chart"]
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

# Before any Ray starts, so its worker processes inherit them: test tasks import from tests/,
# and S3 clients (boto3, pyarrow) find moto's fake credentials.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
    os.environ.setdefault(key, value)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the whole session: each start costs ~20 s on a 2-core machine."""
    import ray
    from trainforge_trainer.driver import prepare_ray_env

    prepare_ray_env()
    temp_dir = tempfile.mkdtemp(prefix="tfray", dir="/tmp")  # short: Ray's socket paths have a length limit
    # The dashboard is on: Tune over Train needs it to release finished trials' placement groups.
    # 4 logical CPUs on the 2-core machine: sweeps run late in the session, and a placement group an
    # earlier run has not released yet must not starve their trials (a fresh `trainforge run` has
    # no such neighbours).
    ray.init(num_cpus=4, include_dashboard=True, log_to_driver=False, configure_logging=False,
             _temp_dir=temp_dir)
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real moto S3 server on loopback, shared by the session; tests make their own buckets.

    Note:
        In its own process: in-process (`ThreadedMotoServer`) it shares pytest's GIL with kopf, the
        emulated API server and the stand-ins, and on the 2-core CI machine every S3 request then
        waits behind them.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(Path(tempfile.gettempdir()) / f"moto-{port}.log", "wb")  # noqa: SIM115 - lives as long as the server
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(endpoint, server)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on loopback (SQLite backend, local artifacts), started on first use."""
    root = tmp_path_factory.mktemp("mlflow")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(root / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1", "--backend-store-uri",
                               f"sqlite:///{root / 'mlflow.db'}", "--default-artifact-root", str(root / "artifacts")],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                              # MLflow 3 also starts a job runner (7 huey consumer processes) tracking needs none of.
                              env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(uri, server, path="/health", timeout=120)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn worker
        server.wait(timeout=20)
        log.close()


def _wait_until_serving(endpoint: str, server: subprocess.Popen[bytes], timeout: float = 60,
                        path: str = "/moto-api/") -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"{endpoint}: the server exited with {server.returncode}; see its log")
        try:
            if requests.get(f"{endpoint}{path}", timeout=2).ok:
                return
        except (requests.ConnectionError, requests.Timeout):  # not listening yet, or still starting
            time.sleep(0.1)
    raise RuntimeError(f"the server at {endpoint} did not answer within {timeout:.0f} s")


@pytest.fixture
def bucket(moto_endpoint: str) -> str:
    import boto3

    name = f"tf-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=name)
    return name
