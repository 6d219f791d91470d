"""Stage 5, train: a reward model put to work on the store - `ratingloop label` and `ratingloop ask`.

    report = label(engine, model=None, limit=1000, user_key=key)   # judge ratings on unrated interactions
    rows = ask(engine, n=20)                        # the unrated interactions a human rating would teach most

`label` scores interactions that carry no rating at all with a trained reward model
(`scoring.load_scorer`, the newest registered one unless `model` is given) and stores each score as a
rating through the store's one write path (`write_units`, with the server secret `user_key` its tombstone
check needs), so it is raw, append-only data like any other:

    rater_id  "judge:<version id>" (or "judge:<folder name>" for an unregistered folder)
    source    "judge"
    kind      "scale" on [-1, 1], value = the reward model's mean: signals maps it to a reward unchanged
    text      {"sd": ..., "reward_model": "<folder>"}: the model's uncertainty, kept with the rating
              (signals reads `text` only for comments and builders only for corrections)

The idempotency key is derived from (reward model folder, interaction), so a re-run - or two runs at
once - adds nothing. An interaction that already has any rating, a human's or a judge's, is left
alone: judge ratings never pile up on one interaction (their errors are correlated, and the rater
model would read agreeing judges as independent evidence), and a later human rating then meets an
earlier judge rating, which is what lets the rater model fit the judge's noise out of sample.
`min_confidence` (default MIN_CONFIDENCE) skips scores the model is unsure of, confidence = 1 - sd /
SD_UNINFORMED; a skipped interaction stays unrated, for a later run or a human.

`ask` ranks the newest `pool` interactions without a human rating (judge-labelled ones included) by
how much a rating would teach: the reward model's sd (the embed backbone's Bayesian predictive sd grows away
from what it was fitted on), or with `boundary=True` the sd times exp(-mean^2 / (2 sd^2)), which also
prefers answers the model cannot place on either side of 0 (good vs bad).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from sqlalchemy import Engine, and_, exists, or_, select

from ratingloop.errors import RatingloopError
from ratingloop.store import tables as t
from ratingloop.store.records import Limits, RatingIn, clean_rating
from ratingloop.store.writes import WriteUnit, write_units

log = logging.getLogger(__name__)

SD_UNINFORMED = 1.0 / math.sqrt(3.0)  # the sd of a reward known only to lie in [-1, 1] (uniform): knowing nothing
# The rater model counts a judge rating like a typical rater's, whatever its sd, so by default only scores
# with sd <= 0.43 are stored: answers unlike what the model learnt from (its predictive sd grows there)
# wait for a human.
MIN_CONFIDENCE = 0.25
POOL = 5000  # `ask` considers the newest interactions without a human rating, this many
PAGE = 256  # interactions scored and written per round trip
EXCERPT = 80  # characters of the prompt shown by `ask`


@dataclass
class LabelReport:
    reward_model: str
    rater_id: str
    scored: int = 0
    written: int = 0  # new judge ratings
    existing: int = 0  # already stored under the same key (a concurrent or repeated run)
    skipped_unsure: int = 0  # confidence below min_confidence
    mean_reward: float | None = None
    mean_sd: float | None = None


@dataclass(frozen=True)
class Question:
    """One interaction worth a human rating, for a rating queue."""
    interaction_id: str
    prompt: str  # the last user turn, shortened to EXCERPT characters
    reward: float  # the reward model's mean, [-1, 1]
    sd: float  # its uncertainty
    priority: float  # what the ranking sorts by (sd, or sd x closeness to 0 with boundary=True)
    judged: bool  # a judge rating is already stored (no human one)


# --- which reward model ------------------------------------------------------------------------------

NO_REWARD_MODEL = "train one with `ratingloop train --method reward --out DIR`, or give its folder with --model DIR"


def reward_model_dir(engine: Engine, given: str | Path | None, fix: str = NO_REWARD_MODEL) -> Path:
    """`given`, or the folder of the newest succeeded `train --method reward` run that still holds its model;
    RatingloopError, ending in `fix`, when there is none."""
    from ratingloop.models.registry import list_runs, list_versions
    from ratingloop.train.reward_card import CARD

    if given:
        return Path(given)
    folders = {v.training_run_id: v.adapter_path for v in list_versions(engine) if v.status != "rejected"}
    for run in list_runs(engine):  # newest first
        folder = folders.get(run.id) if run.method == "reward" and run.status == "succeeded" else None
        if folder and (Path(folder) / CARD).is_file():
            return Path(folder)
        if folder:
            log.warning("reward model %s (run %s) is registered but its folder holds no %s; trying an older one",
                        folder, run.id, CARD)
    raise RatingloopError(f"the store registers no reward model; {fix}")


def judge_identity(engine: Engine, folder: Path) -> tuple[str, str]:
    """(rater id, key basis): the registered version's id when the folder is one, else the folder itself."""
    from ratingloop.models.registry import list_versions

    resolved = str(folder.resolve())
    version = next((v.id for v in list_versions(engine) if v.adapter_path == resolved), None)
    if version is not None:
        return f"judge:{version}", version
    return f"judge:{folder.resolve().name}"[:200], resolved


