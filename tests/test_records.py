"""Validation and normalisation of ratings and interactions (store/records.py): pure units, no database."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from ratingloop.errors import FieldError
from ratingloop.store.records import (
    CleanInteraction,
    CleanRating,
    InteractionIn,
    Limits,
    RatingIn,
    clean_interaction,
    clean_rating,
    pydantic_errors,
)

LIMITS = Limits()
MSGS = [{"role": "user", "content": "When is my refund due?"}]


def rate(limits: Limits = LIMITS, **fields: Any) -> tuple[CleanRating | None, list[FieldError]]:
    """One rating through both stages (pydantic types, then the per-kind rules), as the API does."""
    try:
        raw = RatingIn.model_validate(fields)
    except ValidationError as e:
        return None, pydantic_errors(e)
    return clean_rating(raw, limits, interaction_id=fields.get("interaction_id", "i-1"))


def interaction(limits: Limits = LIMITS, **fields: Any) -> tuple[CleanInteraction | None, list[FieldError]]:
    body = {"messages": MSGS, "response": "On the 3rd.", **fields}
    try:
        raw = InteractionIn.model_validate(body)
    except ValidationError as e:
        return None, pydantic_errors(e)
    return clean_interaction(raw, limits, lambda content_hash: "i-" + content_hash[:26])


def _nested(depth: int) -> Any:
    return {"a": _nested(depth - 1)} if depth else 1


def only_error(errors: list[FieldError]) -> FieldError:
    assert len(errors) == 1, errors
    return errors[0]


# -- accepted values and how they are normalised ------------------------------------------------------

@pytest.mark.parametrize(
    "fields, value, scale, aspect",
    [
        ({"kind": "thumbs", "value": 1}, 1.0, (-1.0, 1.0), "overall"),
        ({"kind": "thumbs", "value": -1}, -1.0, (-1.0, 1.0), "overall"),
        ({"kind": "thumbs", "value": 1.0}, 1.0, (-1.0, 1.0), "overall"),
        ({"kind": "thumbs", "value": True}, 1.0, (-1.0, 1.0), "overall"),
        ({"kind": "thumbs", "value": False}, -1.0, (-1.0, 1.0), "overall"),
        ({"kind": "thumbs", "value": "up"}, 1.0, (-1.0, 1.0), "overall"),
        ({"kind": "thumbs", "value": "down"}, -1.0, (-1.0, 1.0), "overall"),
        ({"kind": "thumbs", "value": "UP"}, 1.0, (-1.0, 1.0), "overall"),
        ({"kind": "thumbs", "value": 1, "scale": [-1, 1]}, 1.0, (-1.0, 1.0), "overall"),
        ({"kind": "stars", "value": 4}, 4.0, (1.0, 5.0), "overall"),
        ({"kind": "stars", "value": 1}, 1.0, (1.0, 5.0), "overall"),
        ({"kind": "stars", "value": 5}, 5.0, (1.0, 5.0), "overall"),
        ({"kind": "stars", "value": 3.5}, 3.5, (1.0, 5.0), "overall"),
        ({"kind": "stars", "value": 9, "scale": [0, 10]}, 9.0, (0.0, 10.0), "overall"),
        ({"kind": "stars", "value": 2, "aspect": "accuracy"}, 2.0, (1.0, 5.0), "accuracy"),
        ({"kind": "scale", "value": 6, "scale": [1, 7]}, 6.0, (1.0, 7.0), "overall"),
        ({"kind": "scale", "value": -0.5, "scale": [-1, 1]}, -0.5, (-1.0, 1.0), "overall"),
        ({"kind": "aspect", "aspect": "accuracy", "value": 2}, 2.0, (1.0, 5.0), "accuracy"),
        ({"kind": "aspect", "aspect": "relevance", "value": 7, "scale": [1, 7]}, 7.0, (1.0, 7.0), "relevance"),
        ({"kind": "comment", "text": "wrong refund date"}, None, None, "overall"),
        ({"kind": "correction", "text": "On the 5th."}, None, None, "overall"),
        ({"kind": "implicit", "signal": "copy"}, None, None, "overall"),
        ({"kind": "implicit", "signal": "regenerate", "value": 1}, 1.0, None, "overall"),
    ],
)
def test_valid_ratings_are_normalised(fields: dict[str, Any], value: float | None,
                                      scale: tuple[float, float] | None, aspect: str) -> None:
    rating, errors = rate(**fields)
    assert errors == []
    assert rating is not None
    assert rating.kind == fields["kind"]
    assert rating.value == value
    assert (rating.scale_min, rating.scale_max) == (scale or (None, None))
    assert rating.aspect == aspect
    assert rating.interaction_id == "i-1"


def test_rating_carries_its_own_fields_through() -> None:
    rating, errors = rate(kind="comment", text="too long", rater_id="u7", source="annotator",
                          idempotency_key="k-1", id="r-1", created_at="2026-11-01T12:00:00+02:00",
                          interaction_id="c-9")
    assert errors == [] and rating is not None
    assert (rating.rater_id, rating.source, rating.idempotency_key, rating.id) == ("u7", "annotator", "k-1", "r-1")
    assert rating.interaction_id == "c-9"
    assert rating.text == "too long"
    assert rating.created_at == datetime(2026, 11, 1, 10, 0, tzinfo=timezone.utc)  # stored in UTC


def test_naive_timestamp_is_taken_as_utc() -> None:
    rating, _ = rate(kind="thumbs", value=1, created_at="2026-11-01T10:00:00")
    assert rating is not None and rating.created_at == datetime(2026, 11, 1, 10, 0, tzinfo=timezone.utc)


# -- rejected values: the error names the field -------------------------------------------------------

@pytest.mark.parametrize(
    "fields, field, reason_part",
    [
        ({"kind": "thumbs", "value": 0}, "value", "thumbs must be 1 or -1"),
        ({"kind": "thumbs", "value": 2}, "value", "thumbs must be 1 or -1"),
        ({"kind": "thumbs", "value": 0.5}, "value", "thumbs must be 1 or -1"),
        ({"kind": "thumbs", "value": "maybe"}, "value", "thumbs must be 1 or -1"),
        ({"kind": "thumbs"}, "value", "thumbs must be 1 or -1"),
        ({"kind": "thumbs", "value": 1, "scale": [1, 5]}, "scale", "thumbs have no scale"),
        ({"kind": "stars", "value": 6}, "value", "outside the scale [1, 5]"),
        ({"kind": "stars", "value": 0}, "value", "outside the scale [1, 5]"),
        ({"kind": "stars", "value": 0.5}, "value", "outside the scale [1, 5]"),
        ({"kind": "stars", "value": 11, "scale": [0, 10]}, "value", "outside the scale [0, 10]"),
        ({"kind": "stars"}, "value", "needs a finite number"),
        ({"kind": "stars", "value": "4"}, "value", "needs a finite number"),
        ({"kind": "stars", "value": True}, "value", "needs a finite number"),
        ({"kind": "stars", "value": float("nan")}, "value", "finite number"),
        ({"kind": "stars", "value": float("inf")}, "value", "finite number"),
        ({"kind": "stars", "value": 3, "scale": [5, 1]}, "scale", "min < max"),
        ({"kind": "stars", "value": 3, "scale": [3, 3]}, "scale", "min < max"),
        ({"kind": "scale", "value": 3}, "scale", "required for kind 'scale'"),
        ({"kind": "scale", "value": 8, "scale": [1, 7]}, "value", "outside the scale [1, 7]"),
        ({"kind": "aspect", "value": 3}, "aspect", "required for kind 'aspect'"),
        ({"kind": "aspect", "aspect": "overall", "value": 3}, "aspect", "required for kind 'aspect'"),
        ({"kind": "aspect", "aspect": "tone", "value": 3}, "aspect", "unknown aspect 'tone'"),
        ({"kind": "stars", "aspect": "tone", "value": 3}, "aspect", "unknown aspect 'tone'"),
        ({"kind": "aspect", "aspect": "accuracy", "value": 6}, "value", "outside the scale [1, 5]"),
        ({"kind": "comment"}, "text", "required for kind 'comment'"),
        ({"kind": "comment", "text": "   "}, "text", "required for kind 'comment'"),
        ({"kind": "comment", "text": "fine", "value": 1}, "value", "carries text, not a value"),
        ({"kind": "correction"}, "text", "required for kind 'correction'"),
        ({"kind": "comment", "text": "x" * 10_001}, "text", "10001 characters; the limit is 10000"),
        ({"kind": "correction", "text": "y" * 20_000}, "text", "the limit is 10000"),
        ({"kind": "implicit"}, "signal", "required for kind 'implicit'"),
        ({"kind": "implicit", "signal": "like"}, "signal", "unknown signal 'like'"),
        ({"kind": "thumbs", "value": 1, "signal": "copy"}, "signal", "only implicit ratings carry a signal"),
        ({"kind": "maybe", "value": 1}, "kind", "Input should be"),
        ({"value": 1}, "kind", "Field required"),
        ({"kind": "thumbs", "value": 1, "source": "robot"}, "source", "Input should be"),
        ({"kind": "thumbs", "value": 1, "colour": "red"}, "colour", "unknown field"),
        ({"kind": "thumbs", "value": 1, "rater_id": ""}, "rater_id", "at least 1 character"),
        ({"kind": "thumbs", "value": [1]}, "value", "Input should be"),
        ({"kind": "thumbs", "value": 1, "created_at": "yesterday"}, "created_at", "datetime"),
    ],
)
def test_invalid_ratings_name_the_field(fields: dict[str, Any], field: str, reason_part: str) -> None:
    rating, errors = rate(**fields)
    assert rating is None
    error = only_error(errors)
    assert error.field == field
    assert reason_part in error.reason
    assert error.status == 422


def test_comment_at_exactly_the_limit_is_accepted() -> None:
    rating, errors = rate(kind="comment", text="x" * 10_000)
    assert errors == [] and rating is not None and len(rating.text or "") == 10_000


def test_text_limit_applies_to_any_kind_with_text() -> None:
    _, errors = rate(kind="thumbs", value=1, text="z" * 10_001)
    assert [e.field for e in errors] == ["text"]


def test_several_problems_are_all_reported() -> None:
    _, errors = rate(kind="aspect", aspect="tone", value=9)
    assert sorted(e.field for e in errors) == ["aspect", "value"]


def test_rating_without_an_interaction_is_rejected() -> None:
    raw = RatingIn(kind="thumbs", value=1)
    rating, errors = clean_rating(raw, LIMITS)
    assert rating is None and [e.field for e in errors] == ["interaction_id"]


def test_path_prefixes_the_field() -> None:
    _, errors = clean_rating(RatingIn(kind="stars", value=7), LIMITS, "items[3]", interaction_id="i-1")
    assert [e.field for e in errors] == ["items[3].value"]


# -- configured limits ---------------------------------------------------------------------------------

def test_aspects_come_from_the_configured_set() -> None:
    limits = Limits(aspects=("overall", "tone", "brevity"))
    rating, errors = rate(limits, kind="aspect", aspect="tone", value=4)
    assert errors == [] and rating is not None and rating.aspect == "tone"
    _, errors = rate(limits, kind="aspect", aspect="accuracy", value=4)  # a default aspect, not configured here
    error = only_error(errors)
    assert error.field == "aspect" and "unknown aspect 'accuracy'" in error.reason and "tone" in error.reason


def test_implicit_signals_come_from_the_configured_set() -> None:
    limits = Limits(implicit_signals=("thumbs_hover",))
    assert rate(limits, kind="implicit", signal="thumbs_hover")[1] == []
    assert [e.field for e in rate(limits, kind="implicit", signal="copy")[1]] == ["signal"]


def test_text_limit_is_configurable() -> None:
    limits = Limits(max_text_chars=10)
    assert rate(limits, kind="comment", text="x" * 10)[1] == []
    error = only_error(rate(limits, kind="comment", text="x" * 11)[1])
    assert error.field == "text" and "the limit is 10" in error.reason


@pytest.mark.parametrize("signal", Limits().implicit_signals)
def test_every_default_signal_is_accepted(signal: str) -> None:
    rating, errors = rate(kind="implicit", signal=signal)
    assert errors == [] and rating is not None and rating.signal == signal


@pytest.mark.parametrize("aspect", Limits().aspects[1:])
def test_every_default_aspect_is_accepted(aspect: str) -> None:
    rating, errors = rate(kind="aspect", aspect=aspect, value=3)
    assert errors == [] and rating is not None and rating.aspect == aspect


# -- interactions --------------------------------------------------------------------------------------

def test_interaction_is_normalised_with_its_ratings() -> None:
    inter, errors = interaction(
        id="c-1", user_id="u1", model="base", created_at="2026-11-01T10:00:00Z", tags={"area": "billing"},
        ratings=[{"rater_id": "u1", "kind": "thumbs", "value": 1},
                 {"rater_id": "u7", "kind": "stars", "value": 4, "scale": [1, 5]},
                 {"rater_id": "u7", "kind": "aspect", "aspect": "accuracy", "value": 2, "scale": [1, 5]},
                 {"rater_id": "u1", "kind": "comment", "text": "wrong refund date"}],
    )
    assert errors == [] and inter is not None
    assert inter.id == "c-1" and inter.user_id == "u1" and inter.model == "base"
    assert inter.created_at == datetime(2026, 11, 1, 10, 0, tzinfo=timezone.utc)
    assert inter.messages == MSGS and inter.response == "On the 3rd."
    assert [(r.kind, r.value, r.interaction_id) for r in inter.ratings] == [
        ("thumbs", 1.0, "c-1"), ("stars", 4.0, "c-1"), ("aspect", 2.0, "c-1"), ("comment", None, "c-1")]
    assert [r.path for r in inter.ratings] == [f"ratings[{i}]" for i in range(4)]


def test_unknown_top_level_fields_are_kept_in_tags() -> None:
    inter, errors = interaction(tags={"area": "billing"}, product="chat", experiment={"arm": "b"})
    assert errors == [] and inter is not None
    assert inter.tags == {"area": "billing", "product": "chat", "experiment": {"arm": "b"}}


def test_explicit_tags_win_over_a_same_named_unknown_field() -> None:
    inter, _ = interaction(tags={"area": "billing"}, area="shipping")
    assert inter is not None and inter.tags == {"area": "billing"}


def test_interaction_without_id_gets_a_content_derived_one() -> None:
    a, _ = interaction(user_id="u1")
    b, _ = interaction(user_id="u1")
    c, _ = interaction(user_id="u2")
    assert a is not None and b is not None and c is not None
    assert a.id == b.id and a.content_hash == b.content_hash
    assert a.id != c.id and a.content_hash != c.content_hash


def test_content_hash_ignores_ratings_and_id_but_not_content() -> None:
    a, _ = interaction(id="x", ratings=[{"kind": "thumbs", "value": 1}])
    b, _ = interaction(id="y")
    c, _ = interaction(id="x", response="On the 4th.")
    assert a is not None and b is not None and c is not None
    assert a.content_hash == b.content_hash != c.content_hash


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"ratings": [{"kind": "thumbs", "value": 1}, {"kind": "stars", "value": 9}]}, "ratings[1].value"),
        ({"ratings": [{"kind": "thumbs", "value": 1}, {"kind": "stars", "value": "x"}]}, "ratings[1].value"),
        ({"ratings": [{"kind": "thumbs", "value": 1}, {"kind": "stars", "value": 3, "bogus": 1}]},
         "ratings[1].bogus"),
        ({"ratings": [{"kind": "comment"}]}, "ratings[0].text"),
        ({"ratings": [{"kind": "thumbs", "value": 1}, {"kind": "aspect", "value": 3}]}, "ratings[1].aspect"),
        ({"ratings": [{"kind": "nope"}]}, "ratings[0].kind"),
        ({"ratings": [{"kind": "implicit", "signal": "wink"}]}, "ratings[0].signal"),
        ({"ratings": [{"kind": "comment", "text": "w" * 10_001}]}, "ratings[0].text"),
        ({"id": "a", "ratings": [{"interaction_id": "b", "kind": "thumbs", "value": 1}]}, "ratings[0].interaction_id"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": []}, "messages"),
        ({"response": None}, "response"),
        ({"latency_ms": -1}, "latency_ms"),
        ({"prompt_tokens": -3}, "prompt_tokens"),
        ({"tags": "billing"}, "tags"),
        ({"id": ""}, "id"),
        ({"user_id": "u" * 201}, "user_id"),
    ],
)
def test_invalid_interactions_name_the_nested_field(fields: dict[str, Any], field: str) -> None:
    inter, errors = interaction(**fields)
    assert inter is None
    assert [e.field for e in errors] == [field]


def test_missing_required_interaction_fields_are_named() -> None:
    try:
        InteractionIn.model_validate({"ratings": []})
    except ValidationError as e:
        fields = sorted(fe.field for fe in pydantic_errors(e))
    assert fields == ["messages", "response"]


def test_one_bad_rating_rejects_the_whole_interaction_and_names_each_problem() -> None:
    inter, errors = interaction(ratings=[{"kind": "stars", "value": 0}, {"kind": "thumbs", "value": 1},
                                         {"kind": "implicit"}])
    assert inter is None
    assert [e.field for e in errors] == ["ratings[0].value", "ratings[2].signal"]


def test_error_nesting_helper() -> None:
    assert FieldError("value", "bad").within("items[2]").field == "items[2].value"
    assert FieldError("[0]", "bad").within("items").field == "items[0]"


# -- "accepted" means storable and exportable on both databases (issue 10, class 1) ----------------------------

@pytest.mark.parametrize(
    "fields, field, reason_part",
    [
        ({"kind": "implicit", "signal": "copy", "value": 1e20}, "value", "within ±1e+12"),
        ({"kind": "implicit", "signal": "copy", "value": 2**70}, "value", "within ±1e+12"),
        ({"kind": "implicit", "signal": "copy", "value": -(10**400)}, "value", "within ±1e+12"),
        ({"kind": "scale", "value": 2, "scale": [1, 1e20]}, "scale", "beyond the limit"),
        ({"kind": "comment", "text": "fine\x00then"}, "text", "NUL character"),
        ({"kind": "comment", "text": "half \ud800 a pair"}, "text", "lone surrogate"),
        ({"kind": "thumbs", "value": 1, "rater_id": "u\x001"}, "rater_id", "NUL character"),
        ({"kind": "thumbs", "value": 1, "idempotency_key": "k\x00"}, "idempotency_key", "NUL character"),
        ({"kind": "thumbs", "value": 1, "idempotency_key": "k\n2"}, "idempotency_key", "control character"),
        ({"kind": "thumbs", "value": "up\x00"}, "value", "NUL character"),
        ({"kind": "thumbs", "value": 1, "created_at": "9999-12-31T23:59:59-05:00"}, "created_at", "between 1900"),
        ({"kind": "thumbs", "value": 1, "created_at": "0001-01-01T00:00:00+05:00"}, "created_at", "between 1900"),
    ],
)
def test_unstorable_ratings_are_refused_by_name(fields: dict[str, Any], field: str, reason_part: str) -> None:
    rating, errors = rate(**fields)
    assert rating is None
    error = only_error(errors)
    assert (error.field, error.status) == (field, 422)
    assert reason_part in error.reason


@pytest.mark.parametrize(
    "fields, field, reason_part",
    [
        ({"tags": {"n": 2**70}}, "tags.n", "exceeds 64 bits"),
        ({"tags": {"x": [1, float("nan")]}}, "tags.x[1]", "not a finite number"),
        ({"tags": {"x": {"y": float("inf")}}}, "tags.x.y", "not a finite number"),
        ({"tags": {"note": "a\x00b"}}, "tags.note", "NUL character"),
        ({"tags": {"k\x00": 1}}, "tags", "NUL character"),
        ({"product": "chat\x00"}, "product", "NUL character"),
        ({"response": "ok\x00"}, "response", "NUL character"),
        ({"messages": [{"role": "user", "content": "hi\x00"}]}, "messages[0].content", "NUL character"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]},
         "messages[0].content[0].text", "lone surrogate"),
        ({"id": "chat-\x07"}, "id", "control character"),
        ({"user_id": "u\x00"}, "user_id", "NUL character"),
        ({"prompt_tokens": 2**40}, "prompt_tokens", "less than or equal"),
        ({"latency_ms": 1e300}, "latency_ms", "less than or equal"),
        ({"latency_ms": float("nan")}, "latency_ms", "finite number"),
        ({"created_at": "9999-12-31T23:59:59-05:00"}, "created_at", "between 1900"),
        ({"tags": {"deep": _nested(40)}}, "tags.deep" + ".a" * 31, "nested deeper"),
    ],
)
def test_unstorable_interactions_are_refused_by_name(fields: dict[str, Any], field: str, reason_part: str) -> None:
    inter, errors = interaction(**fields)
    assert inter is None
    error = only_error(errors)
    assert (error.field, error.status) == (field, 422)
    assert reason_part in error.reason


def test_non_latin_ids_and_texts_are_fine() -> None:
    inter, errors = interaction(id="chat-😀", user_id="José", response="日本語 ✓", tags={"emoji": "😀"})
    assert errors == [] and inter is not None and inter.id == "chat-😀"
