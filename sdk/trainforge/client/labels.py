"""Kubernetes label selectors, evaluated here for the local backend (the API server does it on a cluster).

Grammar as `kubectl -l`: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`, comma-joined."""

from __future__ import annotations

import re
from collections.abc import Mapping

from .errors import TrainforgeError

_REQUIREMENT = re.compile(
    r"\s*(?P<neg>!)?\s*(?P<key>[\w./-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[\w.-]*)|\s+(?P<set>in|notin)\s*\((?P<values>[^)]*)\))?\s*")


def _holds(requirement: str, labels: Mapping[str, str]) -> bool:
    m = _REQUIREMENT.fullmatch(requirement)
    if m is None or (m["neg"] and (m["op"] or m["set"])):
        raise TrainforgeError(f"cannot parse label selector requirement {requirement.strip()!r} "
                              "(use a=b, a!=b, a in (x,y), a notin (x), a or !a)")
    key, value = m["key"], labels.get(m["key"])
    if m["op"]:
        return (value == m["value"]) == (m["op"] != "!=")
    if m["set"]:
        options = {v.strip() for v in m["values"].split(",")}
        return (value in options) == (m["set"] == "in")
    return (key in labels) != bool(m["neg"])


def matches(selector: str | None, labels: Mapping[str, str]) -> bool:
    """Whether `labels` satisfy every requirement of `selector` (None or empty: everything does)."""
    parts = re.split(r",(?![^(]*\))", selector) if selector and selector.strip() else []
    return all(_holds(part, labels) for part in parts)
