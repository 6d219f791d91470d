"""Stage 3, signals: one interaction, every rating of it, and how a recorded signals run reached its reward
(what `ratingloop show INTERACTION` prints).

Reads the store (the interaction; its ratings and every comparison that names it, through
`compared_interactions`) and a few rows of one signals run (the newest unless given): the interaction's
reward, which of its ratings the run counted, and the estimates of their raters. Never fits, never loads a
whole run, writes nothing.

    x = explain(engine, "chat-001")                # the newest run; explain(engine, iid, run_id) another
    x.signal.reward, [r.status for r in x.ratings], x.notes

Each rating's `status` says what the run made of it: `counted`; `superseded` (a later rating of the same
rater, aspect and kind replaced it: `observations.latest`; a comparison, by a later one of the same answers:
`store.load_comparisons`); `after the run` (the run never read it); `rater flagged` (left out with its
rater); `not counted` (anything else, e.g. a run recorded without rating ids).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
from sqlalchemy import Connection, Engine, or_, select

from ratingloop.errors import RatingloopError
from ratingloop.signals.normalise import KIND_CODE, RATING_KINDS, ImplicitRewards, rewards
from ratingloop.signals.observations import RawRatings, latest
from ratingloop.signals.report import InteractionSignal, RaterSignal
from ratingloop.signals.runs import run_row
from ratingloop.store import export_rating, load_comparisons
from ratingloop.store import tables as t
from ratingloop.store.records import COMPARATIVE_KINDS

NOTABLE_BIAS = 0.2  # reward units: a rater this lenient or harsh is named in the notes
WEAK_SCALE = 0.5  # a rater whose ratings follow quality less than half as much as a typical rater's is named


@dataclass(frozen=True)
class RatingLine:
    rating: dict[str, Any]  # as `ratingloop export` writes it, with `interaction_id` (where it is stored)
    says: str  # in words: "4 stars (1-5)", "preferred over c-1", "tied with c-2 (rank)"
    reward: float | None  # on [-1, 1] as the rater model reads it before any correction; None for comparisons
    status: str  # counted | superseded | after the run | rater flagged | not counted | no run
    superseded: bool  # a later rating of the same rater (aspect, kind; a comparison: answers) replaced it
    rater: RaterSignal | None  # the run's estimate of its rater (None: no run, or not in it)


@dataclass(frozen=True)
class Explanation:
    interaction: dict[str, Any]
    ratings: list[RatingLine]
    run: dict[str, Any] | None  # run_id, created_at, last_rating_at, n_ratings (read); None: no run recorded
    signal: InteractionSignal | None  # the run's reward; None: no run, or the run has no row for it
    content_prior: dict[str, Any] | None  # the run's content prior summary (None: it was off)
    notes: list[str] = field(default_factory=list)  # how the reward was reached, in sentences

    def as_dict(self) -> dict[str, Any]:
        return {"interaction": self.interaction,
                "ratings": [{**r.rating, "says": r.says, "reward": r.reward, "status": r.status,
                             "superseded": r.superseded, "rater": asdict(r.rater) if r.rater else None}
                            for r in self.ratings],
                "signals": None if self.run is None else {
                    **self.run, **(asdict(self.signal) if self.signal else {"reward": None}),
                    "content_prior": self.content_prior},
                "notes": self.notes}


def explain(engine: Engine, interaction_id: str, run_id: str | None = None) -> Explanation:
    """The interaction, its ratings and how run `run_id` (default: the newest) reached its reward.
    RatingloopError when the interaction (or a given run) is not in the store."""
    with engine.connect() as conn:
        row = conn.execute(select(t.interactions).where(t.interactions.c.id == interaction_id)).mappings().first()
        if row is None:
            raise RatingloopError(f"interaction {interaction_id!r} is not in this store (ids are case-sensitive; "
                                  "`ratingloop export` lists them all)")
        ratings = _ratings(conn, interaction_id)
        run = run_row(conn, run_id)
        signal, counted, raters = _run_rows(conn, run, interaction_id, ratings) if run else (None, set(), {})
    superseded = _superseded(engine, interaction_id, ratings)
    implicit = _implicit(run.config if run else None)
    values = _rewards(ratings, implicit)
    lines = []
    for r, value in zip(ratings, values, strict=True):
        rater = raters.get(r["rater_id"])
        lines.append(RatingLine(_exported(r), says(r, interaction_id), value,
                                _status(r, run, counted, superseded, rater), r["id"] in superseded, rater))
    content = (run.summary or {}).get("content") if run else None
    x = Explanation(_interaction(row), lines, _run(run) if run else None, signal, content)
    x.notes.extend(_notes(x, run))
    return x


# --- reading ---------------------------------------------------------------------------------------------------

def _ratings(conn: Connection, interaction_id: str) -> list[Any]:
    """Its ratings and every comparison naming it (stored under another answer too), oldest first."""
    r, ci = t.ratings.c, t.compared_interactions.c
    naming = select(ci.rating_id).where(ci.interaction_id == interaction_id)
    query = select(t.ratings).where(or_(r.interaction_id == interaction_id, r.id.in_(naming)))
    return list(conn.execute(query.order_by(r.created_at, r.id)).mappings())


def _run_rows(conn: Connection, run: Any, interaction_id: str, ratings: list[Any]
              ) -> tuple[InteractionSignal | None, set[str], dict[str, RaterSignal]]:
    """The run's reward row for the interaction, which of `ratings` it counted, and their raters' estimates."""
    si, sc, sr = t.signals_interactions.c, t.signals_ratings.c, t.signals_raters.c
    x = conn.execute(select(t.signals_interactions).where(si.run_id == run.id,
                                                          si.interaction_id == interaction_id)).first()
    signal = InteractionSignal(x.interaction_id, x.reward, x.confidence, x.n_ratings, dict(x.aspects or {})) \
        if x else None
    ids, rater_ids = [r["id"] for r in ratings], sorted({r["rater_id"] for r in ratings})
    counted = set(conn.execute(select(sc.rating_id).where(sc.run_id == run.id, sc.rating_id.in_(ids))).scalars()) \
        if ids else set()
    raters = {x.rater_id: RaterSignal(x.rater_id, x.n, x.bias, x.scale, x.reliability, bool(x.flagged),
                                      list(x.reasons or []))
              for x in conn.execute(select(t.signals_raters).where(sr.run_id == run.id,
                                                                   sr.rater_id.in_(rater_ids)))} if rater_ids else {}
    return signal, counted, raters


def _superseded(engine: Engine, interaction_id: str, ratings: list[Any]) -> set[str]:
    """Ids of the ratings a later one replaced, by the rules every run counts with."""
    plain = [r for r in ratings if r["kind"] not in COMPARATIVE_KINDS and r["interaction_id"] == interaction_id]
    out = set()
    if plain:
        raters = sorted({r["rater_id"] for r in plain})
        aspects = ("overall", *sorted({r["aspect"] for r in plain} - {"overall"}))
        raw = RawRatings(rater=np.asarray([raters.index(r["rater_id"]) for r in plain], np.int64),
                         item=np.zeros(len(plain), np.int64),
                         kind=np.asarray([KIND_CODE[r["kind"]] for r in plain], np.int64),
                         aspect=np.asarray([aspects.index(r["aspect"]) for r in plain], np.int64),
                         value=np.zeros(len(plain)), scale_min=np.zeros(len(plain)), scale_max=np.zeros(len(plain)),
                         n_raters=len(raters), n_items=1, aspects=aspects, signal=[r["signal"] for r in plain])
        kept = set(latest(raw).tolist())
        out = {r["id"] for k, r in enumerate(plain) if k not in kept}
    if any(r["kind"] in COMPARATIVE_KINDS for r in ratings):
        every = {r["id"] for r in ratings if r["kind"] in COMPARATIVE_KINDS}
        out |= every - {c.rating_id for c in load_comparisons(engine, naming=interaction_id)}
    return out


# --- describing ------------------------------------------------------------------------------------------------

def says(r: Any, interaction_id: str) -> str:
    """What a rating says about `interaction_id`, in words."""
    kind, value = r["kind"], r["value"]
    if kind == "preference":
        a, b = r["interaction_id"], r["other_interaction_id"]
        other = b if a == interaction_id else a
        mine = float(value) if a == interaction_id else -float(value)  # +1: this answer won
        text = f"tied with {other}" if mine == 0 else f"preferred over {other}" if mine > 0 else f"lost to {other}"
        return text + (f" (strength {r['strength']:g})" if r["strength"] is not None else "")
    if kind == "rank":
        return _rank_words(r["ranking"], interaction_id)
    aspect = f"{r['aspect']} " if r["aspect"] != "overall" else ""
    if kind == "thumbs":
        return aspect + ("thumbs up" if value is not None and value > 0 else "thumbs down")
    if kind in ("stars", "scale", "aspect"):
        scale = f" ({r['scale_min']:g}-{r['scale_max']:g})" if r["scale_min"] is not None else ""
        return f"{aspect}{value:g}{' stars' if kind == 'stars' else ''}{scale}"
    if kind == "implicit":
        return f"implicit: {r['signal']}"
    return f"{kind}: {r['text'] or ''}"  # comment, correction


def _rank_words(ranking: Sequence[Sequence[str]], interaction_id: str) -> str:
    tier = next((k for k, ids in enumerate(ranking) if interaction_id in ids), None)
    if tier is None:
        return "rank: " + " > ".join(" = ".join(ids) for ids in ranking)
    tied = [x for x in ranking[tier] if x != interaction_id]
    return (f"ranked {tier + 1} of {len(ranking)} tiers (rank)" + (f", tied with {', '.join(tied)}" if tied else "")
            + (f"; below {', '.join(x for ids in ranking[:tier] for x in ids)}" if tier else "")
            + (f"; above {', '.join(x for ids in ranking[tier + 1:] for x in ids)}" if tier + 1 < len(ranking)
               else ""))


def _rewards(ratings: list[Any], implicit: ImplicitRewards) -> list[float | None]:
    """Each rating on [-1, 1] as signals normalises it; None where it has none (comparisons, an empty comment)."""
    plain = [k for k, r in enumerate(ratings) if r["kind"] not in COMPARATIVE_KINDS]
    out: list[float | None] = [None] * len(ratings)
    if plain:
        rs = [ratings[k] for k in plain]

        def col(key: str) -> np.ndarray:
            return np.asarray([np.nan if r[key] is None else r[key] for r in rs], float)

        values = rewards(np.asarray([KIND_CODE[r["kind"]] for r in rs]), col("value"), col("scale_min"),
                         col("scale_max"), [r["signal"] for r in rs], [r["text"] for r in rs], implicit)
        for k, v in zip(plain, values.tolist(), strict=True):
            out[k] = round(v, 4) if np.isfinite(v) else None
    return out


def _status(r: Any, run: Any, counted: set[str], superseded: set[str], rater: RaterSignal | None) -> str:
    if run is None:
        return "no run"
    if r["id"] in counted:
        return "counted"
    if r["id"] in superseded:
        return "superseded"
    if run.last_rating_at is None or r["created_at"] > run.last_rating_at:
        return "after the run"
    if rater is not None and rater.flagged:
        return "rater flagged"
    return "not counted"


def _implicit(config: dict[str, Any] | None) -> ImplicitRewards:
    """The implicit signals' rewards the run used (a run recorded by another version may name other ones)."""
    given = (config or {}).get("implicit") or {}
    return ImplicitRewards(**{k: v for k, v in given.items() if k in ImplicitRewards.__dataclass_fields__})


