"""Asynchronous saves: the training state is copied into host memory at a step boundary and written,
hashed and committed later, so the training step only waits for the copy to be queued.

On a GPU the copy goes into pinned buffers kept from save to save (pinning 15 GiB takes 8-11 s on an
H100 host: it happens once, in the background, ahead of the first save) on a side stream, and the
training stream waits for it only before the next optimizer step changes the weights. On a CPU the
copy is a plain clone.

The buffers are ordinary host memory registered with CUDA one tensor at a time (`cudaHostRegister`),
not `pin_memory=True` tensors: PyTorch's pinned-memory allocator is shared with the data loader's
non-blocking copies, and pinning GiBs through it held up the training step for the whole 8 s."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


def _tensors(obj: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        return [(prefix, obj)]
    if isinstance(obj, dict):
        return [kv for k, v in obj.items() for kv in _tensors(v, f"{prefix}/{k}")]
    if isinstance(obj, list | tuple):
        return [kv for i, v in enumerate(obj) for kv in _tensors(v, f"{prefix}/{i}")]
    return []


def _replace(obj: Any, copies: dict[str, torch.Tensor], prefix: str = "") -> Any:
    if isinstance(obj, torch.Tensor):
        return copies[prefix]
    if isinstance(obj, dict):
        return {k: _replace(v, copies, f"{prefix}/{k}") for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_replace(v, copies, f"{prefix}/{i}") for i, v in enumerate(obj))
    return obj


class HostCopier:
    """Copies a state dict into host memory without holding up the training stream."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.buffers: dict[str, torch.Tensor] = {}
        self._registered: list[int] = []
        self._pinning: threading.Thread | None = None
        self.ready: torch.cuda.Event | None = None
        """Recorded on the side stream after the last copy; None once the training stream waits on it."""

    def prepare(self, state: dict[str, Any]) -> None:
        """Start pinning buffers shaped like `state` in the background (a GPU's state only)."""
        if not self.cuda or self._pinning is not None:
            return
        shapes = [(path, t.shape, t.dtype) for path, t in _tensors(state) if t.is_cuda]
        self._pinning = threading.Thread(target=self._pin, args=(shapes,), name="trainforge-pin", daemon=True)
        self._pinning.start()

    @property
    def unprepared(self) -> bool:
        """Buffers should still be prepared (a GPU whose first save is yet to come)."""
        return self.cuda and self._pinning is None

    @property
    def pinning(self) -> bool:
        return self._pinning is not None and self._pinning.is_alive()

    def _pin(self, shapes: list[tuple[str, torch.Size, torch.dtype]]) -> None:
        cudart = torch.cuda.cudart()
        for path, shape, dtype in shapes:
            buffer = torch.zeros(shape, dtype=dtype)  # zeros: the pages are faulted in before registering
            if buffer.numel() == 0:
                continue
            err = cudart.cudaHostRegister(buffer.data_ptr(), buffer.numel() * buffer.element_size(), 0)
            if int(err) != 0:  # copies into it would then be synchronous: say so, and go on
                warnings.warn(f"cudaHostRegister failed ({err}); asynchronous checkpoints will stall longer",
                              stacklevel=1)
                return
            self._registered.append(buffer.data_ptr())
            self.buffers[path] = buffer

    def close(self) -> None:
        if self._pinning is not None:
            self._pinning.join()
        cudart = torch.cuda.cudart() if self._registered else None
        for ptr in self._registered:
            cudart.cudaHostUnregister(ptr)  # type: ignore[union-attr]
        self._registered.clear()
        self.buffers.clear()

    def copy(self, state: dict[str, Any]) -> dict[str, Any]:
        """`state` with every tensor replaced by a host copy. On a GPU the copies are only queued:
        `wait_on_train_stream` must run before the weights change, `synchronize` before reading."""
        if not self.cuda:
            return _replace(state, {path: t.detach().clone() for path, t in _tensors(state)})
        if self._pinning is not None:
            self._pinning.join()  # buffers not ready yet: this save waits for them
        copies: dict[str, torch.Tensor] = {}
        assert self.stream is not None
        self.stream.wait_stream(torch.cuda.current_stream())  # the step that produced the state is done
        with torch.cuda.stream(self.stream):
            for path, src in _tensors(state):
                if not src.is_cuda:
                    copies[path] = src.detach().clone()
                    continue
                dst = self.buffers.get(path)
                if dst is None or dst.shape != src.shape or dst.dtype != src.dtype:  # not prepared: pin now
                    dst = self.buffers[path] = torch.empty(src.shape, dtype=src.dtype, pin_memory=True)
                src.record_stream(self.stream)  # a temporary must not be reused before the copy ran
                dst.copy_(src.detach(), non_blocking=True)
                copies[path] = dst
            self.ready = torch.cuda.Event()
            self.ready.record(self.stream)
        return _replace(state, copies)

    def wait_on_train_stream(self) -> None:
        """Before an optimizer step: the weights may change only once they have been copied."""
        if self.ready is not None:
            torch.cuda.current_stream().wait_event(self.ready)
            self.ready = None

    def copied(self) -> Callable[[], None]:
        """A function that blocks (a writer thread) until the copies just queued are done."""
        event = self.ready
        return event.synchronize if event is not None else (lambda: None)


@dataclass
class PendingSave:
    """A checkpoint whose state is copied and is being written in the background."""

    name: str
    step: int
    reason: str
    local: Path
    metrics: dict[str, Any]
    """What the commit reports (Ray Train, the status), as of the step the state was taken at."""
    manifest: Any
    """The checkpoint's manifest but for its files, also as of that step."""
    blocking_s: float
    files: Future[dict[str, Any]]
    """This rank's written files and their hashes."""


class Writer:
    """One background thread for checkpoint writes: saves reach storage in the order they were taken."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainforge-ckpt-write")

    def submit(self, fn: Callable[[], dict[str, Any]]) -> Future[dict[str, Any]]:
        return self._pool.submit(fn)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
