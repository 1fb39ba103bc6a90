"""The shipped examples: valid, lossless through YAML -> model -> YAML, and accepted by the CRD."""

from __future__ import annotations

from pathlib import Path

import pytest
from jsonschema import Draft4Validator
from trainforge.spec import TrainingJob, dump_job, load_jobs
from trainforge.spec.crd import openapi_schema
from trainforge.spec.yamlio import loads_all, read_text

from tests.conftest import EXAMPLES


def test_every_expected_example_exists() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"digits-ddp.yaml", "gpt-fsdp.yaml", "digits-tune.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_round_trip_is_lossless(path: Path) -> None:
    original = loads_all(read_text(path))
    jobs = load_jobs(path)
    assert len(jobs) == len(original)
    for doc, job in zip(original, jobs, strict=True):
        text = dump_job(job)
        again = loads_all(text)[0]
        assert again == doc
        assert TrainingJob.model_validate(again) == job


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates_against_generated_crd(path: Path) -> None:
    validator = Draft4Validator(openapi_schema())
    for doc in loads_all(read_text(path)):
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]
