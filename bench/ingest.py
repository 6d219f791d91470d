"""Ingestion throughput of the feedback API (issue 2, item 6), on SQLite and PostgreSQL.

Starts a real `ratingloop serve --backend none` process per database, then measures

  * single ratings (`POST /v1/feedback`): requests/s, p50 and p99 latency at 1, 16 and 64
    concurrent keep-alive clients, every rating with its own idempotency key;
  * batches (`POST /v1/feedback/batch`, 1,000 ratings each): ratings/s;
  * zero lost: after every phase the ratings acknowledged with 201 are compared, key by key, with the
    rows in the store (lost = acknowledged but missing, extra = stored but never acknowledged);
  * the baseline: the same machine's raw SQLAlchemy Core `executemany` (and the bare driver's
    `executemany`) into the same ratings table, measured in the same run, 1,000 rows per transaction.

The load generator is a lean asyncio HTTP/1.1 client on raw sockets with every request pre-built
before the clock starts, so its cost is a few percent of one core; the table reports its CPU per
request and the server's. Every loop is bounded in count and in time; only 127.0.0.1 is contacted;
the temporary folder, the PostgreSQL schema and the server process are removed at the end.

    .venv/bin/python bench/ingest.py                 # 3 repetitions, SQLite and PostgreSQL
    .venv/bin/python bench/ingest.py --quick         # one short repetition, a smoke test
    .venv/bin/python bench/ingest.py --db sqlite --json bench/ingest.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import orjson

HOST = "127.0.0.1"  # the only address this script ever contacts
ROOT = Path(__file__).resolve().parent.parent
ADMIN_KEY = "bench-admin-key"
PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------------------
# A lean HTTP/1.1 keep-alive client (one outstanding request per connection: a closed-loop client).


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is None:
            return
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        i = buf.find(b"content-length:", 0, end)
        if i < 0:
            i = buf.lower().find(b"content-length:", 0, end)
        n = int(buf[i + 15:buf.find(b"\r\n", i)]) if i >= 0 else 0
        total = end + 4 + n
        if len(buf) < total:
            return
        status = int(buf[9:12])
        body = bytes(buf[end + 4:total])
        del buf[:total]
        waiter, self.waiter = self.waiter, None
        if not waiter.done():
            waiter.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection closed: {exc}"))

    def request(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        self.waiter = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(data)
        return self.waiter


async def _connect(port: int) -> _Conn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(_Conn, HOST, port)
    sock = conn.transport.get_extra_info("socket") if conn.transport else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def http_request(method: str, path: str, body: Any = None, port: int = 0) -> bytes:
    payload = b"" if body is None else orjson.dumps(body)
    return (f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: Bearer {ADMIN_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode() + payload


@dataclass
class PhaseResult:
    sent: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    acked: list[int] = field(default_factory=list)  # indexes of requests answered 201
    latencies_ns: list[int] = field(default_factory=list)
    wall_s: float = 0.0
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    unanswered: int = 0
    sample_errors: list[str] = field(default_factory=list)
    created: int = 0  # batch phase: ratings the server reported as created


async def run_phase(port: int, requests: list[bytes], clients: int, duration_s: float,
                    batch: bool = False) -> PhaseResult:
    """Send `requests` (pre-built, each used once) over `clients` keep-alive connections until they
    run out or `duration_s` has passed; a phase never outlives duration_s + 30 s."""
    res = PhaseResult()
    conns = [await _connect(port) for _ in range(clients)]
    nxt = iter(range(len(requests)))
    perf = time.perf_counter_ns
    deadline = perf() + int(duration_s * 1e9)
    lat = res.latencies_ns
    statuses = res.statuses
    acked = res.acked
    in_flight = [0]

    async def client(conn: _Conn) -> None:
        for i in nxt:
            t0 = perf()
            if t0 > deadline:
                return
            in_flight[0] += 1
            status, body = await conn.request(requests[i])
            in_flight[0] -= 1
            lat.append(perf() - t0)
            statuses[status] = statuses.get(status, 0) + 1
            if status == 201:
                acked.append(i)
                if batch:
                    res.created += orjson.loads(body)["created"]
            elif len(res.sample_errors) < 5:
                res.sample_errors.append(f"{status} {body[:300]!r}")

    cpu0, w0 = time.process_time(), time.perf_counter()
    tasks = [asyncio.ensure_future(client(c)) for c in conns]
    done, pending = await asyncio.wait(tasks, timeout=duration_s + 30)
    res.wall_s = time.perf_counter() - w0
    res.client_cpu_s = time.process_time() - cpu0
    for t in pending:
        t.cancel()
    for t in done:
        if t.exception() is not None and len(res.sample_errors) < 5:
            res.sample_errors.append(f"client failed: {t.exception()!r}")
    res.unanswered = in_flight[0]
    res.sent = len(lat) + res.unanswered
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    return res


def pct(values: list[int], q: float) -> float:
    """The q-th percentile (nearest rank) of nanosecond values, in milliseconds."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * len(s))) - 1))] / 1e6


