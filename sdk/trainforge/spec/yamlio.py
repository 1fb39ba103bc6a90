"""YAML in and out, typed the way Kubernetes types it, with line numbers for error messages."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .base import Loc


class KubeLoader(yaml.SafeLoader):
    """SafeLoader that reads floats like Kubernetes (YAML 1.2): `1e-3` is a number, not a string.

    Note:
        Aliases (`*name`) are refused: a few nested ones expand to gigabytes when the job is dumped
        (a "billion laughs"), and a TrainingJob has no need of them.
    """

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, f"YAML alias *{self.peek_event().anchor} found: aliases are not accepted in a "
                "TrainingJob; write the value out in full", mark)
        return super().compose_node(parent, index)


_FLOAT_12 = (
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)
KubeLoader.add_implicit_resolver(*_FLOAT_12)


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # what we write, KubeLoader reads back: a shared object is written out each time

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        # Kubernetes style: list items indented under their key.
        super().increase_indent(flow, False)


# Strings that the loader would read as floats ("1e-3") must be quoted on the way out.
_Dumper.add_implicit_resolver(*_FLOAT_12)


def loads_all(text: str) -> list[Any]:
    return [doc for doc in yaml.load_all(text, Loader=KubeLoader) if doc is not None]


def dumps(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)


def dumps_all(docs: list[Any]) -> str:
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)


def line_of(text: str, doc_index: int, loc: Loc) -> int | None:
    """1-based line of `loc` in document `doc_index` of `text`, or of its nearest existing parent."""
    nodes = [n for n in yaml.compose_all(text, Loader=KubeLoader) if n is not None]
    if doc_index >= len(nodes):
        return None
    node = nodes[doc_index]
    line = node.start_mark.line + 1
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    line = key.start_mark.line + 1
                    child = value
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


def read_text(path: str | Path) -> str:
    return Path(path).read_text(encoding="utf-8")
