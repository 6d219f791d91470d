"""Schemathesis against the API's own /openapi.json (feedback, and chat on a tiny model), on both databases.

Every operation the schema lists gets schema-driven requests: valid-but-hostile bodies (positive mode:
huge numbers, odd unicode, NUL characters, empty and long strings, odd dates, unknown fields) and bodies
the schema forbids (negative mode), plus schemathesis' deterministic edge cases (coverage phase). The app
runs in-process over ASGI with its lifespan (the group-commit writer) running, started once as uvicorn
starts it. Runs twice per database: as the admin, and without credentials (schemathesis then makes up
the `Authorization` header and the `feedback_token`).

The check that matters is "no 5xx" (`not_a_server_error`, or the app's exception itself, which Starlette
re-raises through the in-process transport). Also: responses match the schemas the app declares
(`response_schema_conformance`; undeclared codes such as our 401/403/404/409 are not judged), and no
response header carries a control character (uvicorn would drop the connection instead of answering).

To get past "no such interaction" and the per-kind rules to the writes, seeded interactions, their
tokens, users and idempotency keys are mixed into the generated values, and half the generated ratings
are made coherent (kind, value, scale, aspect, signal agreeing) while keeping their hostile free-form
fields. Rate limits are off for the run.

Seeded: the same requests on every run (schemathesis derives each operation's Hypothesis seed from
SEED; no example database). A failure shows the request as a curl command and the server's traceback;
Hypothesis reports each distinct crash site separately, each shrunk on its own.

    .venv/bin/pytest tests/test_fuzz.py                        # both databases (PostgreSQL: see conftest.py)
    .venv/bin/pytest tests/test_fuzz.py -m 'not postgres'      # SQLite only
    FUZZ_EXAMPLES=300 .venv/bin/pytest tests/test_fuzz.py      # a longer hunt (default 60 per operation)
"""

from __future__ import annotations

import logging
import math
import os
import re
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core import NotSet
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import response_schema_conformance

from ratingloop.config import Settings
from ratingloop.serve.app import backend_from_env, create_app
from ratingloop.serve.auth import TokenSigner
from tiny import save_varied_base

ADMIN_KEY = "test-admin-key"  # tests/conftest.py's
MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
SEED = 20240611
# In-process, any header goes through; a real server (uvicorn) refuses control characters in a header value
# and drops the connection without an answer - as good as a 5xx for the client.
BAD_HEADER_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@schemathesis.check
def header_values_a_server_can_send(ctx: schemathesis.CheckContext, response: schemathesis.Response,
                                    case: schemathesis.Case) -> None:
    for name, values in response.headers.items():
        for value in values:
            if BAD_HEADER_VALUE.search(value):
                raise AssertionError(f"response header {name}: {value!r} has a control character; uvicorn "
                                     "would drop the connection instead of answering")


CHECKS = [not_a_server_error, response_schema_conformance, header_values_a_server_can_send]
KINDS = ("thumbs", "stars", "scale", "aspect", "comment", "correction", "implicit", "preference", "rank")

# Values the schema allows that a store or an HTTP server may not: NUL (PostgreSQL text and JSONB refuse it),
# control characters and non-Latin-1 (an id is echoed in a response header), integers past 32 and 64 bits,
# the largest floats, and dates a time-zone shift pushes out of Python's range.
HOSTILE_STRINGS = ["nul\x00byte", "line\nbreak", "\u0100 not latin-1", "del\x7f"]
HOSTILE_NUMBERS = [2**31, 2**63, 2**64, 1e308, -1e308]
HOSTILE_DATES = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"]

