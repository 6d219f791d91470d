"""Deleting an end user (ratingloop.privacy.forget_user, `DELETE /v1/users/{id}`), on SQLite and PostgreSQL.

The user's texts and id carry a marker. After the deletion the marker is in no file under the test's
folder (the SQLite database, its WAL, datasets, caches: every byte) and in no row of any table; the
tombstone is an HMAC keyed by the server's secret, and still keeps their old data out; datasets built
with them are purged and never trained on again; versions trained on those are tainted; the embedding
cache forgot their texts; ids of any shape can be deleted over HTTP; the access log never shows one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, MetaData, func, insert, select

from build_store import CASES, line, prompt
from ratingloop.config import Settings
from ratingloop.dataset import BuildConfig, build_dataset
from ratingloop.dataset.write import record_snapshot, write_manifest
from ratingloop.errors import RatingloopError
from ratingloop.models.embed import DIM, default_cache, embed_pairs
from ratingloop.models.registry import finish_run, record_evaluation, start_run
from ratingloop.privacy import forget_user
from ratingloop.rounds import start_round, step_finished, step_started
from ratingloop.serve.app import create_app
from ratingloop.serve.logs import RedactUserIds
from ratingloop.signals import record_signals
from ratingloop.store import Limits, WriteUnit, open_engine, write_units
from ratingloop.store import tables as t
from ratingloop.store.jsonl import export_lines, import_lines
from ratingloop.store.writes import legacy_user_hash, user_hash
from ratingloop.train import train
from ratingloop.train.data import load_train_data
from servers import running_server_at

ADMIN = {"Authorization": "Bearer test-admin-key"}
MARKER = "zqmarker7f3a"  # letters and digits: it reads the same in JSON, URLs, UTF-8 and percent-encoding
UID = f"people/{MARKER} 100%-ü"  # a slash, a percent sign, a space and non-ASCII, all in one id


def _lines() -> list[dict[str, Any]]:
    """The build tests' store, plus two good and bad answers the user asked, and a correction and a comment
    they gave on someone else's answer."""
    theirs = [line("mine-1", f"Where is my parcel {MARKER}?", f"It left the depot today, {MARKER}.", 5, user=UID),
              line("mine-2", f"Can I pay by invoice, {MARKER}?", "No.", 1, user=UID)]
    mine = [{"rater_id": UID, "kind": "correction", "text": f"Use 'Forgot password', {MARKER}."},
            {"rater_id": UID, "kind": "comment", "text": f"{MARKER} says meh"}]
    others = [dict(x, ratings=x["ratings"] + mine) if x["id"] == "bad-1" else x for x in CASES]
    return theirs + others


class HashEncoder:
    """A stand-in sentence encoder: a unit vector from each text's hash (what the cache stores is the same)."""

    def encode(self, texts: list[str], **_: Any) -> np.ndarray:
        rows = [np.random.default_rng(int.from_bytes(hashlib.sha256(x.encode()).digest()[:8], "big")).normal(size=DIM)
                for x in texts]
        return np.asarray([r / np.linalg.norm(r) for r in rows], np.float32)


def files_with(root: Path, needle: str) -> list[Path]:
    return [p for p in sorted(root.rglob("*")) if p.is_file() and needle.encode() in p.read_bytes()]


