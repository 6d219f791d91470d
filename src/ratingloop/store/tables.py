"""Stage 1, the store: the tables of what must never be lost.

Interactions and ratings are raw and append-only (a later rating supersedes an earlier one for
training, but both rows stay); the only deletion is a user's, for privacy, which leaves a tombstone,
purges the dataset snapshots that held their data and taints the versions trained on those.
Model versions, dataset snapshots and training runs are the registry and its lineage. Schema changes
go through Alembic migrations in `migrations/`, never `create_all`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

ID = String(200)  # client ids (interactions, users, raters) are arbitrary strings up to 200 chars
Json = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use UTC-aware datetimes")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Interaction(Base):
    """One prompt and the answer a model gave, as served."""

    __tablename__ = "interactions"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    model: Mapped[str | None] = mapped_column(String(200))  # the model version that answered
    user_id: Mapped[str | None] = mapped_column(ID, index=True)  # pseudonymous end-user id
    conversation_id: Mapped[str | None] = mapped_column(ID)
    messages: Mapped[list[dict[str, Any]]] = mapped_column(Json)  # the prompt as chat messages
    response: Mapped[str] = mapped_column(Text)
    tags: Mapped[dict[str, Any]] = mapped_column(Json)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64))  # to tell a replay from a conflicting id


class Rating(Base):
    """One rating event. Raw value and its scale are kept; rewards are derived later (signals)."""

    __tablename__ = "ratings"
    __table_args__ = (Index("ix_ratings_interaction_rater", "interaction_id", "rater_id"),
                      UniqueConstraint("idempotency_key", "interaction_id"))  # keys are per interaction

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    interaction_id: Mapped[str] = mapped_column(ID, ForeignKey("interactions.id", ondelete="CASCADE"))
    rater_id: Mapped[str] = mapped_column(ID, index=True)
    source: Mapped[str] = mapped_column(String(20))  # end_user | annotator | simulated | judge
    kind: Mapped[str] = mapped_column(String(20))  # thumbs | stars | scale | aspect | comment | ...
    aspect: Mapped[str] = mapped_column(String(64))  # "overall" unless an aspect was rated
    value: Mapped[float | None] = mapped_column(Float)  # thumbs -1/1; stars/scale/aspect as given
    scale_min: Mapped[float | None] = mapped_column(Float)
    scale_max: Mapped[float | None] = mapped_column(Float)
    signal: Mapped[str | None] = mapped_column(String(64))  # implicit: copy, regenerate, ...
    text: Mapped[str | None] = mapped_column(Text)  # comment text, or a correction's better answer
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    idempotency_key: Mapped[str] = mapped_column(String(256))
    body_hash: Mapped[str] = mapped_column(String(64))  # same key + same body = replay, else conflict
    # comparisons (every answer one names is also in compared_interactions): a preference's value is +1 when
    # interaction_id's answer won, -1 when other_interaction_id's did, 0 a tie; a rank's value is None
    other_interaction_id: Mapped[str | None] = mapped_column(ID)  # preference: answer b
    strength: Mapped[float | None] = mapped_column(Float)  # preference: in (0, 1], None when not said
    ranking: Mapped[list[list[str]] | None] = mapped_column(Json)  # rank: tiers of interaction ids, best first


class ComparedInteraction(Base):
    """Every interaction a comparison (a preference or a rank) names, its own included: how the store finds
    the comparisons of an answer (a user's deletion takes them along). Written with the rating, never changed."""

    __tablename__ = "compared_interactions"

    rating_id: Mapped[str] = mapped_column(ForeignKey("ratings.id", ondelete="CASCADE"), primary_key=True)
    interaction_id: Mapped[str] = mapped_column(ID, ForeignKey("interactions.id", ondelete="CASCADE"),
                                                primary_key=True, index=True)


class Rater(Base):
    """Everyone who has rated; estimates of their bias live in derived tables keyed by run."""

    __tablename__ = "raters"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DeletedUser(Base):
    """A tombstone: data of this user created before `deleted_at` never comes back (import, build)."""

    __tablename__ = "deleted_users"

    # HMAC-SHA256 of the user id keyed by the server's secret (store.writes.user_hash); tombstones written
    # before migration 0004 hold the plain SHA-256 and are still honoured
    user_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    deleted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    interactions_deleted: Mapped[int] = mapped_column(Integer)
    ratings_deleted: Mapped[int] = mapped_column(Integer)


class DatasetSnapshot(Base):
    """A training set as built: format, content hash, counts, and the manifest naming its ratings."""

    __tablename__ = "dataset_snapshots"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    format: Mapped[str] = mapped_column(String(20))  # sft | kto | dpo | reward | weighted
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    path: Mapped[str | None] = mapped_column(Text)
    n_rows: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict[str, Any]] = mapped_column(Json)
    manifest: Mapped[dict[str, Any]] = mapped_column(Json)
    signals_run_id: Mapped[str | None] = mapped_column(ForeignKey("signals_runs.id"))  # the rewards it was built from
    # set when a user whose data it held was deleted: its files are removed and nothing trains on it again
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class TrainingRun(Base):
    """One training run: what went in (config, dataset, base, parent) and what came out."""

    __tablename__ = "training_runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    method: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20))  # running | succeeded | failed
    config: Mapped[dict[str, Any]] = mapped_column(Json)
    dataset_snapshot_id: Mapped[str | None] = mapped_column(ForeignKey("dataset_snapshots.id"))
    base_model: Mapped[str] = mapped_column(Text)
    parent_version_id: Mapped[str | None] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(Json)
    log_path: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    round_id: Mapped[str | None] = mapped_column(String(64), index=True)  # the loop round that started it, if any