# Interactions that exist before fuzzing starts: generated ids, tokens and user ids draw on these.
SEEDED: list[dict[str, Any]] = [
    {"id": "fz-1", "user_id": "fz-user-1", "messages": [{"role": "user", "content": "hi"}], "response": "hello",
     "ratings": [{"kind": "thumbs", "value": 1, "idempotency_key": "fz-k1"}]},
    {"id": "fz-2", "user_id": "fz-user-2", "messages": [{"role": "system", "content": "be brief"},
                                                          {"role": "user", "content": "refund?"}],
     "response": "On the 3rd.", "conversation_id": "fz-c", "tags": {"area": "billing"}},
    {"id": "fz-3", "messages": [{"role": "user", "content": "x"}], "response": "y"},
    # another answer to fz-1's prompt for its user: something a preference or a rank may compare
    {"id": "fz-4", "user_id": "fz-user-1", "messages": [{"role": "user", "content": "hi"}], "response": "hey"},
]
PAIRED = {"fz-1": "fz-4", "fz-4": "fz-1"}  # answers to one prompt


class ServerLog(logging.Handler):
    """Keeps the app's log records (its 500 handler logs each crash with the exception)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @contextmanager
    def only(self) -> Iterator[None]:
        """While a request runs, the app's records reach this handler alone, not pytest's log capture: a
        crash repeats while Hypothesis shrinks it, and each repeat would print its traceback again. A
        failure carries the records of its own (final) request instead."""
        self.records = []
        logger = logging.getLogger("ratingloop")
        propagate, logger.propagate = logger.propagate, False
        try:
            yield
        finally:
            logger.propagate = propagate

    def crash(self) -> BaseException | None:
        """The last exception the app logged."""
        for record in reversed(self.records):
            if record.exc_info and record.exc_info[1] is not None:
                return record.exc_info[1]
        return None

    def text(self, last_lines: int = 25, *, leave_out: BaseException | None = None) -> str:
        out = []
        for record in self.records:
            if record.levelno < logging.WARNING or (record.exc_info and record.exc_info[1] is leave_out):
                continue
            out.append(f"{record.levelname} {record.name}: {record.getMessage()}")
            if record.exc_info and record.exc_info[1] is not None:
                lines = "".join(traceback.format_exception(record.exc_info[1])).rstrip().splitlines()
                out.extend(lines[-last_lines:])
        return "\n".join(out)


@pytest.fixture(autouse=True)
def _pytest_92_nodeid(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32's `from_fixture` reads `item._nodeid`, which pytest 9.2 no longer has (it keeps `_id`).
    Setting it lets the run go on; schemathesis only uses it to rename subtests in reports."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@pytest.fixture
def server_log() -> Iterator[ServerLog]:
    handler = ServerLog()
    logger = logging.getLogger("ratingloop")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.fixture(params=["admin", "anonymous"])
def auth(request: pytest.FixtureRequest) -> str:
    return request.param


# A fixed secret (the same tokens on every run); rate limits off (one test client sends thousands of requests,
# and a 429 would stand in for the answer under test); no free-disk floor for /healthz (a full /tmp is not a bug).
FUZZ_SETTINGS = {"secret": "fuzz-secret", "token_ratings_per_s": 0, "address_requests_per_s": 0,
                 "admin_ratings_per_s": 0, "min_free_disk_bytes": 0, "public_chat_requests_per_min": 0,
                 "serve_max_tokens": 16}


@pytest.fixture
def fuzz_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={k: v for k, v in FUZZ_SETTINGS.items() if k in Settings.model_fields})


def coherent(rating: Any, interaction_id: str | None, token: str | None, settings: Settings) -> Any:
    """The generated rating made to pass the per-kind rules, keeping its hostile free-form fields (text,
    rater_id, idempotency_key, created_at, id, source): independent random fields almost never agree."""
    if not isinstance(rating, dict) or rating.get("kind") not in KINDS:
        return rating
    r = dict(rating)
    if interaction_id is None:
        r.pop("interaction_id", None)
        r.pop("feedback_token", None)
    else:
        r["interaction_id"], r["feedback_token"] = interaction_id, token
    kind, value = r["kind"], r.get("value")  # type: str, Any
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    r["signal"], r["scale"] = None, None
    r["other_interaction_id"], r["strength"], r["ranking"] = None, None, None
    other = PAIRED.get(interaction_id or "", "fz-1")
    r["aspect"] = settings.aspects[-1] if kind == "aspect" else None
    if kind == "thumbs":
        r["value"] = value if value in (1, -1) and not isinstance(value, bool) else -1
    elif kind in ("stars", "aspect"):
        r["value"] = min(max(value, 1), 5) if number else 4
    elif kind == "scale":
        r["value"], r["scale"] = (min(max(value, -1e9), 1e9) if number else 0.0), [-1e9, 1e9]
    elif kind in ("comment", "correction"):
        text = r.get("text")
        r["value"], r["text"] = None, text if isinstance(text, str) and text.strip() else "x"
    elif kind == "implicit":
        r["signal"], r["value"] = settings.implicit_signals[0], value if number else None
    elif kind == "preference":  # fz-1 against fz-4: one prompt, one user
        strength = rating.get("strength")
        r["other_interaction_id"] = other
        r["value"] = value if value in ("a", "b", "tie") else "ab"[len(str(value)) % 2]
        finite = isinstance(strength, (int, float)) and not isinstance(strength, bool) and math.isfinite(strength)
        r["strength"] = min(max(abs(strength), 0.01), 1) if finite and r["value"] != "tie" else None
    elif kind == "rank":
        r["value"], r["ranking"] = None, [[other], [interaction_id or "fz-4"]]
    return r


def bind(dictionary: str, probability: float, *paths: str) -> dict[str, dict[str, Any]]:
    """Generated values at `paths` are taken from `dictionary` with this probability (each path also inside
    a batch's items and an interaction's ratings)."""
    out = {}
    for path in paths:
        for prefix in ("body.", "body.items[*].", "body.ratings[*]."):
            out[prefix + path] = {"dictionary": dictionary, "probability": probability}
    return out


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chat endpoint answers with a tiny random model (tests/tiny.py)."""
    return save_varied_base(tmp_path_factory.mktemp("base"))


