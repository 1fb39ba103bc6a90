"""A TCP forwarder on loopback that can refuse connections for a while (an S3 endpoint outage: a
restarting MinIO, a network blip, in front of a real moto server), or accept them and answer nothing
for a while (an API server that hangs: overloaded etcd, a stuck webhook)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator


class FlakyProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = _free_port()
        self._down_until = 0.0
        self._hung_until = 0.0
        self._stop = threading.Event()
        self._server: socket.socket | None = None
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._open()
        threading.Thread(target=self._accept_loop, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _open(self) -> None:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        server.settimeout(0.1)
        with self._lock:
            self._server = server

    def refuse_for(self, seconds: float) -> None:
        """Drop every open connection and close the listening socket: connecting gets
        ECONNREFUSED until it reopens."""
        self._down_until = time.monotonic() + seconds
        with self._lock:
            if self._server is not None:
                self._server.close()
                self._server = None
            for conn in self._live:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                    conn.close()
            self._live.clear()

    def hang_for(self, seconds: float) -> None:
        """Answer nothing for `seconds`: a connection that carries a byte in that time (or is opened
        in it) is never answered, and stays open, as with a server that accepted and hung. Only
        connections made after the hang get through, so a client without timeouts waits for good."""
        self._hung_until = time.monotonic() + seconds

    def _hung(self) -> bool:
        return time.monotonic() < self._hung_until

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            if self._server is None:
                if time.monotonic() < self._down_until:
                    time.sleep(0.05)
                    continue
                self._open()
            try:
                assert self._server is not None
                client, _ = self._server.accept()
            except (TimeoutError, OSError, AssertionError):
                continue
            threading.Thread(target=self._pipe_pair, args=(client,), daemon=True).start()

    def _pipe_pair(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            client.close()
            return
        with self._lock:
            self._live.update((client, upstream))
        dead = threading.Event()
        if self._hung():
            dead.set()

        def hold() -> bool:
            if self._hung():
                dead.set()
            return not dead.is_set()

        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(a, b, hold), daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        with self._lock, contextlib.suppress(OSError):
            if self._server is not None:
                self._server.close()


def _pipe(src: socket.socket, dst: socket.socket, passes: Callable[[], bool] = lambda: True) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(1 << 16):
            if passes():  # a hung connection swallows what it reads
                dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def flaky_proxy(target_port: int) -> Iterator[FlakyProxy]:
    proxy = FlakyProxy(target_port)
    try:
        yield proxy
    finally:
        proxy.close()
