"""The feedback API under hostile clients (issue 10): what one bad client costs everyone else.

Starts a real `ratingloop serve --backend none` process per database and measures, each beside a
baseline taken in the same run:

  * /healthz latency (p50, p99 of 200 probes, 20 a second) alone, and under an unauthenticated flood:
    four clients sending 4.7 MB batch bodies without end (two with no credentials, one with a wrong
    admin key, one with a forged feedback token);
  * a poisoning client (PostgreSQL): 16 honest clients send 100 ratings each, alone and beside one client
    sending ~50 ratings a second that the database itself refuses (a trigger, standing in for what a NUL
    byte was before validation caught it); the honest ratings that failed, and their throughput;
  * a flood from one feedback token: 2,000 single ratings as fast as one keep-alive connection sends
    them, then one batch of 10,000: how many were stored, how many answered 429.

    .venv/bin/python bench/hostile.py                 # 3 repetitions, SQLite and PostgreSQL
    .venv/bin/python bench/hostile.py --reps 1 --db sqlite
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from ingest import ADMIN_KEY, PG_DEFAULT, Server, database  # noqa: E402

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"}
JSON = {"Content-Type": "application/json"}
MSGS = [{"role": "user", "content": "When is my refund due?"}]
BIG = b'{"items": [' + b",".join([b'{"interaction_id": "i", "kind": "thumbs", "value": 1}'] * 90_000) + b"]}"
POISON = """
CREATE FUNCTION refuse_poison() RETURNS trigger AS $$
BEGIN
  IF NEW.text LIKE '%%poison%%' THEN RAISE EXCEPTION 'this database refuses poison'; END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER refuse_poison BEFORE INSERT ON ratings FOR EACH ROW EXECUTE FUNCTION refuse_poison();
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthz_latency(base: str, n: int = 200) -> tuple[float, float]:
    out = []
    with httpx.Client(base_url=base, timeout=10) as c:
        for _ in range(n):
            t0 = time.perf_counter()
            assert c.get("/healthz").status_code == 200
            out.append(time.perf_counter() - t0)
            time.sleep(0.05)
    return statistics.median(out) * 1000, statistics.quantiles(out, n=100)[98] * 1000


def flood(base: str, stop: threading.Event, headers: dict[str, str], answers: list[int]) -> None:
    with httpx.Client(base_url=base, timeout=30) as c:
        while not stop.is_set():
            try:
                answers.append(c.post("/v1/feedback/batch", content=BIG, headers=headers).status_code)
            except httpx.HTTPError:
                answers.append(0)


def healthz_under_flood(base: str) -> dict[str, Any]:
    alone = healthz_latency(base)
    stop, answers = threading.Event(), []
    heads = [JSON, JSON, {**JSON, "Authorization": "Bearer wrong"}, {**JSON, "Authorization": "Bearer fbt1.eA.eA"}]
    threads = [threading.Thread(target=flood, args=(base, stop, h, answers)) for h in heads]
    for th in threads:
        th.start()
    time.sleep(1.0)
    flooded = healthz_latency(base)
    stop.set()
    for th in threads:
        th.join()
    return {"alone_p50": alone[0], "alone_p99": alone[1], "flood_p50": flooded[0], "flood_p99": flooded[1],
            "flood_requests": len(answers), "flood_answers": sorted(set(answers))}


