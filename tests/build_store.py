"""Stores for the build tests: interactions with known, clear-cut ratings, imported the way users do.

Five honest raters give 1-5 stars to every answer, so the rater model is sure of the rewards and the
cases differ only in what the builders should make of them (see the comments). `store_with` records a
signals run after the import, as `ratingloop signals` does: a build reads that run and never refits.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine

from ratingloop.signals import record_signals
from ratingloop.store import open_engine
from ratingloop.store.jsonl import import_lines
from ratingloop.store.records import Limits

KEY = b"test-user-key"  # the server's secret, which tombstones are keyed with (store.writes.user_hash)

SYSTEM = {"role": "system", "content": "You are the support assistant."}
RATERS = ["r1", "r2", "r3", "r4", "r5"]


def prompt(text: str) -> list[dict[str, str]]:
    return [SYSTEM, {"role": "user", "content": text}]


def line(iid: str, question: str, response: str, stars: int | None = None, *, thumbs: int | None = None,
         correction: str | None = None, user: str = "u1", extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    ratings: list[dict[str, Any]] = []
    if stars is not None:  # every honest rater agrees, give or take one star
        nudge = 1 if stars < 3 else -1  # every third rater one star milder
        ratings += [{"rater_id": r, "kind": "stars", "value": stars + (k % 3 == 2) * nudge, "scale": [1, 5]}
                    for k, r in enumerate(RATERS)]
    if thumbs is not None:
        ratings.append({"rater_id": user, "kind": "thumbs", "value": thumbs})
    if correction is not None:
        ratings.append({"rater_id": "r1", "kind": "correction", "text": correction})
    return {"id": iid, "messages": prompt(question), "response": response, "user_id": user,
            "created_at": f"2026-11-01T10:{len(iid):02d}:00Z", "ratings": ratings + (extra or [])}


# (interaction, what the builders should make of it)
CASES: list[dict[str, Any]] = [
    line("good-1", "How do I reset my password?", "Click 'Forgot password' on the sign-in page.", 5),
    line("good-1-again", "How do I reset my password?", "Click 'Forgot password' on the sign-in page.", 5),  # dup
    line("bad-1", "How do I reset my password?", "Contact support.", 1,
         correction="Use 'Forgot password' on the sign-in page; the link is valid for one hour."),
    line("good-2", "Do you ship to Canada?", "Yes, in 5-8 business days.", 5),  # one answer only
    line("mid-3a", "Can I pay by invoice?", "Sometimes.", 3),  # two middling answers: no supported pair
    line("mid-3b", "Can I pay by invoice?", "It depends on the plan.", 3),
    line("bad-5", "Can two people share one login?", "Sure, share the password.", 1),
    line("good-5", "Can two people share one login?", "Each seat is for one person; add a teammate instead.", 5),
    line("good-6", "Where is my invoice?", "Settings -> Billing -> Invoices.", 4),
    line("bad-6", "Where is my invoice?", "No idea.", 2),
]


def store_with(url: str, lines: list[dict[str, Any]] | None = None, signals: bool = True) -> Engine:
    engine = open_engine(url)
    report = import_lines(engine, [json.dumps(x).encode() for x in (CASES if lines is None else lines)], Limits(),
                          user_key=KEY)
    assert not report.bad, report.bad
    if signals:
        record_signals(engine)
    return engine
