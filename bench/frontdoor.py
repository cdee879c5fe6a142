"""The front door: ``wrk`` (Debian's native HTTP load generator, its own process) on
``POST /orders`` — or on create + pay (``--mix create-pay``: each created order paid by a
later request) — against the order service with default settings: SQLite (FULL) or a
private PostgreSQL server with fsync on (``--database postgresql``), the relay in the same
process, a fresh broker.

Reports requests/s, latency p50/p90/p99 (wrk's ``--latency``), the answers that were not
201/202, the order service's CPU seconds, and a check that every 201 is a committed order
row and every 202 a paid one (the rows counted after the run ≥ the answers wrk saw).

    python -m bench --only frontdoor                 # rows of the bench report
    python -m bench.frontdoor --broker tansu         # alone; --source DIR measures another
                                                     # checkout (e.g. a `git archive` of an
                                                     # older commit) with this venv
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench import common
from bench.common import ROOT, fresh_broker, process_cpu_seconds
from streams.broker import free_port

BODY = {"user_id": "u-7", "items": [{"sku": "s-1", "qty": 2}], "amount": "25.00"}
WRK_SCRIPT = f"""
wrk.method = "POST"
wrk.body = '{json.dumps(BODY)}'
wrk.headers["Content-Type"] = "application/json"
"""
#: create + pay: each connection creates an order, and a 201's order is paid by the thread's
#: next request (a queue per wrk thread), so about half the requests create and half pay.
#: ``done`` prints what each kind got, for the check that every answer is a committed row.
WRK_CREATE_PAY = f"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local create_body = '{json.dumps(BODY)}'
local to_pay = {{}}
created, paid, refused = 0, 0, 0
local threads = {{}}

function setup(thread)
  table.insert(threads, thread)
end

function request()
  local id = table.remove(to_pay)
  if id then
    return wrk.format("POST", "/orders/" .. id .. "/pay", nil, "")
  end
  return wrk.format("POST", "/orders", nil, create_body)
end

function response(status, headers, body)
  if status == 201 then
    created = created + 1
    local id = body:match('"order_id"%s*:%s*"([^"]+)"')
    if id then table.insert(to_pay, id) end
  elseif status == 202 then
    paid = paid + 1
  else
    refused = refused + 1
  end
end

function done(summary, latency, requests)
  local c, p, r = 0, 0, 0
  for _, t in ipairs(threads) do
    c = c + t:get("created"); p = p + t:get("paid"); r = r + t:get("refused")
  end
  io.write(string.format("create-pay: created %d paid %d refused %d\\n", c, p, r))
end
"""
#: the issue's goal (wrk, 64 connections)
GOAL_REQUESTS_PER_S = 2000
GOAL_P99_MS = 50.0


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def parse_wrk(text: str) -> dict[str, Any]:
    """Requests/s, total requests, non-2xx/3xx, socket errors and the latency percentiles of
    ``wrk --latency`` output."""
    out: dict[str, Any] = {"percentiles_ms": {}}
    for pct, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.MULTILINE):
        out["percentiles_ms"][f"p{pct}"] = _ms(value, unit)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.MULTILINE)
    total = re.search(r"^\s+(\d+) requests in", text, re.MULTILINE)
    if not (rps and total and "p99" in out["percentiles_ms"]):
        raise RuntimeError(f"wrk printed no result:\n{text}")
    out["requests_per_s"] = float(rps.group(1))
    out["requests"] = int(total.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    out["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = sum(int(g) for g in sock.groups()) if sock else 0
    return out


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the order service exited early:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"the order service was not ready in {timeout:g}s")


def _wrk(url: str, script: Path, seconds: float, connections: int, threads: int) -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (Debian: apt-get install -y wrk; scripts/ensure-system-packages)")
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script),
           f"{url}/orders"]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=seconds + 60).stdout


def parse_create_pay(text: str) -> dict[str, int]:
    """The create + pay script's own counts (``done``): 201s, 202s and other answers."""
    m = re.search(r"^create-pay: created (\d+) paid (\d+) refused (\d+)$", text, re.MULTILINE)
    if m is None:
        raise RuntimeError(f"the create + pay script printed no counts:\n{text}")
    return {"created": int(m.group(1)), "paid": int(m.group(2)), "refused": int(m.group(3))}


async def _count_orders(database_url: str) -> tuple[int, int]:
    """Committed order rows, and how many of them are paid."""
    from orders.db import open_database

    db = open_database(database_url)
    await db.setup()
    try:
        async with db.transaction() as tx:
            row = await tx.fetchone("SELECT count(*), COALESCE(SUM(CASE WHEN status = 'PAID' THEN 1 ELSE 0 END), 0)"
                                    " FROM orders")
    finally:
        await db.close()
    assert row is not None
    return int(row[0]), int(row[1])


