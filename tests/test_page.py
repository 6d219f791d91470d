"""The rating web page (serve/page.py): its files, the public-chat session cookie, and what
`GET /v1/users/{id}/feedback` tells a user their ratings did, on both databases; and, marked slow, the page
itself in a real headless Chromium against a real server answering with a tiny model."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert, select
from starlette.responses import Response

from browser import CHROMIUM, playwright
from ratingloop.config import Settings
from ratingloop.dataset.write import record_snapshot
from ratingloop.models.registry import finish_run, list_events, promote, rollback, set_traffic_share, start_run
from ratingloop.serve.app import create_app
from ratingloop.serve.page import COOKIE, STATIC, PageSessions
from ratingloop.store import open_engine
from ratingloop.store import tables as t
from ratingloop.store.writes import new_id
from servers import ADMIN_KEY, running_server_at

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
MSGS = [{"role": "user", "content": "Where is my parcel?"}]


def app_client(settings: Settings, **changes: Any) -> TestClient:
    return TestClient(create_app(settings.model_copy(update=changes)))


@pytest.fixture
def sqlite_settings(sqlite_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=sqlite_url, data_dir=tmp_path / "data", admin_key=ADMIN_KEY)


def session_cookie(response: Any) -> str | None:
    """The Set-Cookie header of the page session, if the response sets one."""
    found = [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{COOKIE}=")]
    return found[0] if found else None


# -- the page and its files ------------------------------------------------------------------------------------

def test_page_and_files_are_served_without_a_cookie_when_chat_is_not_public(sqlite_settings: Settings) -> None:
    with app_client(sqlite_settings) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert 'id="chat-form"' in page.text and "/static/page.js" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert session_cookie(page) is None
        js, css = client.get("/static/page.js"), client.get("/static/page.css")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        for name in ("index.html", "nope.js", "..%2Fpage.py"):
            assert client.get(f"/static/{name}").status_code == 404
        config = client.get("/v1/page/config").json()
        assert config == {"public_chat": False, "needs_key": True, "user_id": None,
                          "aspects": ["relevance", "accuracy", "helpfulness"]}
        assert session_cookie(client.get("/v1/page/config")) is None


def test_public_chat_issues_one_signed_cookie(sqlite_settings: Settings) -> None:
    with app_client(sqlite_settings, public_chat=True) as client:
        first = client.get("/")
        cookie = session_cookie(first)
        assert cookie is not None
        attributes = {part.strip().lower() for part in cookie.split(";")}
        assert {"httponly", "samesite=strict", "path=/"} <= attributes
        user_id = cookie.split(";")[0].removeprefix(f"{COOKIE}=").rpartition(".")[0]
        assert re.fullmatch(r"page-[\w-]{16}", user_id)
        assert session_cookie(client.get("/")) is None  # the client sends it back: no new one
        config = client.get("/v1/page/config").json()
        assert config["public_chat"] is True and config["needs_key"] is False and config["user_id"] == user_id


def test_a_tampered_cookie_is_refused_and_replaced(sqlite_settings: Settings) -> None:
    with app_client(sqlite_settings, public_chat=True) as client:
        value = client.get("/").cookies[COOKIE]
        user_id, _, mac = value.rpartition(".")
        forged = {"other id, same mac": f"page-someone-else.{mac}",
                  "flipped mac": f"{user_id}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}",
                  "no mac": user_id, "not a page id": f"u42.{mac}", "empty": ""}
        for what, bad in forged.items():
            client.cookies.clear()
            client.cookies.set(COOKIE, bad)
            page = client.get("/")
            fresh = session_cookie(page)
            assert fresh is not None and user_id not in fresh, what
            client.cookies.clear()
            client.cookies.set(COOKIE, bad)
            assert client.get(f"/v1/users/{user_id}/feedback").status_code == 401, what
    stranger = Response()
    other_id = PageSessions(b"another server's secret").issue(stranger)
    with app_client(sqlite_settings, public_chat=True) as client:
        client.cookies.set(COOKIE, stranger.headers["set-cookie"].split(";")[0].split("=", 1)[1])
        assert client.get(f"/v1/users/{other_id}/feedback").status_code == 401


# -- who may read a user's feedback ----------------------------------------------------------------------------

def test_user_feedback_needs_the_admin_key_or_that_users_cookie(sqlite_settings: Settings) -> None:
    with app_client(sqlite_settings, public_chat=True) as client:
        r = client.post("/v1/interactions", json={"messages": MSGS, "response": "On its way.", "user_id": "u1"},
                        headers=ADMIN)
        token = r.json()["feedback_token"]
        me = client.get("/").cookies[COOKIE].rpartition(".")[0]

        assert client.get(f"/v1/users/{me}/feedback").json() == {
            "user_id": me, "ratings": 0, "interactions_rated": 0, "served_by": "base",
            "served_by_cohort": None, "versions": []}
        assert client.get("/v1/users/u1/feedback").status_code == 403  # a page user asks for another user
        assert client.get("/v1/users/u1/feedback", headers=ADMIN).status_code == 200
        client.cookies.clear()
        assert client.get("/v1/users/u1/feedback").status_code == 401
        assert client.get("/v1/users/u1/feedback", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/v1/users/u1/feedback", headers={"Authorization": f"Bearer {token}"}).status_code == 403
        bad = client.get("/v1/users/u%01x/feedback", headers=ADMIN)
        assert bad.status_code == 422 and bad.json()["error"]["param"] == "user_id"
        slash = client.get("/v1/users/team%2Fann/feedback", headers=ADMIN)
        assert slash.status_code == 200 and slash.json()["user_id"] == "team/ann"


def test_a_page_user_sees_the_ratings_their_cookie_gave(sqlite_settings: Settings) -> None:
    with app_client(sqlite_settings, public_chat=True) as client:
        me = client.get("/").cookies[COOKIE].rpartition(".")[0]
        # what the chat endpoint does for a page user: the interaction's user is the cookie's id
        r = client.post("/v1/interactions", json={"messages": MSGS, "response": "On its way.", "user_id": me},
                        headers=ADMIN)
        iid, token = r.json()["id"], r.json()["feedback_token"]
        for rating in ({"kind": "thumbs", "value": -1}, {"kind": "aspect", "aspect": "accuracy", "value": 1}):
            sent = client.post("/v1/feedback", json={"interaction_id": iid, **rating},
                               headers={"Authorization": f"Bearer {token}"})
            assert sent.status_code == 201 and sent.json()["rater_id"] == me
        summary = client.get(f"/v1/users/{me}/feedback").json()
        assert (summary["ratings"], summary["interactions_rated"]) == (2, 1)


# -- which versions a user's ratings trained, on both databases ------------------------------------------------

def servable_folder(path: Path) -> Path:
    """The smallest model folder the registry lets serve: config.json and one 4-byte safetensors tensor."""
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))
    return path


def signals_run(engine: Engine, counted: dict[str, str]) -> str:
    """A signals run whose counted ratings are `counted` (rating id -> interaction id)."""
    run_id = new_id()
    with engine.begin() as conn:
        conn.execute(insert(t.signals_runs).values(id=run_id, created_at=datetime.now(timezone.utc), config={},
                                                   summary={}, last_rating_at=None, n_ratings=len(counted)))
        for rid, iid in counted.items():
            conn.execute(insert(t.signals_ratings).values(run_id=run_id, rating_id=rid, interaction_id=iid))
    return run_id


def version_trained_on(engine: Engine, tmp_path: Path, rating_ids: list[str], signals: str | None) -> str:
    """A version whose dataset snapshot's manifest lists `rating_ids`, built from signals run `signals`."""
    snapshot = new_id()
    manifest = {"format": "kto", "content_hash": "0" * 64, "rows": {"train": 1, "eval": 0}, "config": {},
                "rating_ids": rating_ids}
    record_snapshot(engine, snapshot, datetime.now(timezone.utc), tmp_path / snapshot, manifest, signals)
    run = start_run(engine, method="kto", config={}, base_model="default", dataset_snapshot_id=snapshot)
    return finish_run(engine, run, adapter_path=servable_folder(tmp_path / f"v-{snapshot}"), metrics={})


