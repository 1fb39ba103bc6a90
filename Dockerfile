# Two images from one source tree (BuildKit, the default builder since Docker 23):
#   docker build --target operator -t ghcr.io/trainforge/operator:0.1.0 .
#   docker build --target trainer  -t ghcr.io/trainforge/trainer:0.1.0 .
# Both install the same trainforge wheel, built once from this tree in the `wheel` stage.

# ---------------------------------------------------------------------------------------------------
# wheel: the trainforge distribution (pure Python) from pyproject.toml and the three package dirs.
FROM python:3.11.17-slim-bookworm AS wheel
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# pyproject.toml names README.md as the long description: the build needs it.
COPY pyproject.toml README.md ./
COPY sdk/ sdk/
COPY operator/ operator/
COPY trainer_image/ trainer_image/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---------------------------------------------------------------------------------------------------
# operator-env: a virtualenv holding trainforge[operator] and nothing else (no torch, no Ray).
FROM python:3.11.17-slim-bookworm AS operator-env
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
COPY --from=wheel /wheels/ /wheels/
# The wheel is installed by its path, never by name from an index; pip compiles the .pyc files here
# so that the read-only operator image never writes them. The imports are a smoke test: a module the
# operator imports but the [operator] extra does not install fails the build, not the Deployment.
RUN python -m venv /opt/venv \
    && set -- /wheels/trainforge-*.whl \
    && /opt/venv/bin/pip install --no-cache-dir "$1[operator]" \
    && /opt/venv/bin/python -c "import trainforge_operator.__main__, trainforge_operator.handlers, trainforge_operator.metrics"

# ---------------------------------------------------------------------------------------------------
# operator: `python -m trainforge_operator`, health on 8080 and Prometheus metrics on 8081.
# Runs with readOnlyRootFilesystem: bytecode was compiled at build time (PYTHONDONTWRITEBYTECODE
# stops any other write) and HOME is /tmp, the chart's emptyDir, where kopf and the kubernetes
# client put their temporary files.
FROM python:3.11.17-slim-bookworm AS operator
LABEL org.opencontainers.image.title="trainforge-operator" \
      org.opencontainers.image.description="TrainingJob operator: reconciles TrainingJobs into KubeRay RayJobs" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/tmp
# A passwd entry for the chart's uid 65532: kopf names its identity with getpass.getuser(), which
# raises KeyError for a uid that has none (and the chart sets no POD_ID that would skip it).
RUN groupadd --system --gid 65532 trainforge \
    && useradd --system --no-log-init --uid 65532 --gid 65532 --home-dir /tmp \
        --shell /usr/sbin/nologin trainforge
COPY --from=operator-env /opt/venv /opt/venv
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "trainforge_operator"]

# ---------------------------------------------------------------------------------------------------
# trainer: the image of every Ray head and worker pod (KubeRay runs `ray start` in them, and the
# RayJob entrypoint `python -m trainforge_trainer.run`).
#
# Base: the official PyTorch image of the pinned torch (pyproject: torch==2.13.0). Its torch is the
# CUDA 13.0 build, 2.13.0+cu130 -- the same build PyPI serves for torch==2.13.0 on Linux x86_64.
# CUDA 13 needs an NVIDIA driver >= 580 and no longer targets Volta or older; for older nodes,
# 2.13.0-cuda12.6-cudnn9-runtime is the same torch built against CUDA 12.6. Current tags of this base
# are Ubuntu 24.04 with torch in the system Python 3.12, marked EXTERNALLY-MANAGED (PEP 668); the steps
# below also hold where the uid 1000 user, `python` or that marker are absent.
FROM pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime AS trainer
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Keep in step with RAY_VERSION in operator/trainforge_operator/settings.py: the operator writes it as
# the RayCluster's rayVersion, and KubeRay expects the image's Ray to be that version.
ARG RAY_VERSION=2.60.0
# Build-time only (an ARG, not an ENV): apt must not prompt.
ARG DEBIAN_FRONTEND=noninteractive
LABEL org.opencontainers.image.title="trainforge-trainer" \
      org.opencontainers.image.description="Ray head/worker image for TrainingJobs: torch 2.13.0 (CUDA 13.0), Ray, trainforge" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# wget: KubeRay's default liveness/readiness probes are `bash -c "wget ... /api/local_raylet_healthz"`.
# gcc, libc6-dev, python3-dev: Triton JIT-compiles a small C launcher with the host compiler and
# Python.h, so a job with spec.compile (torch.compile) needs them.
# Versions are the base's Ubuntu release's current ones (the base itself is pinned by tag): exact
# apt pins would break the build as soon as the archive replaces them with a security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates wget gcc libc6-dev python3-dev \
    && rm -rf /var/lib/apt/lists/*

# Ray's images run as `ray`, uid 1000, gid 100 (users); KubeRay setups assume it. Ubuntu 24.04
# ships a user `ubuntu` with uid 1000, which is removed first. `python` must be on PATH: it is the
# RayJob entrypoint's command.
RUN if olduser="$(getent passwd 1000 | cut -d: -f1)"; then userdel --remove "$olduser"; fi \
    && useradd --no-log-init --uid 1000 --gid 100 --create-home --home-dir /home/ray --shell /bin/bash ray \
    && if ! command -v python >/dev/null; then ln -s "$(command -v python3)" /usr/local/bin/python; fi

# Ray and trainforge[trainer] go into the base's Python beside its torch (hence
# PIP_BREAK_SYSTEM_PACKAGES, a no-op where the Python is not externally managed; a venv would not see
# that torch, or would fetch a second one). The constraints file pins torch to the exact version
# already installed, local label included (2.13.0+cu130): pip keeps the base's CUDA build, and if it
# ever wanted another torch it could not find that version on PyPI and the build would fail instead
# of swapping it. Ray is pinned to RAY_VERSION the same way. The last lines check that torch is
# untouched and that `ray` and the trainer entrypoint are usable.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    set -- /wheels/trainforge-*.whl \
    && torch_before="$(python -c 'import torch; print(torch.__version__)')" \
    && printf 'torch==%s\nray==%s\n' "$torch_before" "$RAY_VERSION" > /tmp/constraints.txt \
    && PIP_BREAK_SYSTEM_PACKAGES=1 python -m pip install --no-cache-dir \
        --constraint /tmp/constraints.txt "$1[trainer]" \
    && rm /tmp/constraints.txt \
    && test "$(python -c 'import torch; print(torch.__version__)')" = "$torch_before" \
    && test "$(python -c 'import ray; print(ray.__version__)')" = "$RAY_VERSION" \
    && command -v ray \
    && python -c "import trainforge_trainer.run, trainforge_trainer.loop, trainforge_trainer.sweep.runner"

# No ENTRYPOINT: KubeRay sets the container command (`ray start ...`), and an inherited one is cleared.
# /tmp (Ray's session dir, torch.compile caches) stays world-writable as in the base.
ENTRYPOINT []
CMD ["/bin/bash"]
USER 1000:100
ENV HOME=/home/ray
WORKDIR /home/ray
