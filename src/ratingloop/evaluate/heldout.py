"""Stage 6, evaluate: the held-out prompts - distinct prompts in the store that no training set of the
versions being compared (nor of the reward model judging them) contains.

Reads `interactions`, `dataset_snapshots` (each manifest's `prompt_keys`, written by the dataset
stage) and `model_versions` (lineage: a version was trained on its ancestors' sets too). Writes nothing.

A prompt is the whole conversation before the answer, keyed as the dataset stage keys it
(`ratingloop.dataset.prompt_key`). The eval split of a training set is held out by construction,
so only `prompt_keys["train"]` is excluded. A snapshot written before manifests carried
`prompt_keys` falls back to the prompts of every rating it names (both splits: the safe side).
Order is deterministic: prompts with rated answers first (the human judge needs them), then by key.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, select

from ratingloop.store import tables as t

log = logging.getLogger(__name__)

CHUNK = 500  # ids per IN (...) query; SQLite caps bound parameters
Message = dict[str, str]


@dataclass(frozen=True)
class RatedAnswer:
    interaction_id: str
    response: str
    reward: float  # the signals run's debiased reward, [-1, 1]
    aspects: dict[str, float]


@dataclass
class HeldOutPrompt:
    key: str
    messages: list[Message]
    interaction_ids: list[str] = field(default_factory=list)
    grader: str | None = None  # tags["simulated"]["grader"] of its interactions, if any
    rated: list[RatedAnswer] = field(default_factory=list)
    users: set[str] = field(default_factory=set)  # who asked it (the interactions' user ids)


def normalise(messages: list[dict[str, Any]] | None) -> list[Message]:
    """The prompt exactly as the dataset stage writes it (so its key matches the manifests')."""
    return [{"role": str(m["role"]), "content": str(m.get("content") or "")} for m in messages or []]


def training_keys(engine: Engine, version_id: str | None, lineage: bool = True) -> tuple[set[str], list[str]]:
    """The train-split prompt keys of `version_id` and its ancestors (only its own with `lineage` false), and
    warnings for sets that cannot be read (a version registered without a dataset: its training prompts are
    unknown)."""
    keys: set[str] = set()
    warnings: list[str] = []
    seen: set[str] = set()
    v, s = t.model_versions.c, t.DatasetSnapshot.__table__.c
    with engine.connect() as conn:
        while version_id is not None and version_id not in seen:
            seen.add(version_id)
            row = conn.execute(select(v.parent_id, v.dataset_snapshot_id).where(v.id == version_id)).first()
            if row is None:
                break
            manifest = None
            if row.dataset_snapshot_id is not None:
                manifest = conn.execute(select(s.manifest).where(s.id == row.dataset_snapshot_id)).scalar()
            if manifest is None:
                warnings.append(f"version {version_id} records no dataset snapshot: its training prompts are unknown "
                                "and cannot be held out")
            else:
                keys |= _manifest_keys(conn, manifest, row.dataset_snapshot_id, warnings)
            version_id = row.parent_id if lineage else None
    return keys, warnings


def _manifest_keys(conn: Any, manifest: dict[str, Any], snapshot_id: str, warnings: list[str]) -> set[str]:
    from ratingloop.dataset import prompt_key

    listed = (manifest.get("prompt_keys") or {}).get("train")
    if isinstance(listed, list):
        return set(listed)
    rating_ids = list(manifest.get("rating_ids") or [])
    warnings.append(f"dataset snapshot {snapshot_id} lists no prompt_keys (built before they were recorded); "
                    f"held out every prompt of its {len(rating_ids)} ratings, eval split included")
    r, i = t.ratings.c, t.interactions.c
    keys = set()
    for k in range(0, len(rating_ids), CHUNK):
        query = (select(i.messages).join(t.ratings, r.interaction_id == i.id)
                 .where(r.id.in_(rating_ids[k:k + CHUNK])).distinct())
        keys |= {prompt_key(normalise(m)) for m in conn.execute(query).scalars()}
    return keys


def held_out_prompts(engine: Engine, exclude: set[str], rewards: dict[str, tuple[float, dict[str, float]]],
                     users: frozenset[str] | None = None) -> list[HeldOutPrompt]:
    """Every distinct prompt in the store whose key is not in `exclude`, in the module's order.

    `rewards`: interaction id -> (reward, aspects) of the rated interactions (a signals run).
    `users`: only what these users asked (a cohort's prompts and their own rated answers).
    A prompt must end with a user (or system) turn: a trailing assistant turn leaves nothing to answer.
    """
    from ratingloop.dataset import prompt_key

    i = t.interactions.c
    prompts: dict[str, HeldOutPrompt] = {}
    with engine.connect() as conn:
        rows = conn.execute(select(i.id, i.messages, i.response, i.tags, i.user_id).order_by(i.created_at, i.id))
        for row in rows:
            if users is not None and row.user_id not in users:
                continue
            messages = normalise(row.messages)
            if not messages or messages[-1]["role"] == "assistant":
                continue
            key = prompt_key(messages)
            if key in exclude:
                continue
            p = prompts.setdefault(key, HeldOutPrompt(key, messages))
            p.interaction_ids.append(row.id)
            if row.user_id is not None:
                p.users.add(row.user_id)
            sim = (row.tags or {}).get("simulated")
            if p.grader is None and isinstance(sim, dict) and isinstance(sim.get("grader"), str):
                p.grader = sim["grader"]
            if row.id in rewards and (row.response or "").strip():
                reward, aspects = rewards[row.id]
                p.rated.append(RatedAnswer(row.id, row.response, reward, aspects))
    return sorted(prompts.values(), key=lambda p: (not p.rated, p.key))


def count_by(prompts: list[HeldOutPrompt]) -> dict[str, int]:
    """Counts for the report: prompts, rated answers, simulated prompts."""
    graders: dict[str, int] = defaultdict(int)
    for p in prompts:
        if p.grader:
            graders[p.grader] += 1
    return {"prompts": len(prompts), "rated_answers": sum(len(p.rated) for p in prompts), **{
        f"grader:{k}": n for k, n in sorted(graders.items())}}
