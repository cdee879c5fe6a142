"""Order service processes (``python -m orders serve|relay``) and an HTTP client."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from streams.broker import free_port
from harness.worker import ROOT, http_get


class OrdersProcess:
    def __init__(self, command: str, log_path: Path, **env: str) -> None:
        self.command = command
        self.log_path = log_path
        self.port = free_port()
        #: ``relay``'s own HTTP port (/metrics, /health)
        self.relay_port = free_port()
        self.env = {k.upper(): str(v) for k, v in env.items()}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        """Where this process answers /health and /metrics (the relay's own port for ``relay``)."""
        return f"http://127.0.0.1:{self.relay_port if self.command == 'relay' else self.port}"

    def start(self) -> "OrdersProcess":
        env = {**os.environ, "ORDERS_PORT": str(self.port), "RELAY_PORT": str(self.relay_port),
               "PYTHONUNBUFFERED": "1", **self.env}
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start {self.starts} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "orders", self.command], cwd=ROOT, env=env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        return self

    def wait_ready(self, timeout: float = 30.0) -> "OrdersProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"{self.command} exited early:\n{self.tail()}")
            try:
                if http_get(f"{self.http_url}/health", timeout=1)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.command} not ready:\n{self.tail()}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class OrdersClient:
    """Creates and pays orders over HTTP with bounded concurrency; records every status."""

    def __init__(self, base_url: str, concurrency: int = 16) -> None:
        self.base_url = base_url
        self.sem = asyncio.Semaphore(concurrency)
        self.statuses: list[int] = []

    async def _post(self, session: aiohttp.ClientSession, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.sem:
            async with session.post(self.base_url + path, json=body) as resp:
                self.statuses.append(resp.status)
                return resp.status, await resp.json()

    async def create_and_pay(self, session: aiohttp.ClientSession, user: str = "u-7") -> str:
        status, body = await self._post(
            session, "/orders", {"user_id": user, "items": [{"sku": "s-1", "qty": 1}], "amount": "9.99"}
        )
        assert status == 201, body
        order_id = body["order_id"]
        status, body = await self._post(session, f"/orders/{order_id}/pay")
        assert status == 202, body
        return str(order_id)

    async def many(self, n: int) -> list[str]:
        async with aiohttp.ClientSession() as session:
            return list(await asyncio.gather(*(self.create_and_pay(session) for _ in range(n))))

    async def get_json(self, path: str) -> Any:
        return await self.get_json_at(self.base_url, path)

    @staticmethod
    async def get_json_at(base_url: str, path: str) -> Any:
        async with aiohttp.ClientSession() as session:
            async with session.get(base_url + path) as resp:
                return await resp.json()
