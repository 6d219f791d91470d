"""Privacy: `forget_user` - an end user deleted from the store and from everything derived from it. The one
place that knows which stages may hold a user's data; each stage's purge step does its own part.

    footprint = forget_user(engine, "u1", user_key=settings.feedback_secret(), data_dir=settings.resolved_data_dir)
    footprint.interactions, footprint.ratings       # rows removed

In one transaction (`store.delete_user`, which also leaves the tombstone and, on SQLite, no copy of the
deleted rows in the database file or its WAL):
    store     their interactions, every rating on them, every rating they gave, their rater row
    signals   their rater estimates in every signals run (rewards and counted ratings go by cascade)
    personal  their preference weights (and cohort) in every personal run
    dataset   snapshots whose rows used a removed rating marked purged; their id out of other manifests
    registry  versions trained on a purged snapshot, and versions trained on top of those, marked tainted
    evaluate  the examples with their prompts out of evaluation reports and the loop's eval steps
Then, after the commit:
    models    the vectors of their texts out of the embedding caches under the data directory
    dataset   purged snapshots' files removed (a purge notice in their place); manifest.json files scrubbed
The file step is safe to repeat: if it fails, deleting the same user again finishes it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import Engine

from ratingloop import dataset, evaluate, personal, signals
from ratingloop.models.embed import content_text, forget_texts, prompt_text
from ratingloop.models.registry import taint_versions
from ratingloop.store import Footprint, delete_user

log = logging.getLogger(__name__)


def forget_user(engine: Engine, user_id: str, *, user_key: bytes, data_dir: Path) -> Footprint:
    """Delete `user_id` everywhere (see the module's notes); `user_key` is the server's secret, which the
    tombstone is keyed with, and `data_dir` holds the embedding caches."""
    footprint = delete_user(engine, user_id, user_key=user_key, purges=[
        signals.purge_user, personal.purge_user, dataset.purge_user, taint_versions, evaluate.purge_user])
    vectors = forget_texts(Path(data_dir), _embedded_texts(footprint))
    dataset.remove_purged_files(engine, footprint)
    log.info("forgot a user: %d interactions, %d ratings, %d cached vectors", footprint.interactions,
             footprint.ratings, vectors)
    return footprint


def _embedded_texts(footprint: Footprint) -> set[str]:
    """Every string of theirs that may have been embedded: answers, corrections and comments, prompts as
    the encoder sees them (the last user turn) and each message, and each as PII scrubbing left it."""
    texts = set(footprint.texts)
    for messages in footprint.prompts:
        texts.add(prompt_text(messages))
        texts.update(content_text(m.get("content")) for m in messages)
    return texts | {dataset.scrub(t) for t in texts}