def rating_key(basis: str, interaction_id: str) -> str:
    """One key per (reward model, interaction): what makes a re-run add nothing."""
    return "judge:" + hashlib.sha256(f"{basis}\0{interaction_id}".encode()).hexdigest()[:40]


def confidence(sd: np.ndarray) -> np.ndarray:
    """1 - sd / SD_UNINFORMED, in [0, 1]: 0 when the model knows no more than the scale's range."""
    out: np.ndarray = np.clip(1.0 - np.asarray(sd, float) / SD_UNINFORMED, 0.0, 1.0)
    return out


# --- label -------------------------------------------------------------------------------------------

def label(engine: Engine, model: str | Path | None = None, *, user_key: bytes, limit: int | None = None,
          min_confidence: float = MIN_CONFIDENCE, progress: Callable[[int], None] | None = None) -> LabelReport:
    """Score up to `limit` interactions nobody has rated (newest first) and store the scores as judge ratings.

    `progress(n)` is called after each page with the number of interactions scored in it.
    """
    from ratingloop.train.scoring import load_scorer

    if limit is not None and limit < 1:
        raise RatingloopError(f"--limit {limit}: must be >= 1 (leave it out to label every unrated interaction)")
    if not 0.0 <= min_confidence <= 1.0:
        raise RatingloopError(f"--min-confidence {min_confidence}: must lie in [0, 1]")
    folder = reward_model_dir(engine, model)
    scorer = load_scorer(folder)
    rater, basis = judge_identity(engine, folder)
    report = LabelReport(str(folder), rater)
    means, sds = [], []
    for page in _pages(engine, _unrated(), limit):
        mean, sd = scorer.score([p for _, p, _ in page], [a for _, _, a in page])
        keep = confidence(sd) >= min_confidence
        report.scored += len(page)
        report.skipped_unsure += int((~keep).sum())
        means += mean[keep].tolist()
        sds += sd[keep].tolist()
        units = [judge_unit(iid, float(m), float(s), rater, basis, folder)
                 for (iid, _, _), m, s, k in zip(page, mean, sd, keep, strict=True) if k]
        for result in write_units(engine, units, user_key=user_key):
            if not result.ok:  # cannot happen for well-formed units; never swallowed
                raise RatingloopError(f"label: the store refused a judge rating: {result.errors}")
            report.written += sum(status == 201 for _, status in result.ratings)
            report.existing += sum(status == 200 for _, status in result.ratings)
        if progress:
            progress(len(page))
    report.mean_reward = float(np.mean(means)) if means else None
    report.mean_sd = float(np.mean(sds)) if sds else None
    log.info("label: %d interactions scored by %s -> %d new judge ratings (%d already stored, %d below confidence "
             "%.2f)", report.scored, folder, report.written, report.existing, report.skipped_unsure, min_confidence)
    return report


def unrated_count(engine: Engine) -> int:
    """How many interactions carry no rating at all (what `label` would score without a limit)."""
    from sqlalchemy import func

    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(t.interactions).where(_unrated())).scalar_one())


def judge_unit(iid: str, mean: float, sd: float, rater: str, basis: str, folder: Path) -> WriteUnit:
    """One judge rating, validated as any incoming rating is. Rounded so a re-run's body matches exactly."""
    value = min(1.0, max(-1.0, round(mean, 4)))
    note = json.dumps({"sd": round(sd, 4), "reward_model": str(folder.resolve())}, sort_keys=True)
    raw = RatingIn(interaction_id=iid, rater_id=rater, source="judge", kind="scale", value=value, scale=(-1.0, 1.0),
                   text=note, idempotency_key=rating_key(basis, iid))
    rating, errors = clean_rating(raw, Limits())
    if rating is None:
        raise RatingloopError(f"label: a judge rating for {iid!r} is invalid: {errors}")
    return WriteUnit(ratings=[rating])


# --- ask ---------------------------------------------------------------------------------------------