@pytest.fixture
def api_schema(fuzz_settings: Settings, auth: str, server_log: ServerLog, tiny_base: Path) -> Any:
    signer = TokenSigner(fuzz_settings.feedback_secret())
    ids = [body["id"] for body in SEEDED]
    # Known values mixed into what schemathesis generates (each with a probability): seeded ids, their tokens
    # and users, idempotency keys that replay or conflict, so requests get past "no such interaction" to the
    # writes; and the hostile values above, which random generation reaches rarely.
    config = schemathesis.Config.from_dict({
        "seed": SEED,
        "output": {"sanitization": {"enabled": False}},  # else `*_tokens` and `idempotency_key` print as [Filtered]
        "dictionaries": {
            "interactions": {"values": ids},
            "ids": {"values": ids + HOSTILE_STRINGS},
            "tokens": {"values": [signer.sign(i) for i in ids]},
            "users": {"values": [body["user_id"] for body in SEEDED if "user_id" in body] + HOSTILE_STRINGS},
            "keys": {"values": ["fz-k1", "fz-k2"] + HOSTILE_STRINGS},
            "strings": {"values": HOSTILE_STRINGS},
            "numbers": {"values": HOSTILE_NUMBERS},
            "dates": {"values": HOSTILE_DATES},
        },
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
        "parameters": {
            "path.user_id": {"dictionary": "users", "probability": 0.5},
            "body.messages[*].content": {"dictionary": "strings", "probability": 0.1},
            **bind("interactions", 0.5, "interaction_id", "other_interaction_id"),
            **bind("ids", 0.2, "id"),
            **bind("tokens", 0.3, "feedback_token"),
            **bind("users", 0.3, "user_id", "rater_id"),
            **bind("keys", 0.15, "idempotency_key"),
            **bind("strings", 0.1, "response", "model", "conversation_id", "text"),
            **bind("numbers", 0.1, "value", "latency_ms", "prompt_tokens", "completion_tokens"),
            **bind("dates", 0.1, "created_at"),
        },
        **({"headers": {"Authorization": f"Bearer {ADMIN_KEY}"}} if auth == "admin" else {}),
    })
    app = create_app(fuzz_settings, backend_factory=backend_from_env({
        "RATINGLOOP_SERVE_BACKEND": "transformers", "RATINGLOOP_SERVE_MODEL": str(tiny_base)}))
    # Loading the schema over ASGI starts the app's lifespan (its writer), once, as uvicorn would; it runs
    # until schemathesis' pytest plugin stops it at teardown. The seeding goes through the running app.
    loaded = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    client = asgi.get_client(app)  # type: ignore[arg-type]  # its ASGI aliases are narrower than Starlette's
    for body in SEEDED:
        r = client.post("/v1/interactions", json=body, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert r.status_code == 201, r.text

    @loaded.hook("flatmap_body")
    def sometimes_coherent(ctx: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
        """Half the bodies as generated, half with their ratings made coherent (Hypothesis picks, and
        shrinks towards the body as generated)."""
        if not isinstance(body, dict):
            return st.just(body)
        iid = ids[len(str(body)) % len(ids)]
        token = signer.sign(iid)
        fixed = dict(body)
        if ctx.operation is not None and ctx.operation.path == "/v1/interactions":
            if isinstance(body.get("ratings"), list):
                fixed["ratings"] = [coherent(r, None, None, fuzz_settings) for r in body["ratings"]]
        elif isinstance(body.get("items"), list):
            fixed["items"] = [coherent(r, iid, token, fuzz_settings) for r in body["items"]]
        else:
            fixed = coherent(body, iid, token, fuzz_settings)
        return st.just(body) if fixed == body else st.sampled_from([body, fixed])

    return loaded


schema = schemathesis.pytest.from_fixture("api_schema")


def test_openapi_refs_resolve(sqlite_url: str, tmp_path: Path) -> None:
    """Every `$ref` in /openapi.json points at something in it. A dangling one does not fail schemathesis: it
    quietly sends the operation without a body, and the fuzzing below would pass without testing anything."""
    app = create_app(Settings(database_url=sqlite_url, data_dir=tmp_path / "data", admin_key=ADMIN_KEY))
    doc = app.openapi()

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    def resolves(ref: str) -> bool:
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return ref.startswith("#/")

    assert sorted({ref for ref in refs(doc) if not resolves(ref)}) == []


@schema.parametrize()
def test_api_never_answers_5xx(case: schemathesis.Case, server_log: ServerLog) -> None:
    body_required = (case.operation.definition.raw.get("requestBody") or {}).get("required", False)
    if (body_required and isinstance(case.body, NotSet) and case.meta is not None
            and case.meta.generation.mode == schemathesis.GenerationMode.POSITIVE):
        raise AssertionError(f"schemathesis made no body for {case.operation.label}, whose body is required: "
                             "it could not read the body's schema (see test_openapi_refs_resolve)")
    with server_log.only():
        try:
            case.call_and_validate(checks=CHECKS)
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup is a BaseExceptionGroup
            failure = exc
        else:
            return
    log = server_log.text(leave_out=failure)
    if not log:
        # The app's own exception (Starlette re-raises what no handler took, after its 500): the server's
        # traceback is the failure's, and schemathesis has noted how to reproduce the request.
        raise failure
    # A 5xx the app answered itself fails `not_a_server_error`; schemathesis' report of it leaves out notes,
    # so its text goes in a report of our own, with what the server logged while answering.
    report = AssertionError(f"{failure}\n\nserver log of this request:\n{log}")
    # Hypothesis tells failures apart by their exception's origin and context, and shrinks each on its
    # own: with the server's exception as the context, each crash site is a failure of its own.
    report.__context__ = server_log.crash() or failure
    raise report from None
