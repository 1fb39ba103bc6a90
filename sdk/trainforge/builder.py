"""Build a TrainingJob in Python, with the spec's field names as keyword arguments:

    job = TrainingJob(name="gpt-small", task=Task("my_pkg.train:build", args={"layers": 12}),
                      workers=4, gpus_per_worker=1, strategy="fsdp", precision="bf16", epochs=3)
    job.to_yaml()

The result is the manifest model itself (`trainforge.spec.TrainingJob`), validated the same way:
a bad value raises SpecValidationError naming `spec.<field>`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .spec import TrainingJob as _Manifest
from .spec import parse_job
from .spec.job import API_VERSION, KIND

_SHORTHANDS = {"strategy": "type"}
"""Fields that take a bare string for their sub-model's main field: strategy="fsdp"."""


class TrainingJob(_Manifest):
    def __init__(self, name: str | None = None, /, *, namespace: str | None = None,
                 labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
                 **spec: Any) -> None:
        if "metadata" in spec or "spec" in spec:  # the manifest's own shape, e.g. from model_copy
            super().__init__(**spec)
            return
        name = spec.pop("name", name)
        metadata = {"name": name, "namespace": namespace, "labels": labels, "annotations": annotations}
        doc = {"apiVersion": API_VERSION, "kind": KIND,
               "metadata": {k: v for k, v in metadata.items() if v is not None},
               "spec": {key: _plain(key, value) for key, value in spec.items()}}
        job = parse_job(doc, "TrainingJob(...)")
        super().__init__(api_version=job.api_version, kind=job.kind, metadata=job.metadata, spec=job.spec)


def _plain(key: str, value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_unset=True)
    if key in _SHORTHANDS and isinstance(value, str):
        return {_SHORTHANDS[key]: value}
    if isinstance(value, dict):
        return {k: _plain("", v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain("", v) for v in value]
    return value
