"""Pick one rank's lines out of a driver log.

Ray forwards every worker's output to the driver behind a `(RayTrainWorker pid=P, ip=I)` prefix,
and each trainforge worker announces its rank once when it starts (`trainforge worker rank=R …`).
The announcement maps the prefix to a rank; a worker group restarted inside an attempt announces
again with new pids, so the map is rebuilt as the log goes on."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PREFIX = re.compile(r"^\((?P<actor>[\w.:-]+) pid=(?P<pid>\d+)(?:, ip=(?P<ip>[^)\s]+))?\)\s?")
_ANNOUNCE = re.compile(r"trainforge worker rank=(?P<rank>\d+) ")


def worker_key(line: str) -> tuple[str, str | None] | None:
    """(pid, ip) of the Ray worker that printed `line`, or None for the driver's own lines."""
    match = _PREFIX.match(_ANSI.sub("", line))
    return (match["pid"], match["ip"]) if match else None


def rank_lines(lines: Iterable[str], rank: int) -> Iterator[str]:
    """The lines printed by the worker holding `rank`, without Ray's prefix."""
    ranks: dict[tuple[str, str | None], int] = {}
    for line in lines:
        plain = _ANSI.sub("", line)
        match = _PREFIX.match(plain)
        if match is None:
            continue
        key = (match["pid"], match["ip"])
        body = plain[match.end():]
        announced = _ANNOUNCE.search(body)
        if announced:
            ranks = {k: r for k, r in ranks.items() if r != int(announced["rank"])}
            ranks[key] = int(announced["rank"])
        if ranks.get(key) == rank:
            yield body