def rows_with(engine: Engine, needle: str) -> list[str]:
    """Every table's rows (reflected: whatever the schema holds) whose text holds `needle`."""
    meta = MetaData()
    meta.reflect(engine)
    found = []
    with engine.connect() as conn:
        for table in meta.sorted_tables:
            found += [f"{table.name}: {row}" for row in conn.execute(select(table)) if needle in str(tuple(row))]
    return found


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def _record_derived(engine: Engine, data: Path) -> dict[str, Any]:
    """What later stages make of the store: a signals run, two datasets, cached embeddings, a version trained
    on one dataset (and a child of it), an evaluation and a loop step that show the user's prompt."""
    record_signals(engine)
    sft = build_dataset(engine, "sft", data / "runs" / "sft-1" / "data", BuildConfig())  # as train_from_store does
    dpo = build_dataset(engine, "dpo", data / "datasets" / "dpo", BuildConfig())
    cache = default_cache(data)
    embed_pairs(HashEncoder(), [x["messages"] for x in _lines()], [x["response"] for x in _lines()], cache=cache)
    cache.db.close()
    run = start_run(engine, method="sft", config={}, base_model="tiny", dataset_snapshot_id=sft.snapshot_id)
    version = finish_run(engine, run, adapter_path=data / "runs" / "sft-1", metrics={})
    child_run = start_run(engine, method="sft", config={}, base_model="tiny", parent_version_id=version)
    child = finish_run(engine, child_run, adapter_path=data / "runs" / "sft-2", metrics={})
    examples = [{"messages": x["messages"], "candidate": f"answer {k}", "against": "base", "outcome": 1.0}
                for k, x in enumerate(_lines()[1:3])]  # mine-2 (theirs) and good-1 (someone else's)
    report = {"verdict": "reject", "win_rate": 0.5, "examples": examples}
    evaluation = record_evaluation(engine, version, None, "reject", report)
    round_id = start_round(engine, trigger="once", spec={})
    step_started(engine, round_id, "eval", 3)
    step_finished(engine, round_id, "eval", "succeeded", report)
    return {"sft": sft, "dpo": dpo, "version": version, "child": child, "evaluation": evaluation, "round": round_id}


