"""End to end: the official `openai` client chats with `ratingloop serve` on the real default model
(SmolLM2-135M-Instruct), plain and streamed, and every answer is logged and rateable with its token."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy import select

from ratingloop.store import open_engine
from ratingloop.store.tables import Interaction
from servers import ADMIN_KEY, running_server_at

pytestmark = pytest.mark.slow


def test_openai_client_asks_the_default_model_for_the_capital_of_france(default_model: Path, sqlite_url: str,
                                                                          tmp_path: Path) -> None:
    backend = ("--backend", "transformers", "--model", str(default_model))
    with running_server_at(sqlite_url, tmp_path, backend=backend, start_timeout_s=120) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=ADMIN_KEY)
        ask = [{"role": "user", "content": "What is the capital of France?"}]
        raw = client.chat.completions.with_raw_response.create(model="active", messages=ask,  # type: ignore[arg-type]
                                                               max_tokens=40, temperature=0, user="alice")
        answer = raw.parse()
        assert "Paris" in (answer.choices[0].message.content or "")
        chunks = list(client.chat.completions.create(model="active", messages=ask, max_tokens=40,  # type: ignore[arg-type]
                                                     temperature=0, stream=True))
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == answer.choices[0].message.content
        meta = chunks[-1].model_extra["ratingloop"]  # type: ignore[index]

        for iid, token in ((raw.headers["x-interaction-id"], raw.headers["x-feedback-token"]),
                           (meta["interaction_id"], meta["feedback_token"])):
            r = httpx.post(f"{url}/v1/feedback", headers={"Authorization": f"Bearer {token}"},
                           json={"interaction_id": iid, "kind": "thumbs", "value": 1})
            assert r.status_code == 201, r.text
        with open_engine(sqlite_url).connect() as conn:
            rows = list(conn.execute(select(Interaction.__table__)).mappings())
        assert {r["id"] for r in rows} == {raw.headers["x-interaction-id"], meta["interaction_id"]}
        assert all("Paris" in r["response"] and r["model"] == "base" for r in rows)
        assert rows[0]["completion_tokens"] > 0
