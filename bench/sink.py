"""A local SMTP sink (aiosmtpd) in its own process that counts messages, optionally slow."""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import time
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Handler:
    def __init__(self, delay: float, count: Any, first: Any, last: Any) -> None:
        self.delay = delay
        self.count, self.first, self.last = count, first, last

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        with self.count.get_lock():
            self.count.value += 1
            stamp = time.time()
            if self.first.value == 0:
                self.first.value = stamp
            self.last.value = stamp
        return "250 OK"


def _serve(port: int, delay: float, count: Any, first: Any, last: Any) -> None:
    from aiosmtpd.controller import Controller

    controller = Controller(_Handler(delay, count, first, last), hostname="127.0.0.1", port=port)
    controller.start()
    while True:
        time.sleep(3600)


class Sink:
    """`with Sink(delay=2.0) as sink:` ... sink.port, sink.count; every message takes delay seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.port = free_port()
        ctx = multiprocessing.get_context("spawn")
        self._count = ctx.Value("l", 0)
        self._first = ctx.Value("d", 0.0)
        self._last = ctx.Value("d", 0.0)
        self._process = ctx.Process(target=_serve, args=(self.port, delay, self._count, self._first, self._last),
                                    daemon=True)

    def start(self) -> Sink:
        self._process.start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the SMTP sink did not start")

    def reset(self) -> None:
        with self._count.get_lock():
            self._count.value = 0
            self._first.value = 0.0
            self._last.value = 0.0

    @property
    def count(self) -> int:
        return self._count.value

    @property
    def first_last(self) -> tuple[float, float]:
        with self._count.get_lock():
            return self._first.value, self._last.value

    @property
    def env(self) -> dict[str, str]:
        return {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(self.port), "MAIL_FROM": "tasks@example.com"}

    def stop(self) -> None:
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