class ModelVersion(Base):
    """A servable model: a base plus (usually) a LoRA adapter, with its lineage and gate status.

    At most one row is `active` (a partial unique index): none active means the base model serves. A cohort
    version (`personal_run_id`, `cohort` set: trained for one cohort of a personal run) never becomes active; it
    serves that cohort's users while its status is `cohort`, at most one per cohort (a second partial index)."""

    __tablename__ = "model_versions"
    __table_args__ = (Index("uq_model_versions_one_active", "status", unique=True,
                            sqlite_where=text("status = 'active'"), postgresql_where=text("status = 'active'")),
                      Index("uq_model_versions_one_per_cohort", "personal_run_id", "cohort", unique=True,
                            sqlite_where=text("status = 'cohort'"), postgresql_where=text("status = 'cohort'")))

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    base_model: Mapped[str] = mapped_column(Text)
    adapter_path: Mapped[str | None] = mapped_column(Text)
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"))
    training_run_id: Mapped[str | None] = mapped_column(ForeignKey("training_runs.id"))
    dataset_snapshot_id: Mapped[str | None] = mapped_column(ForeignKey("dataset_snapshots.id"))
    metrics: Mapped[dict[str, Any]] = mapped_column(Json)
    status: Mapped[str] = mapped_column(String(20), index=True)  # candidate|active|rejected|retired
    traffic_share: Mapped[float] = mapped_column(Float, default=0.0)
    # set when it (or an ancestor) was trained on a snapshot since purged: weights cannot forget a user
    tainted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # a cohort version: the personal run whose cohort it was trained for, and the cohort (None: a global version)
    personal_run_id: Mapped[str | None] = mapped_column(ForeignKey("personal_runs.id"))
    cohort: Mapped[int | None] = mapped_column(Integer)


class VersionEvent(Base):
    """The registry's history: every promote, rollback and rejection, with who did it and why."""

    __tablename__ = "version_events"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # ULID: sorts by time
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    action: Mapped[str] = mapped_column(String(20))  # promote | rollback | reject
    version_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"))  # what became active (None: base)
    previous_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"))  # what was active before
    actor: Mapped[str] = mapped_column(String(200))  # "gate", "loop", or the user who ran the command
    reason: Mapped[str | None] = mapped_column(Text)
    evaluation_id: Mapped[str | None] = mapped_column(ForeignKey("evaluations.id"))


class Evaluation(Base):
    """One `ratingloop eval`: candidate vs the version it was compared with, the full report and the verdict."""

    __tablename__ = "evaluations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    candidate_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id"), index=True)
    against_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"))  # None: the base model
    verdict: Mapped[str] = mapped_column(String(20))  # promote | reject
    report: Mapped[dict[str, Any]] = mapped_column(Json)  # what `eval --json` prints