def ask(engine: Engine, model: str | Path | None = None, *, n: int = 20, boundary: bool = False,
        pool: int = POOL, progress: Callable[[int], None] | None = None) -> list[Question]:
    """Of the newest `pool` interactions without a human rating, the `n` whose rating would teach the reward
    model most, best first."""
    from ratingloop.train.scoring import load_scorer

    if n < 1 or pool < 1:
        raise RatingloopError(f"--n {n} --pool {pool}: both must be >= 1")
    folder = reward_model_dir(engine, model)
    scorer = load_scorer(folder)
    if scorer.card.get("sd", {}).get("kind") != "predictive" and not boundary:
        log.warning("ask: reward model %s gives one sd for every answer (%s), so the ranking is a tie; "
                    "use --boundary to rank by closeness to 0 as well", folder, scorer.card.get("sd", {}).get("kind"))
    best: list[tuple[float, float, int, Question]] = []  # a min-heap of the n best so far
    seen = 0
    for page in _pages(engine, _no_human_rating(), pool):
        mean, sd = scorer.score([p for _, p, _ in page], [a for _, _, a in page])
        judged = _judged(engine, [iid for iid, _, _ in page])
        for (iid, prompt, _), m, s, p in zip(page, mean, sd, priority(mean, sd, boundary), strict=True):
            # ties: nearer the boundary first, then the newer interaction (pages run newest first)
            item = (float(p), -abs(float(m)), -seen, Question(iid, _excerpt(prompt), float(m), float(s), float(p),
                                                              iid in judged))
            seen += 1
            if len(best) < n:
                heapq.heappush(best, item)
            elif item[:3] > best[0][:3]:
                heapq.heapreplace(best, item)
        if progress:
            progress(len(page))
    return [x[3] for x in sorted(best, key=lambda x: x[:3], reverse=True)]


def priority(mean: np.ndarray, sd: np.ndarray, boundary: bool) -> np.ndarray:
    """sd; with `boundary`, times exp(-z^2 / 2), z = mean / sd (1 on the boundary, ~0 several sd away)."""
    sd = np.asarray(sd, float)
    if not boundary:
        return sd
    z = np.asarray(mean, float) / np.maximum(sd, 1e-9)
    out: np.ndarray = sd * np.exp(-0.5 * z * z)
    return out


# --- reading the store -------------------------------------------------------------------------------

Page = list[tuple[str, list[dict[str, str]], str]]  # (interaction id, prompt messages, answer)


def _unrated() -> Any:
    """Interactions with no rating at all."""
    r = t.ratings.c
    return ~exists().where(r.interaction_id == t.interactions.c.id)


def _no_human_rating() -> Any:
    """Interactions with no rating other than a judge's."""
    r = t.ratings.c
    return ~exists().where(and_(r.interaction_id == t.interactions.c.id, r.source != "judge"))


def _judged(engine: Engine, ids: list[str]) -> set[str]:
    """Which of `ids` (a page, well under the databases' parameter limits) carry a judge rating."""
    r = t.ratings.c
    query = select(r.interaction_id).where(r.source == "judge", r.interaction_id.in_(ids)).distinct()
    with engine.connect() as conn:
        return set(conn.execute(query).scalars())


def _pages(engine: Engine, where: Any, limit: int | None) -> Iterator[Page]:
    """Pages of matching interactions, newest first (keyset on created_at, id: rows written meanwhile do not
    shift the pages, and an interaction skipped on purpose is not met again)."""
    i = t.interactions.c
    after: tuple[Any, str] | None = None
    left = limit
    while left is None or left > 0:
        query = select(i.id, i.created_at, i.messages, i.response).where(where)
        if after is not None:
            query = query.where(or_(i.created_at < after[0], and_(i.created_at == after[0], i.id < after[1])))
        size = PAGE if left is None else min(PAGE, left)
        with engine.connect() as conn:
            rows = conn.execute(query.order_by(i.created_at.desc(), i.id.desc()).limit(size)).all()
        if not rows:
            return
        after = (rows[-1].created_at, rows[-1].id)
        left = None if left is None else left - len(rows)
        yield [(row.id, _messages(row.messages), row.response or "") for row in rows]


def _messages(messages: list[dict[str, Any]] | None) -> list[dict[str, str]]:
    """Role and text of each message (a list of content parts becomes its text parts, joined)."""
    out = []
    for m in messages or []:
        content = m.get("content")
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        out.append({"role": str(m.get("role", "user")), "content": content or ""})
    return out


def _excerpt(prompt: list[dict[str, str]]) -> str:
    """The last user turn (else the last message), on one line and at most EXCERPT characters."""
    last = prompt[-1]["content"] if prompt else ""
    text = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), last)
    text = " ".join(text.split())
    return text if len(text) <= EXCERPT else text[:EXCERPT - 3] + "..."