def test_a_deleted_user_leaves_no_trace(client: TestClient, settings: Settings, db_url: str, tmp_path: Path) -> None:
    data, key, engine = settings.resolved_data_dir, settings.feedback_secret(), open_engine(db_url)
    for x in _lines():
        assert client.post("/v1/interactions", json=x, headers=ADMIN).status_code == 201
    backup = list(export_lines(engine))  # what an old export holds; kept in memory only
    made = _record_derived(engine, data)
    with engine.connect() as conn:
        R, I = t.ratings.c, t.interactions.c
        touched = conn.execute(select(func.count()).where((R.rater_id == UID) | R.interaction_id.in_(
            select(I.id).where(I.user_id == UID)))).scalar_one()
    assert files_with(tmp_path, MARKER) and rows_with(engine, MARKER)  # there was something to delete

    r = client.delete(f"/v1/users/{quote(UID, safe='')}", headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json() == {"user_id": UID, "interactions_deleted": 2, "ratings_deleted": touched}

    # the tombstone: keyed by the server's secret, never the id's plain SHA-256
    with engine.connect() as conn:
        [tomb] = conn.execute(select(t.deleted_users.c.user_hash)).scalars()
    assert tomb == user_hash(UID, key) != hashlib.sha256(UID.encode()).hexdigest()
    # ... and it keeps their old data out: the old export, and the API
    report = import_lines(engine, backup, Limits(), user_key=key)
    assert (report.skipped_deleted, report.interactions_new, report.ratings_new, report.bad) == (3, 0, 0, [])
    again = client.post("/v1/interactions", json=_lines()[0], headers=ADMIN)
    assert again.status_code == 410 and again.json()["error"]["param"] == "user_id"

    # datasets built with them are purged and never trained on; versions trained on them are tainted
    snapshots = t.DatasetSnapshot.__table__.c
    with engine.connect() as conn:
        purged = dict(conn.execute(select(snapshots.id, snapshots.purged_at)).all())
        tainted = dict(conn.execute(select(t.model_versions.c.id, t.model_versions.c.tainted_at)).all())
    assert purged[made["sft"].snapshot_id] and purged[made["dpo"].snapshot_id]
    assert tainted[made["version"]] and tainted[made["child"]]  # the child learnt from its parent
    for built in (made["sft"], made["dpo"]):
        assert not (built.out_dir / "train").exists() and not (built.out_dir / "train.jsonl").exists()
        with pytest.raises(RatingloopError, match="was purged"):
            load_train_data(built.out_dir, "sft" if built.format == "sft" else "dpo")
    # a later build makes a new snapshot without them, and a copy of a purged one is refused by its id
    later = build_dataset(engine, "sft", made["sft"].out_dir, BuildConfig())
    assert later.snapshot_id not in purged and later.manifest["rating_ids"]
    assert len(load_train_data(later.out_dir, "sft").train) == later.n_train
    copy = build_dataset(engine, "sft", tmp_path / "copy", BuildConfig()).out_dir
    write_manifest(copy, {**json.loads((copy / "manifest.json").read_text()), "snapshot_id": made["sft"].snapshot_id})
    with pytest.raises(RatingloopError, match="was purged"):
        train(engine, "sft", out_dir=tmp_path / "out", data_dir=copy)

    # the evaluation report and the loop's eval step lose the example with their prompt, and keep the other
    with engine.connect() as conn:
        report = conn.execute(select(t.evaluations.c.report).where(t.evaluations.c.id == made["evaluation"])).scalar()
        step = conn.execute(select(t.loop_steps.c.detail).where(t.loop_steps.c.round_id == made["round"])).scalar()
    for kept in (report, step):
        assert kept["examples_removed"] == 1 and [x["candidate"] for x in kept["examples"]] == ["answer 1"]
    # the embedding cache forgot their texts and kept the others'
    cache = default_cache(data)
    assert not cache.get([f"It left the depot today, {MARKER}.", f"Where is my parcel {MARKER}?"])
    assert cache.get(["Yes, in 5-8 business days."])
    cache.db.close()

    assert rows_with(engine, MARKER) == []
    assert files_with(tmp_path, MARKER) == []  # SQLite's database and WAL included, every byte of them


# (an id holding an escape such as "%2F" too, but Starlette's TestClient decodes the path twice: the real
# server below takes those)
@pytest.mark.parametrize("uid", ["a/b", "/leading", "trailing/", "100%", "with space", "ünï/cødé ☃"])
def test_any_user_id_can_be_deleted_over_http(client: TestClient, settings: Settings, uid: str) -> None:
    body = {"messages": prompt("hello"), "response": "hi", "user_id": uid}
    assert client.post("/v1/interactions", json=body, headers=ADMIN).status_code == 201
    r = client.delete(f"/v1/users/{quote(uid, safe='')}", headers=ADMIN)  # httpx sends the encoded path as is
    assert r.status_code == 200, r.text
    assert r.json() == {"user_id": uid, "interactions_deleted": 1, "ratings_deleted": 0}
    with open_engine(settings.url).connect() as conn:
        assert list(conn.execute(select(t.deleted_users.c.user_hash)).scalars()) == [
            user_hash(uid, settings.feedback_secret())]  # the id itself, not its encoding


def test_an_empty_user_id_is_refused(client: TestClient) -> None:
    r = client.delete("/v1/users/", headers=ADMIN)
    assert r.status_code == 422 and r.json()["error"]["param"] == "user_id"


def test_a_legacy_tombstone_still_keeps_old_data_out_and_is_rekeyed(db_url: str, tmp_path: Path) -> None:
    """Tombstones written before the HMAC (plain SHA-256) still refuse the old data; deleting the user again
    folds it into one keyed tombstone with the totals."""
    from datetime import datetime, timezone

    from ratingloop.store.records import InteractionIn, clean_interaction

    engine, key = open_engine(db_url), b"server-secret"
    with engine.begin() as conn:
        conn.execute(insert(t.deleted_users).values(user_hash=legacy_user_hash("old"), deleted_at=datetime.now(
            timezone.utc), interactions_deleted=3, ratings_deleted=4))
    old, _ = clean_interaction(InteractionIn.model_validate(line("c-old", "q", "a", user="old")), Limits(),
                               lambda h: h)
    assert old is not None
    [result] = write_units(engine, [WriteUnit(interactions=[old])], user_key=key)
    assert [(e.field, e.status) for e in result.errors] == [("user_id", 410)]
    forget_user(engine, "old", user_key=key, data_dir=tmp_path)
    with engine.connect() as conn:
        rows = conn.execute(select(t.deleted_users)).mappings().all()
    assert [(r["user_hash"], r["interactions_deleted"], r["ratings_deleted"]) for r in rows] == [
        (user_hash("old", key), 3, 4)]


def test_a_flagged_raters_id_leaves_the_manifests_of_other_snapshots(db_url: str, tmp_path: Path) -> None:
    """A snapshot whose rows never used the user's ratings (they were a flagged rater, left out) is not purged,
    but their id goes from its manifest: in the row and in manifest.json."""
    from datetime import datetime, timezone

    engine, folder = open_engine(db_url), tmp_path / "sft"
    manifest = {"snapshot_id": "s-1", "format": "sft", "content_hash": "h", "rows": {"train": 1, "eval": 0},
                "config": {}, "rating_ids": ["r-someone"], "inputs": {"flagged_raters": ["troll", MARKER]}}
    folder.mkdir()
    write_manifest(folder, manifest)
    record_snapshot(engine, "s-1", datetime.now(timezone.utc), folder, manifest)
    forget_user(engine, MARKER, user_key=b"k", data_dir=tmp_path)
    with engine.connect() as conn:
        row = conn.execute(select(t.DatasetSnapshot.__table__)).mappings().one()
    assert row["purged_at"] is None and row["manifest"]["inputs"]["flagged_raters"] == ["troll"]
    assert json.loads((folder / "manifest.json").read_text())["inputs"]["flagged_raters"] == ["troll"]
    assert files_with(tmp_path, MARKER) == [] and rows_with(engine, MARKER) == []


def test_a_build_that_read_before_a_deletion_is_not_recorded(db_url: str, tmp_path: Path) -> None:
    from datetime import datetime, timezone

    engine = open_engine(db_url)
    started = datetime.now(timezone.utc)
    forget_user(engine, "someone", user_key=b"k", data_dir=tmp_path)
    manifest = {"format": "sft", "content_hash": "h", "rows": {"train": 1, "eval": 0}, "config": {}}
    with pytest.raises(RatingloopError, match="deleted while this build ran"):
        record_snapshot(engine, "s-1", started, tmp_path, manifest, read_since=started)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.DatasetSnapshot.__table__)).scalar_one() == 0


