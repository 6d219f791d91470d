"""Stage 1, the store: OpenAI's chat fine-tuning JSONL (`ratingloop export --format openai [--weighted]`).

One row per conversation, `{"messages": [..., {"role": "assistant", "content": answer}]}`. An interaction
whose prompt and answer open a longer interaction of the same user (the next turn of one chat) is not a row
of its own: it is that row's earlier assistant turn, so every answer appears once as a trained message.

What `weight` means: OpenAI's `weight` is 0 or 1 per assistant message - train on it or not; there is no
degree. With `--weighted` a reward becomes it by a bar: weight 1 when the signals run rated the answer
(n_ratings > 0) and its reward exceeds `min_reward` (default 0: better than the typical answer, as the
debiased raters see it), else 0 - an unrated answer, or one the run did not cover (it arrived later), is not
trained on. Earlier turns get their own interaction's weight, or 0 when the store holds no such interaction
(context someone else's model wrote). A row with no weight-1 message would teach nothing and still cost its
tokens, so it is left out (and counted). Without `--weighted` no weights are written: OpenAI then trains on
every assistant message, as for any plain fine-tuning file. `ratingloop import --format openai` reads the
weights back as thumbs up / down.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterator

import orjson
from sqlalchemy import Engine

from ratingloop.store.exporters import RunRewards, interactions


@dataclass
class OpenAIReport:
    rows: int = 0  # lines written
    turns: int = 0  # interactions written as an earlier turn of a longer row, not a row of their own
    left_out: int = 0  # rows with no weight-1 message (--weighted)
    weighted_turns: int = 0  # assistant messages with weight 1


def export_openai(engine: Engine, rewards: RunRewards | None = None, min_reward: float = 0.0,
                  report: OpenAIReport | None = None) -> Iterator[bytes]:
    """The JSONL lines (with their newline); `rewards`: weight each answer by them (the module's notes)."""
    report = report if report is not None else OpenAIReport()
    columns = ["id", "created_at", "user_id", "messages", "response"]
    with engine.connect() as conn:
        owner: dict[tuple[str | None, str], str] = {}  # (user, key of prompt + answer) -> the interaction
        opens: set[tuple[str | None, str]] = set()  # (user, key) of every assistant turn inside some prompt
        for row in interactions(conn, columns):
            owner[(row["user_id"], _key([*row["messages"], _answer(row["response"])]))] = row["id"]
            opens |= {(row["user_id"], _key(row["messages"][:k + 1])) for k, m in enumerate(row["messages"])
                      if m.get("role") == "assistant"}
        for row in interactions(conn, columns):
            messages = [*row["messages"], _answer(row["response"])]
            if (row["user_id"], _key(messages)) in opens:
                report.turns += 1
                continue
            out = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
            if rewards is not None:
                for k, m in enumerate(out):
                    if m.get("role") == "assistant":
                        iid = owner.get((row["user_id"], _key(messages[:k + 1])))
                        m["weight"] = _weight(rewards, iid, min_reward)
                ones = sum(m.get("weight", 0) for m in out)
                if not ones:
                    report.left_out += 1
                    continue
                report.weighted_turns += ones
            report.rows += 1
            yield orjson.dumps({"messages": out}) + b"\n"


def _answer(response: str) -> dict[str, Any]:
    return {"role": "assistant", "content": response}


def _key(messages: list[dict[str, Any]]) -> str:
    """The conversation's roles and contents, hashed (other message fields do not make it another one)."""
    said = [[m.get("role"), m.get("content")] for m in messages]
    return hashlib.sha256(orjson.dumps(said)).hexdigest()


def _weight(rewards: RunRewards, interaction_id: str | None, min_reward: float) -> int:
    r = rewards.rewards.get(interaction_id) if interaction_id is not None else None
    return int(r is not None and r.n_ratings > 0 and r.reward > min_reward)