# --------------------------------------------------------------------------------------------------
# The server under test, its database, and process CPU accounting.


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def system_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, summed over cores."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(f) - f[3] - f[4]) / CLK_TCK, sum(f) / CLK_TCK


def postgres_cpu() -> float:
    """User+system CPU seconds of the live PostgreSQL server processes (the backends serve us)."""
    total = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                head, _, rest = Path(f"/proc/{entry}/stat").read_text().rpartition(")")
            except OSError:
                continue
            if head.endswith("(postgres"):
                fields = rest.split()
                total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


@dataclass
class CpuMeter:
    """CPU used during a phase: by the server, by PostgreSQL, by this client, by everything else."""

    server_pid: int
    start: tuple[float, ...] = ()

    def _now(self) -> tuple[float, ...]:
        busy, total = system_cpu()
        return busy, total, process_tree_cpu(self.server_pid), postgres_cpu(), time.process_time()

    def __enter__(self) -> CpuMeter:
        self.start = self._now()
        return self

    def __exit__(self, *_: Any) -> None:
        end = self._now()
        busy, total, server, pg, client = (b - a for a, b in zip(self.start, end, strict=True))
        self.server_s, self.postgres_s, self.client_s = server, pg, client
        self.machine_busy = busy / total if total else float("nan")  # of all cores
        self.other_busy = max(0.0, busy - server - pg - client) / total if total else float("nan")