def honest_clients(base: str, iid: str, tag: str) -> tuple[list[int], float]:
    statuses: list[int] = []
    lock = threading.Lock()

    def client(t: int) -> None:
        mine = []
        with httpx.Client(base_url=base, timeout=60) as c:
            for n in range(100):
                r = c.post("/v1/feedback", headers=ADMIN, json={
                    "interaction_id": iid, "kind": "stars", "value": 1 + n % 5, "rater_id": f"r{t}",
                    "idempotency_key": f"{tag}-{t}-{n}"})
                mine.append(r.status_code)
        with lock:
            statuses.extend(mine)

    threads = [threading.Thread(target=client, args=(t,)) for t in range(16)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return statuses, len(statuses) / (time.perf_counter() - t0)


def poisoning(base: str, url: str) -> dict[str, Any]:
    from ratingloop.store import open_engine

    with open_engine(url).begin() as conn:
        conn.exec_driver_sql(POISON)
    with httpx.Client(base_url=base, timeout=30) as c:
        iid = c.post("/v1/interactions", json={"messages": MSGS, "response": "x"}, headers=ADMIN).json()["id"]
    alone, alone_rate = honest_clients(base, iid, "alone")
    stop, bad = threading.Event(), []

    def poisoner() -> None:
        with httpx.Client(base_url=base, timeout=30) as c:
            n = 0
            while not stop.is_set():
                n += 1
                t0 = time.perf_counter()
                bad.append(c.post("/v1/feedback", headers=ADMIN, json={
                    "interaction_id": iid, "kind": "comment", "text": f"poison {n}"}).status_code)
                time.sleep(max(0.0, 0.02 - (time.perf_counter() - t0)))  # ~50 a second

    th = threading.Thread(target=poisoner)
    th.start()
    beside, beside_rate = honest_clients(base, iid, "beside")
    stop.set()
    th.join()
    failed = lambda s: sum(x not in (200, 201) for x in s) / len(s)  # noqa: E731
    return {"honest_failed_alone": failed(alone), "honest_failed_beside": failed(beside),
            "honest_per_s_alone": alone_rate, "honest_per_s_beside": beside_rate,
            "poison_sent": len(bad), "poison_answers": sorted(set(bad))}


def token_flood(base: str) -> dict[str, Any]:
    with httpx.Client(base_url=base, timeout=30) as c:
        r = c.post("/v1/interactions", json={"messages": MSGS, "response": "x", "user_id": "flooder"}, headers=ADMIN)
        iid, token = r.json()["id"], r.json()["feedback_token"]
        auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        t0 = time.perf_counter()
        singles = [c.post("/v1/feedback", headers=auth, json={"interaction_id": iid, "kind": "thumbs",
                                                              "value": 1}).status_code for _ in range(2000)]
        elapsed = time.perf_counter() - t0
        batch = c.post("/v1/feedback/batch", headers=auth, json={"items": [
            {"interaction_id": iid, "kind": "thumbs", "value": 1}] * 10_000}).status_code
        stored = c.get("/v1/stats", headers=ADMIN).json()["ratings"]
    return {"singles_sent": 2000, "singles_s": elapsed, "singles_429": singles.count(429),
            "batch_status": batch, "stored": stored}


def run(kind: str, pg_url: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp, database(kind, Path(tmp), pg_url) as url:
        server = Server(url, Path(tmp), 1, free_port())
        server.start()
        try:
            base = f"http://127.0.0.1:{server.port}"
            out = {"healthz": healthz_under_flood(base), "token": token_flood(base)}
            if kind == "postgresql":
                out["poison"] = poisoning(base, url)
            return out
        finally:
            server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--pg-url", default=os.environ.get("RATINGLOOP_TEST_POSTGRES_URL", PG_DEFAULT))
    args = ap.parse_args()
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    print(f"{date.today()} · {platform.processor() or platform.machine()}, {os.cpu_count()} cores · "
          f"load {os.getloadavg()[0]:.1f} at start · `{' '.join(sys.argv)}` · medians of {args.reps}\n")
    print("| database | /healthz p50 / p99 alone (ms) | under the flood (ms) | flood requests (answers) | "
          "token: 429s of 2,000 singles / batch of 10,000 / stored | honest failed alone / beside a poisoner | "
          "honest ratings/s alone / beside |")
    print("|---|---|---|---|---|---|---|")
    for kind in kinds:
        print(table_row(kind, [run(kind, args.pg_url) for _ in range(args.reps)]), flush=True)


def table_row(kind: str, runs: list[dict[str, Any]]) -> str:
    def med(section: str, key: str) -> float:
        return statistics.median(r[section][key] for r in runs)

    tok, flood_answers = runs[-1]["token"], runs[-1]["healthz"]["flood_answers"]
    poison = rates = "–"
    if kind == "postgresql":
        poison = f"{med('poison', 'honest_failed_alone'):.1%} / {med('poison', 'honest_failed_beside'):.1%}"
        rates = f"{med('poison', 'honest_per_s_alone'):.0f} / {med('poison', 'honest_per_s_beside'):.0f}"
    return (f"| {kind} | {med('healthz', 'alone_p50'):.1f} / {med('healthz', 'alone_p99'):.1f} "
            f"| {med('healthz', 'flood_p50'):.1f} / {med('healthz', 'flood_p99'):.1f} "
            f"| {med('healthz', 'flood_requests'):.0f} ({flood_answers}) "
            f"| {tok['singles_429']} / {tok['batch_status']} / {tok['stored']} | {poison} | {rates} |")

if __name__ == "__main__":
    main()