def test_user_feedback_counts_ratings_and_the_versions_trained_on_them(settings: Settings, tmp_path: Path) -> None:
    engine = open_engine(settings.url)
    with app_client(settings) as client:
        def log(user: str) -> tuple[str, dict[str, str]]:
            r = client.post("/v1/interactions", json={"messages": MSGS, "response": "Soon.", "user_id": user},
                            headers=ADMIN)
            return r.json()["id"], {"Authorization": f"Bearer {r.json()['feedback_token']}"}

        def rate(iid: str, auth: dict[str, str], **rating: Any) -> str:
            r = client.post("/v1/feedback", json={"interaction_id": iid, **rating}, headers=auth)
            assert r.status_code == 201, r.text
            return str(r.json()["id"])

        a, a_auth = log("u1")
        b, b_auth = log("u1")
        c, c_auth = log("u2")
        down = rate(a, a_auth, kind="thumbs", value=-1)
        rate(a, a_auth, kind="stars", value=4)
        up = rate(b, b_auth, kind="thumbs", value=1)
        theirs = rate(c, c_auth, kind="thumbs", value=1)
        rate(c, ADMIN, kind="comment", text="an annotator's remark", rater_id="ann", source="annotator")

        s1 = signals_run(engine, {down: a, theirs: c})  # counted one of u1's ratings
        s2 = signals_run(engine, {theirs: c})
        v1 = version_trained_on(engine, tmp_path, [down, theirs], s1)
        v2 = version_trained_on(engine, tmp_path, [theirs], s2)
        v3 = version_trained_on(engine, tmp_path, [up], None)  # a build that names no signals run
        v4 = version_trained_on(engine, tmp_path, [theirs], s1)  # its run counted u1's rating; its rows did not

        def summary(user: str) -> dict[str, Any]:
            r = client.get(f"/v1/users/{user}/feedback", headers=ADMIN)
            assert r.status_code == 200, r.text
            return dict(r.json())

        def versions(user: str) -> list[tuple[str, str, bool, str | None]]:
            return [(v["id"], v["status"], v["serving"], v["went_live_at"]) for v in summary(user)["versions"]]

        u1 = summary("u1")
        assert (u1["user_id"], u1["ratings"], u1["interactions_rated"]) == ("u1", 3, 2)
        assert versions("u1") == [(v1, "candidate", False, None), (v3, "candidate", False, None)]
        assert [v["method"] for v in u1["versions"]] == ["kto", "kto"]
        assert [v[0] for v in versions("u2")] == [v1, v2, v4]
        assert summary("ann")["ratings"] == 1 and versions("ann") == []
        assert summary("nobody") == {"user_id": "nobody", "ratings": 0, "interactions_rated": 0, "served_by": "base",
                                     "served_by_cohort": None, "versions": []}

        promote(engine, v1, actor="test")
        live = [e.created_at for e in list_events(engine) if e.action == "promote"][0].isoformat()
        assert versions("u1") == [(v1, "active", True, live), (v3, "candidate", False, None)]
        set_traffic_share(engine, v3, 0.25, actor="test")
        split = [e.created_at for e in list_events(engine) if e.action == "traffic"][0].isoformat()
        assert versions("u1") == [(v1, "active", True, live), (v3, "candidate", True, split)]
        set_traffic_share(engine, v3, 0.0, actor="test")
        rollback(engine, actor="test")  # the base serves again; v1 went live once
        assert versions("u1") == [(v1, "retired", False, live), (v3, "candidate", False, None)]