def process_tree_cpu(pid: int) -> float:
    """User+system CPU seconds of `pid` and its live children (uvicorn's worker processes)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid or int(fields[1]) == pid:  # fields[1] is the parent pid
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


class Server:
    def __init__(self, url: str, workdir: Path, workers: int, port: int,
                 backend: tuple[str, ...] = ("--backend", "none")):
        self.url, self.workdir, self.workers, self.port, self.backend = url, workdir, workers, port, backend
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"server-{port}.log"

    def start(self) -> None:
        env = {**os.environ, "RATINGLOOP_ADMIN_KEY": ADMIN_KEY, "RATINGLOOP_SECRET": "bench-secret",
               "RATINGLOOP_DATA_DIR": str(self.workdir), "RATINGLOOP_MAX_BATCH_ITEMS": "10000"}
        env.pop("RATINGLOOP_DATABASE_URL", None)
        exe = Path(sys.executable).with_name("ratingloop")
        cmd = [str(exe) if exe.exists() else "ratingloop", "serve", *self.backend, "--host", HOST,
               "--port", str(self.port), "--workers", str(self.workers), "--no-access-log", "--db", self.url]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                         start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        if self.workers > 1:
                            time.sleep(2.0)  # let every worker process finish starting
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"server did not answer /healthz within 60 s:\n{self.log.read_text()[-3000:]}")

    def cpu(self) -> float:
        return process_tree_cpu(self.proc.pid) if self.proc else 0.0

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the session we started for it, nothing else
            self.proc.wait(timeout=10)


@contextmanager
def database(kind: str, workdir: Path, pg_url: str) -> Iterator[str]:
    """A fresh, empty store for one run: a SQLite file in `workdir`, or a new PostgreSQL schema."""
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'bench.db'}"
        return
    from sqlalchemy import create_engine, make_url, text

    base = make_url(pg_url)
    if base.host not in (HOST, "localhost") and base.host is not None:
        raise SystemExit(f"--pg-url must point at {HOST}, not {base.host}")
    schema = f"bench_ingest_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in pg_url else "?"
    try:
        yield f"{pg_url}{sep}options=-csearch_path%3D{schema}"
    finally:
        from ratingloop.store.db import dispose_engines

        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE pid <> pg_backend_pid() AND query LIKE :q"), {"q": f"%{schema}%"})
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def stored_keys(url: str, prefix: str) -> list[str]:
    from sqlalchemy import select

    from ratingloop.store import open_engine, tables

    R = tables.ratings
    with open_engine(url, migrate=False).connect() as conn:
        return list(conn.execute(select(R.c.idempotency_key).where(R.c.idempotency_key.like(prefix + "%")))
                    .scalars())


# --------------------------------------------------------------------------------------------------
# Workloads.


def rating_body(key: str, iid: str, k: int) -> dict[str, Any]:
    if k % 3 == 0:
        return {"interaction_id": iid, "kind": "thumbs", "value": 1 if k % 2 else -1, "idempotency_key": key}
    return {"interaction_id": iid, "rater_id": f"rater-{k % 997}", "kind": "stars", "value": k % 5 + 1,
            "idempotency_key": key}


def create_interactions(port: int, n: int, tag: str) -> list[str]:
    ids = []
    for i in range(n):
        body = orjson.dumps({"messages": [{"role": "user", "content": f"question {i} of {tag}"}],
                             "response": f"answer {i}", "user_id": f"user-{i}", "model": "base",
                             "tags": {"bench": tag}})
        req = urllib.request.Request(f"http://{HOST}:{port}/v1/interactions", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {ADMIN_KEY}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 201, r.status
            ids.append(json.loads(r.read())["id"])
    return ids


def single_requests(port: int, prefix: str, iids: list[str], n: int) -> tuple[list[bytes], list[str]]:
    keys = [f"{prefix}{k}" for k in range(n)]
    return [http_request("POST", "/v1/feedback", rating_body(key, iids[k % len(iids)], k), port)
            for k, key in enumerate(keys)], keys


def batch_requests(port: int, prefix: str, iids: list[str], n_batches: int,
                   size: int) -> tuple[list[bytes], list[list[str]]]:
    reqs, keys = [], []
    for b in range(n_batches):
        ks = [f"{prefix}{b}-{j}" for j in range(size)]
        items = [rating_body(key, iids[(b * size + j) % len(iids)], b * size + j) for j, key in enumerate(ks)]
        reqs.append(http_request("POST", "/v1/feedback/batch", {"items": items}, port))
        keys.append(ks)
    return reqs, keys


def verify(url: str, prefix: str, acked_keys: set[str]) -> dict[str, int]:
    stored = stored_keys(url, prefix)
    stored_set = set(stored)
    return {"acked": len(acked_keys), "stored": len(stored), "lost": len(acked_keys - stored_set),
            "extra": len(stored_set - acked_keys), "doubled": len(stored) - len(stored_set)}


def baseline(url: str, iids: list[str], prefix: str, n_rows: int, chunk: int) -> dict[str, float]:
    """Rows/s of a bare executemany into the ratings table: via SQLAlchemy Core, and via the driver."""
    from sqlalchemy import insert

    from ratingloop.store import open_engine, tables
    from ratingloop.store.writes import new_id  # the server's id scheme (time-ordered ULIDs)

    engine = open_engine(url, migrate=False)
    now = dt.datetime.now(dt.timezone.utc)
    cols = ["id", "interaction_id", "rater_id", "source", "kind", "aspect", "value", "scale_min", "scale_max",
            "signal", "text", "created_at", "idempotency_key", "body_hash"]

    def rows(tag: str) -> list[dict[str, Any]]:
        out = []
        for k in range(n_rows):
            key = f"{prefix}{tag}-{k}"
            out.append({"id": new_id(), "interaction_id": iids[k % len(iids)],
                        "rater_id": f"rater-{k % 997}", "source": "end_user", "kind": "stars",
                        "aspect": "overall", "value": float(k % 5 + 1), "scale_min": 1.0, "scale_max": 5.0,
                        "signal": None, "text": None, "created_at": now, "idempotency_key": key,
                        "body_hash": hashlib.sha256(key.encode()).hexdigest()})
        return out

    out: dict[str, float] = {}
    data = rows("sa")
    table = tables.ratings
    t0 = time.perf_counter()
    for start in range(0, n_rows, chunk):
        with engine.begin() as conn:
            conn.execute(insert(table), data[start:start + chunk])
    out["sqlalchemy_rows_s"] = n_rows / (time.perf_counter() - t0)

    data = rows("drv")
    if engine.dialect.name == "sqlite":
        stamp = now.replace(tzinfo=None).isoformat(sep=" ")  # how SQLAlchemy stores it on SQLite
        tuples = [tuple(stamp if c == "created_at" else r[c] for c in cols) for r in data]
        sql = f"INSERT INTO ratings ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    else:
        tuples = [tuple(r[c] for c in cols) for r in data]
        sql = f"INSERT INTO ratings ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})"
    raw = engine.raw_connection()
    try:
        t0 = time.perf_counter()
        for start in range(0, n_rows, chunk):
            cur = raw.cursor()
            if engine.dialect.name == "sqlite":
                cur.execute("BEGIN IMMEDIATE")
            cur.executemany(sql, tuples[start:start + chunk])
            raw.commit()
            cur.close()
        out["driver_rows_s"] = n_rows / (time.perf_counter() - t0)
    finally:
        raw.close()
    return out


# --------------------------------------------------------------------------------------------------
# One database: server up, phases, repetitions, verification.


def run_db(kind: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    report: dict[str, Any] = {"db": kind, "single": {}, "batch": {}, "baseline": {}, "verify": []}
    with database(kind, workdir, args.pg_url) as url:
        port = args.port or free_port()
        server = Server(url, workdir, args.workers, port)
        try:
            server.start()
            iids = create_interactions(port, args.interactions, kind)
            run_tag = uuid.uuid4().hex[:6]
            # warm-up: every code path once, connections and caches warm; not measured, but verified
            reqs, keys = single_requests(port, f"w{run_tag}-", iids, args.warmup)
            res = asyncio.run(run_phase(port, reqs, 16, 30))
            report["verify"].append({"phase": "warmup", **verify(url, f"w{run_tag}-", {keys[i] for i in res.acked})})
            for rep in range(args.reps):
                for c in args.concurrency:
                    prefix = f"s{run_tag}-{rep}-{c}-"
                    reqs, keys = single_requests(port, prefix, iids, args.max_requests)
                    with CpuMeter(server.proc.pid) as cpu:  # type: ignore[union-attr]
                        res = asyncio.run(run_phase(port, reqs, c, args.duration))
                    res.server_cpu_s = cpu.server_s
                    v = verify(url, prefix, {keys[i] for i in res.acked})
                    n = len(res.latencies_ns)
                    row = {"rep": rep, "clients": c, "requests": n, "req_s": n / res.wall_s,
                           "p50_ms": pct(res.latencies_ns, 50), "p99_ms": pct(res.latencies_ns, 99),
                           "statuses": res.statuses, "unanswered": res.unanswered,
                           "client_cpu_us_per_req": 1e6 * res.client_cpu_s / max(n, 1),
                           "server_cpu_us_per_req": 1e6 * res.server_cpu_s / max(n, 1),
                           "postgres_cpu_us_per_req": 1e6 * cpu.postgres_s / max(n, 1),
                           "machine_busy": cpu.machine_busy, "other_busy": cpu.other_busy,
                           "errors": res.sample_errors}
                    report["single"].setdefault(str(c), []).append(row)
                    report["verify"].append({"phase": f"single c={c} rep={rep}", **v})
                    _progress(kind, f"single c={c:<3} rep {rep}: {row['req_s']:8.0f} req/s  p50 {row['p50_ms']:6.2f} ms"
                                    f"  p99 {row['p99_ms']:6.2f} ms  lost {v['lost']} extra {v['extra']}"
                                    f"  srv {row['server_cpu_us_per_req']:.0f} us/req"
                                    f"  pg {row['postgres_cpu_us_per_req']:.0f} us/req"
                                    f"  cli {row['client_cpu_us_per_req']:.0f} us/req"
                                    f"  machine {100 * cpu.machine_busy:.0f}% busy, others {100 * cpu.other_busy:.0f}%"
                                    f"  {res.statuses}")
                prefix = f"b{run_tag}-{rep}-"
                reqs, bkeys = batch_requests(port, prefix, iids, args.batches, args.batch_size)
                with CpuMeter(server.proc.pid) as cpu:  # type: ignore[union-attr]
                    res = asyncio.run(run_phase(port, reqs, args.batch_clients, args.duration * 3, batch=True))
                res.server_cpu_s = cpu.server_s
                acked = {k for i in res.acked for k in bkeys[i]}
                v = verify(url, prefix, acked)
                ratings = res.created
                row = {"rep": rep, "batches": len(res.latencies_ns), "batch_size": args.batch_size,
                       "ratings": ratings, "ratings_s": ratings / res.wall_s,
                       "p50_ms": pct(res.latencies_ns, 50), "p99_ms": pct(res.latencies_ns, 99),
                       "statuses": res.statuses, "unanswered": res.unanswered,
                       "server_cpu_us_per_rating": 1e6 * res.server_cpu_s / max(ratings, 1),
                       "postgres_cpu_us_per_rating": 1e6 * cpu.postgres_s / max(ratings, 1),
                       "machine_busy": cpu.machine_busy, "other_busy": cpu.other_busy,
                       "errors": res.sample_errors}
                report["batch"].setdefault("runs", []).append(row)
                report["verify"].append({"phase": f"batch rep={rep}", **v})
                _progress(kind, f"batch x{args.batch_size} rep {rep}: {row['ratings_s']:8.0f} ratings/s"
                                f"  p50 {row['p50_ms']:.1f} ms  lost {v['lost']} extra {v['extra']}"
                                f"  srv {row['server_cpu_us_per_rating']:.0f} us/rating"
                                f"  others {100 * cpu.other_busy:.0f}%  {res.statuses}")
                b0 = system_cpu(), process_tree_cpu(server.proc.pid), postgres_cpu(), time.process_time()  # type: ignore[union-attr]
                base = baseline(url, iids, f"x{run_tag}-{rep}-", args.baseline_rows, args.batch_size)
                b1 = system_cpu(), process_tree_cpu(server.proc.pid), postgres_cpu(), time.process_time()  # type: ignore[union-attr]
                total = b1[0][1] - b0[0][1]
                ours = sum(y - x for x, y in zip(b0[1:], b1[1:], strict=True))
                base["other_busy"] = max(0.0, (b1[0][0] - b0[0][0]) - ours) / total
                report["baseline"].setdefault("runs", []).append({"rep": rep, **base})
                _progress(kind, f"baseline rep {rep}: SQLAlchemy executemany {base['sqlalchemy_rows_s']:8.0f} rows/s"
                                f"  driver executemany {base['driver_rows_s']:8.0f} rows/s")
        finally:
            server.stop()
            from ratingloop.store.db import dispose_engines

            dispose_engines()
    return summarise(report)


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    med = statistics.median
    report["median"] = {
        "single": {c: {k: med(r[k] for r in rows) for k in ("req_s", "p50_ms", "p99_ms", "server_cpu_us_per_req",
                                                            "postgres_cpu_us_per_req", "client_cpu_us_per_req",
                                                            "other_busy")}
                   for c, rows in report["single"].items()},
        "batch_ratings_s": med(r["ratings_s"] for r in report["batch"]["runs"]),
        "sqlalchemy_rows_s": med(r["sqlalchemy_rows_s"] for r in report["baseline"]["runs"]),
        "driver_rows_s": med(r["driver_rows_s"] for r in report["baseline"]["runs"]),
    }
    report["totals"] = {k: sum(v[k] for v in report["verify"]) for k in ("acked", "stored", "lost", "extra", "doubled")}
    return report


def _progress(kind: str, line: str) -> None:
    print(f"  [{kind}] {line}", file=sys.stderr, flush=True)


def print_table(reports: list[dict[str, Any]]) -> None:
    print()
    print("| db | phase | clients | req/s or ratings/s | p50 ms | p99 ms | server CPU | PostgreSQL CPU "
          "| client CPU | vs SQLAlchemy executemany | vs driver executemany |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in reports:
        m = r["median"]
        sa, drv = m["sqlalchemy_rows_s"], m["driver_rows_s"]
        for c, s in m["single"].items():
            print(f"| {r['db']} | single `POST /v1/feedback` | {c} | {s['req_s']:,.0f} | {s['p50_ms']:.2f} | "
                  f"{s['p99_ms']:.2f} | {s['server_cpu_us_per_req']:.0f} µs/req | "
                  f"{s['postgres_cpu_us_per_req']:.0f} µs/req | {s['client_cpu_us_per_req']:.0f} µs/req | "
                  f"{s['req_s'] / sa:.3f} | "
                  f"{s['req_s'] / drv:.3f} |")
        b = r["batch"]["runs"]
        print(f"| {r['db']} | batch `POST /v1/feedback/batch` ×{b[0]['batch_size']} | {r['args']['batch_clients']} | "
              f"{m['batch_ratings_s']:,.0f} | {statistics.median(x['p50_ms'] for x in b):.1f} | "
              f"{statistics.median(x['p99_ms'] for x in b):.1f} | "
              f"{statistics.median(x['server_cpu_us_per_rating'] for x in b):.1f} µs/rating | "
              f"{statistics.median(x['postgres_cpu_us_per_rating'] for x in b):.1f} µs/rating | | "
              f"{m['batch_ratings_s'] / sa:.2f} | {m['batch_ratings_s'] / drv:.2f} |")
        print(f"| {r['db']} | raw SQLAlchemy Core executemany (1,000 rows/txn) | – | {sa:,.0f} | | | | | | 1 | "
              f"{sa / drv:.2f} |")
        print(f"| {r['db']} | raw driver executemany (1,000 rows/txn) | – | {drv:,.0f} | | | | | | "
              f"{drv / sa:.2f} | 1 |")
    print()
    for r in reports:
        t = r["totals"]
        print(f"{r['db']}: {t['acked']:,} ratings acknowledged with 201, {t['stored']:,} stored: "
              f"lost {t['lost']}, extra {t['extra']}, doubled {t['doubled']}")
        others = [x["other_busy"] for rows in r["single"].values() for x in rows] + \
            [x["other_busy"] for x in r["batch"]["runs"]]
        print(f"{r['db']}: CPU taken by other processes during the phases: "
              f"median {100 * statistics.median(others):.0f}%, max {100 * max(others):.0f}% of the machine")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="sqlite,postgres", help="comma list of sqlite, postgres")
    ap.add_argument("--pg-url", default=os.environ.get("RATINGLOOP_TEST_POSTGRES_URL", PG_DEFAULT),
                    help="PostgreSQL on 127.0.0.1; a fresh schema is created in it and dropped after")
    ap.add_argument("--concurrency", default="1,16,64", help="comma list of concurrent clients")
    ap.add_argument("--reps", type=int, default=3, help="repetitions; the table shows medians")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per single-rating phase (batch: 3x)")
    ap.add_argument("--max-requests", type=int, default=15_000, help="request bound per single-rating phase")
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--batches", type=int, default=100, help="batch bound per batch phase")
    ap.add_argument("--batch-clients", type=int, default=2)
    ap.add_argument("--baseline-rows", type=int, default=50_000)
    ap.add_argument("--interactions", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=1000, help="unmeasured single ratings before the phases")
    ap.add_argument("--workers", type=int, default=1, help="`ratingloop serve --workers`")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--json", type=Path, help="also write the full results here")
    ap.add_argument("--quick", action="store_true", help="one short repetition (a smoke test, ~1 minute)")
    args = ap.parse_args()
    if args.quick:
        args.reps, args.duration, args.max_requests = 1, 2.0, 4000
        args.batches, args.baseline_rows, args.warmup, args.interactions = 20, 10_000, 300, 50
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    kinds = [k.strip() for k in args.db.split(",") if k.strip()]
    for k in kinds:
        if k not in ("sqlite", "postgres"):
            ap.error(f"--db: unknown {k!r}")
    try:
        import uvloop

        uvloop.install()
        loop_name = "uvloop"
    except ImportError:
        loop_name = "asyncio"
    sys.path.insert(0, str(ROOT / "src"))

    reports = []
    workdir = Path(tempfile.mkdtemp(prefix="ratingloop-bench-"))
    try:
        for kind in kinds:
            print(f"{kind}: server with {args.workers} worker(s), {args.reps} repetition(s); "
                  f"load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
            r = run_db(kind, args, workdir / kind if (workdir / kind).mkdir() is None else workdir)
            r["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
            reports.append(r)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(reports)
    if args.json:
        meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(), "nproc": os.cpu_count(),
                "cpu": _cpu_model(), "python": platform.python_version(), "client_loop": loop_name,
                "command": " ".join(sys.argv)}
        args.json.write_text(json.dumps({"meta": meta, "results": reports}, indent=1, default=str))
    bad = sum(r["totals"]["lost"] + r["totals"]["extra"] + r["totals"]["doubled"] for r in reports)
    sys.exit(1 if bad else 0)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