# --- the access log ------------------------------------------------------------------------------------------

def test_the_access_log_filter_redacts_user_ids() -> None:
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "DELETE", f"/v1/users/a%2F{MARKER}?x=1", "1.1", 200), None)
    assert RedactUserIds().filter(record)
    assert MARKER not in record.getMessage() and '"DELETE /v1/users/[redacted] HTTP/1.1" 200' in record.getMessage()


def test_a_served_deletion_leaves_no_user_id_in_the_access_log(db_url: str, tmp_path: Path) -> None:
    """A real `ratingloop serve` with its access log on (one line per request), as deployed; it decodes a
    path once, so ids that look like escapes are deleted as themselves."""
    with running_server_at(db_url, tmp_path, access_log=True) as base:
        for uid in (UID, f"%2F{MARKER}", f"{MARKER}%20x"):
            body = {"messages": prompt("hello"), "response": "hi", "user_id": uid}
            assert httpx.post(f"{base}/v1/interactions", json=body, headers=ADMIN).status_code == 201
            r = httpx.delete(f"{base}/v1/users/{quote(uid, safe='')}", headers=ADMIN)
            assert r.status_code == 200 and r.json() == {"user_id": uid, "interactions_deleted": 1,
                                                         "ratings_deleted": 0}
    log = (tmp_path / "server.log").read_text()
    assert '"DELETE /v1/users/[redacted] HTTP/1.1" 200' in log and '"POST /v1/interactions HTTP/1.1" 201' in log
    assert MARKER not in log