# -- the page's script -----------------------------------------------------------------------------------------

def test_the_script_parses_and_finds_its_elements() -> None:
    script, html = (STATIC / "page.js").read_text(), (STATIC / "index.html").read_text()
    for element_id in re.findall(r'\$\("([\w-]+)"\)', script):
        assert f'id="{element_id}"' in html, element_id
    for testid in ("thumb-up", "thumb-down", "stars", "reasons", "reason-incorrect", "reason-too-long",
                   "comment", "comment-send", "correction", "correction-send", "confirmations"):
        assert f'data-testid="{testid}"' in html, testid
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the script's syntax is checked by the browser test only")
    checked = subprocess.run([node, "--check", str(STATIC / "page.js")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


# -- the page in a real browser --------------------------------------------------------------------------------

WAIT_MS = 20_000  # for what the page shows after a request to the server


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny import save_varied_base

    return save_varied_base(tmp_path_factory.mktemp("tiny-model"))


@contextmanager
def page_on_server(db_url: str, tmp_path: Path, model: Path, env: dict[str, str] | None = None) -> Iterator[Any]:
    """A headless Chromium tab on the page of a real `ratingloop serve --backend transformers`."""
    sync_playwright = playwright()
    backend = ("--backend", "transformers", "--model", str(model))
    with running_server_at(db_url, tmp_path, backend=backend, env=env, start_timeout_s=120) as base, \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(base + "/")
            yield page
        finally:
            browser.close()


@pytest.mark.slow
def test_the_page_chats_and_rates_in_a_real_browser(db_url: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    with page_on_server(db_url, tmp_path, tiny_model_dir) as page:
        iid, user, answer = chat_and_rate(page)
    engine = open_engine(db_url)
    with engine.connect() as conn:
        inter = conn.execute(select(t.interactions).where(t.interactions.c.id == iid)).mappings().one()
        rows = conn.execute(select(t.ratings).where(t.ratings.c.interaction_id == iid)).mappings().all()
    assert inter["user_id"] == user and inter["response"] == answer
    got = sorted((r["kind"], r["aspect"], r["value"], r["text"]) for r in rows)
    assert got == [("aspect", "accuracy", 1.0, None), ("comment", "overall", None, "Paris, but say it in one line."),
                   ("stars", "overall", 4.0, None), ("thumbs", "overall", -1.0, None), ("thumbs", "overall", 1.0, None)]
    assert {(r["rater_id"], r["source"]) for r in rows} == {(user, "end_user")}


def chat_and_rate(page: Any) -> tuple[str, str, str]:
    """Enter the key, ask, rate the answer as the issue says; the interaction id, user id and answer."""
    from playwright.sync_api import expect

    expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=WAIT_MS)
    page.fill("#admin-key", ADMIN_KEY)
    page.click("#key-save")
    page.fill("#prompt", "What is the capital of France?")
    page.click("#send")

    rating = page.get_by_test_id("rating")
    expect(rating).to_have_count(1, timeout=60_000)  # a tiny model on a busy CPU
    expect(page.get_by_test_id("chat-error")).to_be_hidden()
    iid = rating.get_attribute("data-interaction-id")
    answer = page.get_by_test_id("answer").evaluate("el => el.textContent")
    user = page.evaluate("localStorage.getItem('rl_user')")
    assert iid and user

    rating.get_by_test_id("thumb-down").click()
    rating.get_by_test_id("reason-incorrect").click()
    rating.get_by_test_id("star-4").click()
    rating.get_by_test_id("comment").fill("Paris, but say it in one line.")
    rating.get_by_test_id("comment-send").click()

    confirmations = rating.get_by_test_id("confirmation")
    expect(confirmations).to_have_count(4, timeout=WAIT_MS)
    for i in range(4):
        expect(confirmations.nth(i)).to_have_attribute("data-status", "ok", timeout=WAIT_MS)
    expect(page.get_by_test_id("feedback-count")).to_have_text("4", timeout=WAIT_MS)
    expect(page.get_by_test_id("feedback-versions")).to_have_text("No version has been trained on them yet.")
    expect(page.get_by_test_id("served-by")).to_have_text("Your answers come from the base model.")

    # once a version trained on them serves, the panel says so (the summary itself is tested above)
    summary = {"user_id": user, "ratings": 5, "interactions_rated": 1, "served_by": "01V2", "served_by_cohort": 1,
               "versions": [
        {"id": "01V1", "status": "active", "method": "kto", "serving": True,
         "went_live_at": "2030-01-02T03:04:05+00:00"}]}
    page.route("**/v1/users/*/feedback", lambda route: route.fulfill(json=summary))
    rating.get_by_test_id("thumb-up").click()
    expect(page.get_by_test_id("feedback-versions")).to_contain_text("Version 01V1, trained on them, is serving since",
                                                                     timeout=WAIT_MS)
    expect(page.get_by_test_id("served-by")).to_have_text(
        "Your answers come from version 01V2, made for users who rate like you (cohort 1).")
    expect(confirmations).to_have_count(5, timeout=WAIT_MS)
    expect(confirmations.nth(4)).to_have_attribute("data-status", "ok", timeout=WAIT_MS)
    return iid, user, answer


@pytest.mark.slow
def test_public_chat_in_a_real_browser(sqlite_url: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    """With --public-chat nobody enters a key: the page's cookie is the user, for chat and for the panel."""
    from playwright.sync_api import expect

    with page_on_server(sqlite_url, tmp_path, tiny_model_dir, env={"RATINGLOOP_PUBLIC_CHAT": "1"}) as page:
        expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=WAIT_MS)
        expect(page.locator("#key-form")).to_be_hidden()
        page.fill("#prompt", "Tell me a joke about cats.")
        page.press("#prompt", "Enter")
        rating = page.get_by_test_id("rating")
        expect(rating).to_have_count(1, timeout=60_000)
        iid = rating.get_attribute("data-interaction-id")
        rating.get_by_test_id("thumb-up").click()
        expect(page.get_by_test_id("feedback-count")).to_have_text("1", timeout=WAIT_MS)
        cookie = next(c["value"] for c in page.context.cookies() if c["name"] == COOKIE)
    with open_engine(sqlite_url).connect() as conn:
        user = conn.execute(select(t.interactions.c.user_id).where(t.interactions.c.id == iid)).scalar_one()
        raters = conn.execute(select(t.ratings.c.rater_id).where(t.ratings.c.interaction_id == iid)).scalars().all()
    assert cookie.startswith(f"{user}.") and user.startswith("page-") and raters == [user]