class SignalsRun(Base):
    """One fit of the rater model: its config and summary. Its rows (below) are what later stages read."""

    __tablename__ = "signals_runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # ULID: the newest sorts last
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    config: Mapped[dict[str, Any]] = mapped_column(Json)
    summary: Mapped[dict[str, Any]] = mapped_column(Json)  # counts, the fit's mu_a/mu_b, the content prior
    last_rating_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # newest rating it saw (the loop's trigger)
    n_ratings: Mapped[int] = mapped_column(Integer)  # ratings it read
    # None: everyone's ratings. Else whose (a cohort's, for its adapter): "the newest run" never means a scoped one
    scope: Mapped[str | None] = mapped_column(String(200))


class SignalsRating(Base):
    """A rating that counted in a signals run: the latest per (rater, interaction, aspect, kind), flagged
    raters left out. The one definition of "the ratings that count" for everything downstream."""

    __tablename__ = "signals_ratings"

    run_id: Mapped[str] = mapped_column(ForeignKey("signals_runs.id", ondelete="CASCADE"), primary_key=True)
    rating_id: Mapped[str] = mapped_column(ForeignKey("ratings.id", ondelete="CASCADE"), primary_key=True, index=True)
    interaction_id: Mapped[str] = mapped_column(ID, ForeignKey("interactions.id", ondelete="CASCADE"), index=True)


class SignalsInteraction(Base):
    """Per interaction and signals run: the debiased reward in [-1, 1], its confidence, aspects."""

    __tablename__ = "signals_interactions"

    run_id: Mapped[str] = mapped_column(ForeignKey("signals_runs.id", ondelete="CASCADE"), primary_key=True)
    interaction_id: Mapped[str] = mapped_column(ID, ForeignKey("interactions.id", ondelete="CASCADE"),
                                                primary_key=True, index=True)
    reward: Mapped[float] = mapped_column(Float)
    confidence: Mapped[float] = mapped_column(Float)
    n_ratings: Mapped[int] = mapped_column(Integer)  # 0: unrated, the content prior's reward only
    aspects: Mapped[dict[str, Any]] = mapped_column(Json)


class SignalsRater(Base):
    """Per rater and signals run: the rater model's estimates and troll flags (what `ratingloop raters` shows)."""

    __tablename__ = "signals_raters"

    run_id: Mapped[str] = mapped_column(ForeignKey("signals_runs.id", ondelete="CASCADE"), primary_key=True)
    rater_id: Mapped[str] = mapped_column(ID, primary_key=True)
    n: Mapped[int] = mapped_column(Integer)
    bias: Mapped[float] = mapped_column(Float)
    scale: Mapped[float] = mapped_column(Float)
    reliability: Mapped[float] = mapped_column(Float)
    flagged: Mapped[bool] = mapped_column(Boolean)
    reasons: Mapped[list[str]] = mapped_column(Json)


class PersonalRun(Base):
    """One fit of per-user preference weights and cohorts (ratingloop.personal) from one signals run."""

    __tablename__ = "personal_runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # ULID: the newest sorts last
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    signals_run_id: Mapped[str] = mapped_column(ForeignKey("signals_runs.id"), index=True)  # the rewards it read
    config: Mapped[dict[str, Any]] = mapped_column(Json)  # the PersonalConfig it ran with
    k: Mapped[int] = mapped_column(Integer)  # cohorts chosen (0: nobody could be placed)
    heldout: Mapped[list[dict[str, Any]]] = mapped_column(Json)  # per K tried: held-out log-likelihood of ratings
    summary: Mapped[dict[str, Any]] = mapped_column(Json)  # counts, features, population weights, notes


