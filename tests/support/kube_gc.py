"""Deletion as the API server does it, for the test emulator (kube_emulator.py): finalizers hold an
object back, and owner-reference garbage collection removes dependents (background-style, synchronous,
Orphan honoured). A mixin: it works on the emulator's stored objects through its `_commit`."""

from __future__ import annotations

import copy
from typing import Any

from tests.support import kube_rules as rules
from tests.support.kube_rules import Obj


class OwnerGarbageCollection:
    _objects: dict[Any, Any]
    _orphaning: set[str]

    def get_object(self, key: Any) -> Obj | None:
        raise NotImplementedError

    def _commit(self, key: Any, obj: Obj | None, kind: str, old: Obj | None) -> Obj:
        raise NotImplementedError

    def delete_object(self, key: Any) -> Obj:
        """Delete as the API does: mark it while finalizers remain; once none, remove it and collect dependents."""
        current = self.get_object(key)
        assert current is not None
        meta = current["metadata"]
        if meta.get("deletionTimestamp"):
            return current
        if meta.get("finalizers"):
            marked = copy.deepcopy(current)
            marked["metadata"].update(deletionTimestamp=rules.now(), deletionGracePeriodSeconds=0)
            return self._commit(key, marked, "MODIFIED", current)
        return self._remove(key, current)

    def _remove(self, key: Any, current: Obj) -> Obj:
        removed = self._commit(key, None, "DELETED", current)
        self._collect(current["metadata"]["uid"], key[1])
        return removed

    def _collect(self, uid: str, namespace: str | None) -> None:
        """Owner-reference GC: a dependent goes once no owner is left; an Orphan deletion releases it instead."""
        alive = {o.raw["metadata"].get("uid") for o in self._objects.values() if not o.deleted}
        for key, obj in list(self._objects.items()):
            if obj.deleted or namespace not in (None, key[1]):  # a namespaced owner owns its namespace only
                continue
            current = copy.deepcopy(obj.raw)
            refs = current["metadata"].get("ownerReferences") or []
            if not any(ref.get("uid") == uid for ref in refs):
                continue
            remaining = [ref for ref in refs if ref.get("uid") != uid]
            if uid in self._orphaning or any(ref.get("uid") in alive for ref in remaining):
                released = copy.deepcopy(current)
                released["metadata"]["ownerReferences"] = remaining
                if not remaining:
                    del released["metadata"]["ownerReferences"]
                self._commit(key, released, "MODIFIED", current)
            else:
                self.delete_object(key)
