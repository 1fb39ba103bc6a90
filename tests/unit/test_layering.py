"""Imports flow one way: the SDK (`trainforge`) imports neither the trainer nor the operator, and it
imports and works without torch or Ray (its core dependencies are pydantic, PyYAML, rich, click,
kubernetes and filelock). The CLI's `run` is the one lazy way into the trainer."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "sdk" / "trainforge"
NOT_IN_THE_SDK = ("torch", "ray", "numpy", "pyarrow", "boto3", "botocore", "kopf", "optuna", "trainforge_trainer",
                  "trainforge_operator")
"""Top-level modules only the extras install: none is imported by `import trainforge` or its client."""
LAYERS = ("torch", "ray", "kopf", "trainforge_trainer", "trainforge_operator")
"""What the SDK's code never imports at all (storage helpers may use pyarrow where they are called)."""
LAZY_DOORS = {("cli/trainer_door.py", "trainforge_trainer.local.runner"),
              ("cli/trainer_door.py", "trainforge_trainer.model_files")}
"""(SDK file, module) pairs allowed to import an extra, inside a function, with a clear error."""

# Imports the SDK's public modules and runs a few things with every extra made unimportable.
PROBE = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is not installed in an SDK-only environment")
        return None
sys.meta_path.insert(0, Block())
import trainforge, trainforge.client, trainforge.spec, trainforge.lifecycle, trainforge.local
import trainforge.local.passes, trainforge.spec.contract, trainforge.cli
from trainforge.client.local_backend import LocalBackend
from trainforge.cli import main
from trainforge.spec import load_jobs
assert load_jobs({example!r})
print("ok", sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
"""


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at module level) for every import in the file."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, id(node) in top))
    return found


def test_the_sdk_imports_no_extra_except_through_its_one_lazy_door() -> None:
    offending = []
    for path in sorted(SDK.rglob("*.py")):
        rel = path.relative_to(SDK).as_posix()
        for module, top_level in _imports(path):
            if module.split(".")[0] not in LAYERS:
                continue
            if (rel, module) in LAZY_DOORS and not top_level:
                continue
            offending.append(f"{rel}: {module}")
    assert not offending, offending


def test_the_trainer_and_operator_import_the_sdk_never_each_other() -> None:
    for package, other in (("trainer_image/trainforge_trainer", "trainforge_operator"),
                           ("operator/trainforge_operator", "trainforge_trainer")):
        bad = [f"{p.relative_to(ROOT)}: {m}" for p in (ROOT / package).rglob("*.py")
               for m, _ in _imports(p) if m.split(".")[0] == other]
        assert not bad, bad


def test_the_sdk_works_with_every_extra_unimportable(tmp_path: Path) -> None:
    probe = PROBE.format(blocked=NOT_IN_THE_SDK, example=str(ROOT / "examples" / "digits-ddp.yaml"))
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("ok []"), done.stderr[-3000:]


def test_the_cli_validates_and_says_how_to_get_the_trainer_without_it(tmp_path: Path) -> None:
    """Without the trainer, `trainforge run` fails with the install hint, not a traceback."""
    cli = PROBE.split("import trainforge,")[0] + (
        "import sys\nfrom trainforge.cli import main\n"
        f"sys.argv = ['trainforge', 'run', {str(ROOT / 'examples' / 'digits-ddp.yaml')!r}]\nmain()\n")
    probe = cli.format(blocked=NOT_IN_THE_SDK, example="")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 1 and "trainforge[trainer]" in done.stderr, (done.stdout, done.stderr[-3000:])
