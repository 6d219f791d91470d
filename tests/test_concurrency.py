"""Many clients at once against a real `ratingloop serve` process, with retries: nothing lost, nothing doubled."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import orjson
import pytest
from sqlalchemy import func, select

from ratingloop.store import open_engine
from ratingloop.store.tables import Rating

THREADS = 16
PER_THREAD = 250
RETRY_EVERY = 10  # one request in ten is sent a second time, byte for byte
N_INTERACTIONS = 32
ADMIN = {"Authorization": "Bearer test-admin-key", "Content-Type": "application/json"}


@pytest.mark.slow
def test_concurrent_ratings_with_retries_land_exactly_once(running_server: str, db_url: str) -> None:
    base = running_server
    interactions: list[tuple[str, str]] = []
    with httpx.Client(base_url=base, timeout=30) as client:
        for i in range(N_INTERACTIONS):
            r = client.post("/v1/interactions", headers=ADMIN, json={
                "messages": [{"role": "user", "content": f"question {i}"}], "response": f"answer {i}",
                "user_id": f"user-{i}"})
            assert r.status_code == 201, r.text
            interactions.append((r.json()["id"], r.json()["feedback_token"]))

    statuses: dict[str, list[int]] = {}  # key -> statuses in the order sent
    failures: list[str] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        mine: dict[str, list[int]] = {}
        try:
            with httpx.Client(base_url=base, timeout=60) as client:
                for n in range(PER_THREAD):
                    key = f"t{t}-n{n}"
                    iid, token = interactions[(t * PER_THREAD + n) % N_INTERACTIONS]
                    body = {"interaction_id": iid, "kind": "stars", "value": 1 + (t + n) % 5, "idempotency_key": key}
                    # half the threads write as the server (admin key, naming a rater), half as the end user's browser
                    if t % 2:
                        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
                    else:
                        headers = ADMIN
                        body["rater_id"] = f"rater-{t}"
                    payload = orjson.dumps(body)
                    sends = 2 if n % RETRY_EVERY == 0 else 1
                    for _ in range(sends):
                        r = client.post("/v1/feedback", content=payload, headers=headers)
                        mine.setdefault(key, []).append(r.status_code)
                        if r.status_code not in (200, 201):
                            with lock:
                                failures.append(f"{key}: {r.status_code} {r.text[:200]}")
        except Exception as e:  # noqa: BLE001 - reported below, with the thread
            with lock:
                failures.append(f"thread {t}: {e!r}")
        with lock:
            statuses.update(mine)

    start = time.monotonic()
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=300)
    elapsed = time.monotonic() - start
    assert not any(th.is_alive() for th in threads), "a client thread hung"
    assert failures == [], failures[:10]

    total = THREADS * PER_THREAD
    retried = THREADS * len(range(0, PER_THREAD, RETRY_EVERY))
    assert len(statuses) == total
    firsts = Counter(s[0] for s in statuses.values())
    retries = Counter(s[1] for s in statuses.values() if len(s) == 2)
    assert firsts == {201: total}, firsts
    assert retries == {200: retried}, retries

    # the store, read directly: every key exactly once, nothing else
    engine = open_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Rating.__table__)).scalar_one() == total
        keys = Counter(conn.execute(select(Rating.idempotency_key)).scalars())
        by_source = dict(conn.execute(select(Rating.source, func.count()).group_by(Rating.source)).all())
        token_raters = set(conn.execute(select(Rating.rater_id).where(Rating.idempotency_key.like("t1-%"))).scalars())
    assert keys == Counter({k: 1 for k in statuses})
    assert by_source == {"end_user": total}
    assert token_raters <= {f"user-{i}" for i in range(N_INTERACTIONS)}  # a token rates as the asker

    with httpx.Client(base_url=base, timeout=30) as client:
        stats = client.get("/v1/stats", headers=ADMIN).json()
    assert (stats["interactions"], stats["ratings"], stats["ratings_by_kind"]) == (
        N_INTERACTIONS, total, {"stars": total})
    sent = total + retried
    print(f"\n{sent} requests from {THREADS} threads in {elapsed:.1f}s ({sent / elapsed:.0f}/s)")