class _Postgres:
    """A private PostgreSQL server for one measurement (Debian's packages, as the tests start
    it: harness/postgres.py) — but with ``fsync`` on, as a production server runs, so
    its commits cost what SQLite's ``FULL`` ones do."""

    def __init__(self) -> None:
        from harness.postgres import PostgresServer

        self.server = PostgresServer()

    def __enter__(self) -> str:
        srv = self.server
        if srv.as_root:
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(srv.dir, pw.pw_uid, pw.pw_gid)
        srv._run("initdb", "-D", str(srv.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        srv._run("pg_ctl", "-D", str(srv.data), "-l", str(srv.dir / "server.log"), "-w", "-t", "60",
                 "-o", f"-p {srv.port} -k {srv.dir} -c listen_addresses=127.0.0.1 -c max_connections=50", "start")
        return srv.url

    def __exit__(self, *exc: object) -> None:
        self.server.stop()


async def run(work: Path, *, seconds: float = 15, connections: int = 64, threads: int = 2,
              warmup: float = 2, source: Path = ROOT, env: dict[str, str] | None = None,
              database: str = "sqlite", mix: str = "create") -> dict[str, Any]:
    """One measurement: a fresh broker and database, a short warm-up run, then the measured run.
    ``database``: ``sqlite`` (a file, ``SQLITE_SYNCHRONOUS`` as the service defaults) or
    ``postgresql`` (a private server, fsync on); ``mix``: ``create`` (``POST /orders``) or
    ``create-pay`` (:data:`WRK_CREATE_PAY`)."""
    if database == "postgresql":
        with _Postgres() as url:
            return await _run(work, url, seconds, connections, threads, warmup, source, env, database, mix)
    db_url = f"sqlite:///{work / f'frontdoor-{time.perf_counter_ns()}.db'}"
    return await _run(work, db_url, seconds, connections, threads, warmup, source, env, database, mix)


async def _run(work: Path, database_url: str, seconds: float, connections: int, threads: int, warmup: float,
               source: Path, env: dict[str, str] | None, database: str, mix: str) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    script = work / f"{mix}.lua"
    script.write_text(WRK_CREATE_PAY if mix == "create-pay" else WRK_SCRIPT)
    log_path = work / f"frontdoor-{time.perf_counter_ns()}.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    load_before = os.getloadavg()
    with fresh_broker() as broker:
        service_env = {**os.environ, "KAFKA_BROKER": broker.url, "DATABASE_URL": database_url,
                       "ORDERS_PORT": str(port), "RELAY_PORT": str(free_port()), "LOG_LEVEL": "WARNING",
                       **(env or {})}
        with open(log_path, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "orders", "serve"], cwd=source, env=service_env,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            await asyncio.to_thread(_wait_ready, url, proc, log_path)
            if warmup:
                await asyncio.to_thread(_wrk, url, script, warmup, connections, threads)
            cpu0 = process_cpu_seconds(proc.pid)
            text = await asyncio.to_thread(_wrk, url, script, seconds, connections, threads)
            cpu = process_cpu_seconds(proc.pid) - cpu0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
    got = parse_wrk(text)
    rows, paid_rows = await _count_orders(database_url)
    if mix == "create-pay":
        counts = parse_create_pay(text)
        created, paid = counts["created"], counts["paid"]
        got["answers"] = counts
    else:
        created, paid = got["requests"] - got["non_2xx"], 0
    # Every 201 (202) wrk saw (warm-up's aside) is a committed (paid) row: fewer rows would be
    # an answer whose write was lost.
    if rows < created:
        raise RuntimeError(f"{created} orders answered 201 but only {rows} rows in the database")
    if paid_rows < paid:
        raise RuntimeError(f"{paid} payments answered 202 but only {paid_rows} paid rows in the database")
    got.update({
        "database": database, "mix": mix, "paid_rows": paid_rows,
        "connections": connections, "threads": threads, "seconds": seconds, "broker": common.BROKER,
        "service_cpu_s_per_1k": 1000 * cpu / max(got["requests"], 1), "rows": rows,
        "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
        "source": str(source), "env": {k: v.split("@")[-1] for k, v in (env or {}).items()},
        "goal": {"requests_per_s": GOAL_REQUESTS_PER_S, "p99_ms": GOAL_P99_MS},
        "goal_met": got["requests_per_s"] >= GOAL_REQUESTS_PER_S and got["percentiles_ms"]["p99"] <= GOAL_P99_MS,
    })
    return got


def line(r: dict[str, Any]) -> str:
    p = r["percentiles_ms"]
    return (f"{r.get('database', 'sqlite')}, {r.get('mix', 'create')}: "
            f"{r['requests_per_s']:,.0f} requests/s, p50 {p['p50']:.1f} ms, p99 {p['p99']:.1f} ms, "
            f"{r['non_2xx']} non-2xx, {r['socket_errors']} socket errors, "
            f"{r['service_cpu_s_per_1k']:.2f} service CPU s per 1k requests "
            f"(load {r['load_before'][0]:.2f} → {r['load_after'][0]:.2f}; -c{r['connections']} -t{r['threads']})")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.frontdoor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", choices=["kafka", "tansu"], default="tansu")
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout whose `python -m orders` runs")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("-c", "--connections", type=int, default=64)
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite",
                        help="postgresql: a private server (Debian's packages), fsync on")
    parser.add_argument("--mix", choices=["create", "create-pay"], default="create",
                        help="create-pay: every created order is paid by a later request")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the order service, e.g. SQLITE_SYNCHRONOUS=NORMAL")
    args = parser.parse_args()
    common.BROKER = args.broker
    env = dict(e.split("=", 1) for e in args.env)
    work = Path(tempfile.mkdtemp(prefix="frontdoor-"))
    r = asyncio.run(run(work, seconds=args.seconds, connections=args.connections, threads=args.threads,
                        source=args.source.resolve(), env=env, database=args.database, mix=args.mix))
    print(line(r))
    print(json.dumps(r))


if __name__ == "__main__":
    main()