def _exported(r: Any) -> dict[str, Any]:
    return {"interaction_id": r["interaction_id"], **export_rating(r)}


def _interaction(row: Any) -> dict[str, Any]:
    keys = ("id", "model", "user_id", "conversation_id", "messages", "response", "tags", "latency_ms",
            "prompt_tokens", "completion_tokens")
    return {"created_at": row["created_at"].isoformat(), **{k: row[k] for k in keys}}


def _run(run: Any) -> dict[str, Any]:
    return {"run_id": run.id, "created_at": run.created_at.isoformat(), "n_ratings_read": run.n_ratings,
            "last_rating_at": run.last_rating_at.isoformat() if run.last_rating_at else None}


# --- how the reward was reached --------------------------------------------------------------------------------

def _notes(x: Explanation, run: Any) -> list[str]:
    if run is None:
        return ["no signals run in this store: `ratingloop signals` fits the rater model and records the rewards"]
    after = sum(r.status == "after the run" for r in x.ratings)
    later = [f"{after} rating(s) arrived after the run: run `ratingloop signals` again to include them"] * bool(after)
    if x.signal is None:
        return [f"signals run {run.id} has no reward for it: it was stored after the run, or unrated while the "
                "content prior was off"] + later
    s = x.signal
    counted = [r for r in x.ratings if r.status == "counted"]
    notes = [f"reward {s.reward:+.2f} (confidence {s.confidence:.2f}, n_ratings {s.n_ratings}) in signals run "
             f"{run.id}, from the {len(counted)} rating(s) of it the run counted"]
    plain = [r.reward for r in counted if r.reward is not None and r.rating["kind"] in RATING_KINDS]
    if plain:
        notes.append(f"its {len(plain)} counted thumbs/stars/scale/aspect rating(s) average {np.mean(plain):+.2f} as "
                     "given; the rater model reads each through its rater's offset and scale (raters with few "
                     "ratings are shrunk toward everyone) and weighs it against the other evidence")
    for rater in {r.rater.rater_id: r.rater for r in counted if r.rater is not None}.values():
        if abs(rater.bias) >= NOTABLE_BIAS:
            notes.append(f"{rater.rater_id} rates {'leniently' if rater.bias > 0 else 'harshly'} (bias "
                         f"{rater.bias:+.2f}): their ratings are read {'down' if rater.bias > 0 else 'up'}")
        if rater.scale < WEAK_SCALE:
            notes.append(f"{rater.rater_id}'s ratings follow quality weakly (scale {rater.scale:.2f}, reliability "
                         f"{rater.reliability:.2f}): they move the reward little")
    n_cmp = sum(r.rating["kind"] in COMPARATIVE_KINDS for r in counted)
    if n_cmp:
        notes.append(f"{n_cmp} counted comparison(s) say how it stands against the other answers to its prompt "
                     "(Thurstone: the quality difference, the raters' offsets cancelling)")
    flagged = {r.rater.rater_id: r.rater for r in x.ratings if r.rater is not None and r.rater.flagged}
    for rater in flagged.values():
        notes.append(f"left out: {rater.rater_id}'s rating(s), a flagged rater ({'; '.join(rater.reasons)})")
    n_sup = sum(r.superseded for r in x.ratings)
    if n_sup:
        notes.append(f"{n_sup} superseded rating(s): a later rating of the same rater replaced each")
    return notes + _prior_note(x, run) + later


def _prior_note(x: Explanation, run: Any) -> list[str]:
    custom = (run.config or {}).get("prior")
    if x.content_prior is None and not custom:
        return ["content prior off in this run: the reward comes from the ratings alone"
                + ("" if x.signal is None or x.signal.n_ratings else "; with none counted it is the typical answer's")]
    what = f"a content prior ({custom})" if custom else "the content prior"
    corr = (x.content_prior or {}).get("quality_corr")
    detail = (" - a model of the answer's text and length, learned from other raters' ratings"
              + (f" (its correlation with quality ~{corr:.2f})" if corr is not None else "")) if not custom else ""
    if x.signal is not None and x.signal.n_ratings == 0:
        return [f"no rating counted: the reward is {what}'s alone{detail}"]
    return [f"{what} informed it{detail}: it is the reward's starting point, which the ratings then move"]
