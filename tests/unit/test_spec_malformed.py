"""At least 20 malformed manifests: each fails `trainforge validate` naming its field path."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from jsonschema import Draft4Validator
from trainforge.cli import cli
from trainforge.spec import SpecValidationError, parse_job
from trainforge.spec.crd import openapi_schema
from trainforge.spec.yamlio import dumps

from tests.unit.manifests import BASE, MALFORMED, Bad


def test_catalogue_is_large_enough() -> None:
    assert len(MALFORMED) >= 20
    assert len({b.id for b in MALFORMED}) == len(MALFORMED)


def test_base_manifest_is_valid() -> None:
    parse_job(BASE)


@pytest.mark.parametrize("bad", MALFORMED, ids=lambda b: b.id)
def test_validate_cli_names_the_field(bad: Bad, tmp_path: Path) -> None:
    path = tmp_path / f"{bad.id}.yaml"
    path.write_text(dumps(bad.doc))
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error")]
    assert any(f" {bad.path}: " in line for line in lines), result.output
    # Every error line points into the file, at a line number.
    assert all(f"{path}:" in line for line in lines), result.output


@pytest.mark.parametrize("bad", [b for b in MALFORMED if b.schema_catches], ids=lambda b: b.id)
def test_crd_schema_rejects_what_a_schema_can_catch(bad: Bad) -> None:
    assert list(Draft4Validator(openapi_schema()).iter_errors(bad.doc)), f"{bad.id} passed the CRD schema"


def test_all_problems_are_reported_at_once() -> None:
    doc = {**BASE, "spec": {**BASE["spec"], "workers": 0, "precision": "fp8"}}
    with pytest.raises(SpecValidationError) as info:
        parse_job(doc)
    assert {i.path for i in info.value.issues} == {"spec.workers", "spec.precision"}


def test_yaml_aliases_are_refused_before_anything_expands_them(tmp_path: Path) -> None:
    """A "billion laughs": nine levels of nine aliases are 9**9 strings once expanded (or dumped)."""
    levels = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text(dumps(BASE) + "\n".join(f"x-{line}" for line in levels) + "\n")
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 1 and "aliases are not accepted" in result.output, result.output
    assert f"line {len(dumps(BASE).splitlines()) + 2}," in result.output  # where the first alias is
