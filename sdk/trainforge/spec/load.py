"""Parse manifests into TrainingJobs (with YAML paths and line numbers in errors) and write them back."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .errors import SpecIssue, SpecValidationError, issues_from
from .job import API_VERSION, KIND, TrainingJob
from .yamlio import dumps, line_of, loads_all, read_text


def parse_job(doc: Any, source: str = "") -> TrainingJob:
    """Validate one manifest (a dict); raise SpecValidationError listing every problem."""
    if not isinstance(doc, dict):
        raise SpecValidationError([SpecIssue((), "a TrainingJob manifest must be a mapping")], source)
    problems = _header_problems(doc)
    if problems:
        raise SpecValidationError(problems, source)
    try:
        return TrainingJob.model_validate(doc)
    except ValidationError as err:
        raise SpecValidationError(issues_from(err, TrainingJob), source) from None


def _header_problems(doc: dict[str, Any]) -> list[SpecIssue]:
    issues = []
    if doc.get("apiVersion") != API_VERSION:
        issues.append(SpecIssue(("apiVersion",), f"must be {API_VERSION} (got {doc.get('apiVersion')!r})"))
    if doc.get("kind") != KIND:
        issues.append(SpecIssue(("kind",), f"must be {KIND} (got {doc.get('kind')!r})"))
    return issues


def load_jobs(path: str | Path) -> list[TrainingJob]:
    """Every TrainingJob in a (multi-document) YAML file; errors carry file:line prefixes."""
    text = read_text(path)
    try:
        docs = loads_all(text)
    except Exception as exc:  # yaml.YAMLError and friends: report as one issue
        raise SpecValidationError([SpecIssue((), f"not valid YAML: {exc}")], str(path)) from None
    if not docs:
        raise SpecValidationError([SpecIssue((), "no YAML document found")], str(path))
    jobs: list[TrainingJob] = []
    issues: list[tuple[int, SpecIssue]] = []
    for index, doc in enumerate(docs):
        try:
            jobs.append(parse_job(anchor_working_dir(doc, Path(path).resolve().parent)))
        except SpecValidationError as err:
            for issue in err.issues:
                line = line_of(text, index, issue.loc) or 0
                issues.append((line, replace(issue, where=f"{path}:{line}" if line else str(path))))
    if issues:
        issues.sort(key=lambda item: item[0])  # read top to bottom, as the user's editor shows it
        raise SpecValidationError([issue for _, issue in issues], str(path))
    return jobs


def anchor_working_dir(doc: Any, base: Path) -> Any:
    """A relative spec.runtime.workingDir is relative to the manifest's directory (as kustomize
    paths are), whatever directory the command runs in."""
    runtime = ((doc.get("spec") or {}).get("runtime") if isinstance(doc, dict) else None) or {}
    working_dir = runtime.get("workingDir") if isinstance(runtime, dict) else None
    if isinstance(working_dir, str) and working_dir and "://" not in working_dir \
            and not Path(working_dir).expanduser().is_absolute():
        doc = {**doc, "spec": {**doc["spec"], "runtime": {**runtime, "workingDir": str(base / working_dir)}}}
    return doc


def dump_job(job: TrainingJob) -> str:
    """YAML of exactly what the user set: defaults stay implicit so the manifest stays small."""
    return dumps(job.model_dump(mode="json", by_alias=True, exclude_unset=True))