class PersonalUser(Base):
    """Per end user and personal run: what drives their ratings, and their cohort. Deleted with the user."""

    __tablename__ = "personal_users"

    run_id: Mapped[str] = mapped_column(ForeignKey("personal_runs.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[str] = mapped_column(ID, primary_key=True, index=True)  # the rater id of their ratings
    weights: Mapped[dict[str, Any]] = mapped_column(Json)  # feature -> weight (sds of their ratings per unit)
    mean_rating: Mapped[float] = mapped_column(Float)  # in [-1, 1]: leniency, kept apart from taste
    rating_sd: Mapped[float] = mapped_column(Float)  # the sd of their ratings (0: all one value)
    n_ratings: Mapped[int] = mapped_column(Integer)
    cohort: Mapped[int | None] = mapped_column(Integer)  # None: not placed (too few ratings, or all one value)
    status: Mapped[str] = mapped_column(String(20))  # placed | few | constant


class PersonalCohort(Base):
    """Per cohort and personal run: its size, its users' mean weights and what sets it apart."""

    __tablename__ = "personal_cohorts"

    run_id: Mapped[str] = mapped_column(ForeignKey("personal_runs.id", ondelete="CASCADE"), primary_key=True)
    cohort: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)  # 0 is the largest
    n_users: Mapped[int] = mapped_column(Integer)
    weights: Mapped[dict[str, Any]] = mapped_column(Json)
    description: Mapped[str] = mapped_column(Text)


class LoopRound(Base):
    """One round of `ratingloop loop`: why it started, how it ended. Its id is also the durable engine's
    workflow id, so a round killed mid-way is resumed under the same id on the next start."""

    __tablename__ = "loop_rounds"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # ULID: the newest sorts last
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(20), index=True)  # running | succeeded | failed
    outcome: Mapped[str | None] = mapped_column(String(20))  # promoted | rejected | failed
    trigger: Mapped[str] = mapped_column(String(40))  # once | new ratings | every
    ratings_until: Mapped[datetime | None] = mapped_column(UTCDateTime)  # newest rating when it started
    ratings_total: Mapped[int] = mapped_column(Integer)  # usable ratings in the store when it started
    new_ratings: Mapped[int] = mapped_column(Integer)  # usable ratings since the round before
    version_id: Mapped[str | None] = mapped_column(String(64))  # the candidate it trained
    spec: Mapped[dict[str, Any]] = mapped_column(Json)  # method, base, config file, overrides
    error: Mapped[str | None] = mapped_column(Text)


class LoopStep(Base):
    """One step of a round (train, label, eval, gate): status, timing and what it produced."""

    __tablename__ = "loop_steps"

    round_id: Mapped[str] = mapped_column(ForeignKey("loop_rounds.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(20), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)  # order within the round
    status: Mapped[str] = mapped_column(String(20))  # running | succeeded | failed | skipped
    attempts: Mapped[int] = mapped_column(Integer)  # >1: a crash interrupted it and it ran again
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    detail: Mapped[dict[str, Any]] = mapped_column(Json)
    error: Mapped[str | None] = mapped_column(Text)


# The tables as Core objects, for the write path's bulk statements.
interactions: Table = Interaction.__table__  # type: ignore[assignment]
ratings: Table = Rating.__table__  # type: ignore[assignment]
compared_interactions: Table = ComparedInteraction.__table__  # type: ignore[assignment]
raters: Table = Rater.__table__  # type: ignore[assignment]
deleted_users: Table = DeletedUser.__table__  # type: ignore[assignment]
model_versions: Table = ModelVersion.__table__  # type: ignore[assignment]
version_events: Table = VersionEvent.__table__  # type: ignore[assignment]
evaluations: Table = Evaluation.__table__  # type: ignore[assignment]
signals_runs: Table = SignalsRun.__table__  # type: ignore[assignment]
signals_ratings: Table = SignalsRating.__table__  # type: ignore[assignment]
signals_interactions: Table = SignalsInteraction.__table__  # type: ignore[assignment]
signals_raters: Table = SignalsRater.__table__  # type: ignore[assignment]
personal_runs: Table = PersonalRun.__table__  # type: ignore[assignment]
personal_users: Table = PersonalUser.__table__  # type: ignore[assignment]
personal_cohorts: Table = PersonalCohort.__table__  # type: ignore[assignment]
loop_rounds: Table = LoopRound.__table__  # type: ignore[assignment]
loop_steps: Table = LoopStep.__table__  # type: ignore[assignment]
