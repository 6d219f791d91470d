"""Stage 4, dataset (`ratingloop build`): a signals run and the store -> the answers and corrections to choose from.

Reads a recorded signals run (`ratingloop.signals.StoredSignals`: rewards with confidence, and the
ratings that counted) and, through SQLAlchemy Core, the `interactions` and the counted `ratings`
rows (kind, correction text, source). Writes nothing.

- Each rated interaction becomes an `Answer` with its reward's sd, `prior_sd * (1 - confidence)`.
- Only the ratings the signals run counted enter a build (its one rule: the latest per rater,
  interaction, aspect and channel, flagged raters left out), so corrections and rating ids come from
  exactly the ratings behind the rewards. Deleted users are gone from the store and from the run.
- Identical (prompt, response) answers are merged (de-duplication): the merged reward is the
  precision-weighted mean and its sd shrinks as 1/sqrt(sum of precisions), as for independent
  measurements of one quantity. Without this, a popular canned answer would count many times.
- An answer only a reward model rated (source "judge", from `ratingloop label`) is `judged`: its
  confidence is scaled by `judge_weight` (0 drops it) and its sd grows to match, so the builders'
  thresholds treat a machine's guess as weaker evidence than a person's.
- Comparisons (preference, rank) the run counted are read as tiers (`store.load_comparisons`) into
  `pool.comparisons`, for the DPO builder; each counts among the ratings of every answer it names (an
  answer rated only through comparisons is an answer like any other).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, select

from ratingloop.dataset.config import BuildConfig
from ratingloop.dataset.rows import Answer, Correction, FilterLog, Message, prompt_key
from ratingloop.dataset.scrub import scrub, scrub_messages
from ratingloop.signals import StoredSignals
from ratingloop.store import Comparison, load_comparisons
from ratingloop.store import tables as t

CHUNK = 500  # ids per IN (...) query; SQLite caps bound parameters
SD_FLOOR = 1e-3  # no reward is exact; keeps precision weights finite


@dataclass
class Pool:
    answers: list[Answer] = field(default_factory=list)
    corrections: list[Correction] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)  # the ones the signals run counted, as tiers
    log: FilterLog = field(default_factory=FilterLog)
    n_interactions: int = 0
    n_scrubbed: int = 0  # answers or corrections whose text PII scrubbing changed


def load_pool(engine: Engine, signals: StoredSignals, cfg: BuildConfig, raters: frozenset[str] | None = None) -> Pool:
    """Answers (merged when identical) and corrections, with every drop recorded in `pool.log`.
    `raters`: only the answers, corrections and comparisons these raters gave count (a cohort's build); an
    answer keeps the signals run's reward, which is its raters' consensus."""
    sds = reward_sds(signals, cfg)
    pool = Pool(n_interactions=len(signals.interactions))
    ids = [s.interaction_id for s in signals.interactions]
    with engine.connect() as conn:
        convo = _interactions(conn, ids)
        ratings = _counted_ratings(conn, signals.counted, raters)
    kept = {rid for used in ratings.values() for rid, *_ in used}
    pool.comparisons = [c for c in _counted_comparisons(engine, signals.counted)
                        if raters is None or c.rating_id in kept]
    for c in pool.comparisons:  # a comparison is also a rating of every other answer it names
        for iid in {x for tier in c.tiers for x in tier} - {c.interaction_id}:
            ratings.setdefault(iid, []).append((c.rating_id, c.kind, "", c.source))

    singles: list[Answer] = []
    corrections: list[tuple[str, str, str]] = []  # (interaction id, rating id, text)
    no_ratings = empty = judge_only = 0
    prior_sd = cfg.reward_prior_sd or float(signals.summary["mu_a"])
    for s in signals.interactions:
        used = ratings.get(s.interaction_id, [])
        if s.n_ratings == 0 or not used or s.interaction_id not in convo:
            no_ratings += 1  # every rating came from a flagged rater (the reward is only the prior), or deleted
            continue
        judged = all(source == "judge" for _, _, _, source in used)
        confidence, sd = s.confidence, sds[s.interaction_id]
        if judged:
            if cfg.judge_weight == 0:
                judge_only += 1
                continue
            confidence *= cfg.judge_weight
            sd = max(sd, prior_sd * (1.0 - confidence), SD_FLOOR)
        messages, response = convo[s.interaction_id]
        if not response.strip() or not messages:
            empty += 1
            continue
        prompt = [{"role": str(m["role"]), "content": str(m.get("content") or "")} for m in messages]
        if cfg.scrub_pii:
            clean_prompt, clean_response = scrub_messages(prompt), scrub(response)
            pool.n_scrubbed += (clean_prompt != prompt) + (clean_response != response)
            prompt, response = clean_prompt, clean_response
        singles.append(Answer(prompt, prompt_key(prompt), response, s.reward, sd, confidence,
                              (s.interaction_id,), tuple(rid for rid, _, _, _ in used), judged))
        corrections += [(s.interaction_id, rid, text) for rid, kind, text, _ in used if kind == "correction" and text]
    pool.log.add("no_unflagged_ratings", no_ratings, "interactions were rated only by flagged raters"
                 + (" or by raters outside the cohort" if raters is not None else ""))
    pool.log.add("judge_only", judge_only, "interactions were rated only by a reward model (build.judge_weight=0)")
    pool.log.add("empty", empty, "interactions have an empty prompt or response")
    pool.answers = merge_duplicates(singles, pool.log) if cfg.dedupe else singles
    pool.corrections = _corrections(pool, corrections, cfg)
    return pool


def reward_sds(signals: StoredSignals, cfg: BuildConfig) -> dict[str, float]:
    """Per interaction, the reward's sd: the population sd of rewards (reward units) times (1 - confidence),
    confidence being 1 - posterior sd / population sd of quality. The population sd is mu_a from the fit,
    since reward = mu_a * quality + mu_b and quality is standardised (a content prior, where one was
    used, is already inside the posterior)."""
    prior_sd = cfg.reward_prior_sd or float(signals.summary["mu_a"])
    return {s.interaction_id: max(prior_sd * (1.0 - s.confidence), SD_FLOOR) for s in signals.interactions}


def merge_duplicates(answers: list[Answer], log: FilterLog) -> list[Answer]:
    groups: dict[tuple[str, str], list[Answer]] = defaultdict(list)
    for a in answers:
        groups[(a.prompt_key, a.completion)].append(a)
    merged = []
    for group in groups.values():
        if len(group) == 1:
            merged.append(group[0])
            continue
        w = [1.0 / a.sd**2 for a in group]
        sd = 1.0 / math.sqrt(sum(w))
        reward = sum(wi * a.reward for wi, a in zip(w, group, strict=True)) / sum(w)
        # confidence on the same footing as signals: 1 - sd / prior sd, the prior sd recovered from a member
        prior_sd = max(a.sd / max(1.0 - a.confidence, 1e-9) for a in group)
        merged.append(Answer(group[0].prompt, group[0].prompt_key, group[0].completion, reward, sd,
                             min(max(1.0 - sd / prior_sd, 0.0), 1.0),
                             tuple(i for a in group for i in a.interaction_ids),
                             tuple(r for a in group for r in a.rating_ids), all(a.judged for a in group)))
    log.add("duplicate_answers", len(answers) - len(merged),
            "duplicate (prompt, response) answers merged into one (precision-weighted reward)")
    return merged


def _corrections(pool: Pool, found: list[tuple[str, str, str]], cfg: BuildConfig) -> list[Correction]:
    by_interaction = {iid: a for a in pool.answers for iid in a.interaction_ids}
    out, same = [], 0
    for iid, rating_id, text in found:
        answer = by_interaction[iid]
        text = scrub(text) if cfg.scrub_pii else text
        if text.strip() == answer.completion.strip():
            same += 1
            continue
        out.append(Correction(text, rating_id, answer))
    pool.log.add("correction_same_as_answer", same, "corrections repeat the answer they correct")
    return out


def _interactions(conn: Connection, ids: list[str]) -> dict[str, tuple[list[Message], str]]:
    i = t.interactions.c
    out: dict[str, tuple[list[Message], str]] = {}
    for k in range(0, len(ids), CHUNK):
        for row in conn.execute(select(i.id, i.messages, i.response).where(i.id.in_(ids[k:k + CHUNK]))):
            out[row.id] = (row.messages or [], row.response or "")
    return out


def _counted_comparisons(engine: Engine, counted: dict[str, list[str]]) -> list[Comparison]:
    """The comparisons among the run's counted ratings, oldest first (a later one, not in the run, is left out)."""
    ids = {rid for rids in counted.values() for rid in rids}
    return [c for c in load_comparisons(engine, latest=False) if c.rating_id in ids]


def _counted_ratings(conn: Connection, counted: dict[str, list[str]], raters: frozenset[str] | None = None
                     ) -> dict[str, list[tuple[str, str, str, str]]]:
    """Per interaction: (rating id, kind, text, source) of each rating the signals run counted, in its order
    (only `raters`' when given). A rating deleted since the run (its user was deleted) is simply not found."""
    r = t.ratings.c
    ids = [rid for rids in counted.values() for rid in rids]
    found: dict[str, tuple[str, str, str, str]] = {}
    for k in range(0, len(ids), CHUNK):
        query = select(r.id, r.kind, r.text, r.source, r.rater_id).where(r.id.in_(ids[k:k + CHUNK]))
        for row in conn.execute(query):
            if raters is None or row.rater_id in raters:
                found[row.id] = (row.id, row.kind, row.text or "", row.source or "")
    return {iid: [found[rid] for rid in rids if rid in found] for iid, rids in counted.items()}
