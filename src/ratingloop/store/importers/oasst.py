"""Stage 1, the store: OpenAssistant message trees (`ratingloop import --format oasst FILE`).

A record is one tree, `{"message_tree_id", "prompt": message}` (the `*.trees.jsonl` export; the schema is
oasst_data's ExportMessageTree), each message with `message_id`, `text`, `role` (prompter/assistant),
`replies`, and optionally `emojis` (counts), `labels` (averaged labels), `rank` (its place among its
siblings, 0 best) and `events` (who voted and ranked, in exports made with them). The whole tree is one
record: stored together or not at all.

- Each assistant message is an interaction (`oasst:<message_id>`) whose messages are the conversation
  above it (prompter turns as `user`), with model_name as its model and the prompter's user_id as its user.
- Emoji votes: `+1` and `-1` are thumbs, one per voter. Where the export names voters (`events`), each is
  rater `oasst:<user_id>`; otherwise an aggregated `+1: 3` is three votes by three distinct anonymous raters
  (`anon:oasst:<message_id>#+1#0`, `#1`, `#2`), never one. Other emojis (red_flag, _skip_*) stay in tags.
- Labels (0-1 averages over `count` labellers): `quality` is a `scale` rating on [0, 1], a label named after a
  configured aspect (helpfulness) an `aspect` on [0, 1], by the message's anonymous label panel
  (`anon:oasst:<message_id>#labels`); `--map NAME=KIND[:LOW-HIGH]` reads others (scores.py), else they are
  noted and left in tags.
- Sibling rank: the assistant replies to one message that carry a `rank` are one `rank` rating (tiers by
  rank, best first) by the anonymous consensus of OASST's rankers (`anon:oasst:<parent id>#rank`); where the
  export holds the rankers' own `ranking` events, each is a rank by `oasst:<user_id>` instead.
- Deleted messages (and the replies below them) are left out, and noted.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, ValidationError

from ratingloop.errors import FieldError
from ratingloop.store.importers.base import Context, Format, anon
from ratingloop.store.importers.files import json_lines
from ratingloop.store.importers.scores import Reading, ScoreReader
from ratingloop.store.jsonl import ImportRecord
from ratingloop.store.records import pydantic_errors

ROLES = {"prompter": "user", "assistant": "assistant"}


class Node(BaseModel):
    model_config = ConfigDict(extra="allow")

    message_id: str
    parent_id: str | None = None
    user_id: str | None = None
    text: str
    role: str
    lang: str | None = None
    created_date: datetime | None = None
    review_count: int | None = None
    review_result: bool | None = None
    deleted: bool | None = None
    rank: int | None = None
    synthetic: bool | None = None
    model_name: str | None = None
    emojis: dict[str, int] | None = None
    labels: dict[str, dict[str, Any]] | None = None
    events: dict[str, list[dict[str, Any]]] | None = None
    replies: list[Node] | None = None


class Tree(BaseModel):
    model_config = ConfigDict(extra="allow")

    message_tree_id: str
    tree_state: str | None = None
    prompt: Node | None = None


def looks_like(record: Any) -> bool:
    return isinstance(record, dict) and "message_tree_id" in record and "prompt" in record


def is_message(record: Any) -> bool:
    """One message of the flat messages export (not a tree)."""
    return isinstance(record, dict) and {"message_id", "role", "text"} <= record.keys() and "replies" not in record


def records(path: str, context: Context) -> Iterator[ImportRecord]:
    defaults = {"quality": Reading("scale", "overall", 0, 1)}
    defaults |= {a: Reading("aspect", a, 0, 1) for a in context.limits.aspects if a != "overall"}
    reader = ScoreReader(defaults | context.maps, context.limits.aspects, context.notes, "oasst")
    for raw in json_lines(path):
        if raw.error is not None:
            yield ImportRecord(raw.number, errors=[raw.error])
            continue
        lines, labels, errors = convert(raw.data, reader, context)
        yield ImportRecord(raw.number, lines, errors=errors, labels=labels)


def convert(data: Any, reader: ScoreReader, context: Context) -> tuple[list[dict[str, Any]], list[str],
                                                                        list[FieldError]]:
    """A tree as import lines (in the tree's order, a parent before its replies), with their labels."""
    if is_message(data):
        return [], [], [FieldError("message_tree_id", "an OASST message, not a message tree: import the trees "
                                                      "export (*.trees.jsonl), where each line is one tree")]
    try:
        tree = Tree.model_validate(data)
    except ValidationError as e:
        return [], [], pydantic_errors(e)
    if tree.prompt is None:
        return [], [], []
    walk = _Walk(tree.message_tree_id, reader, context)
    walk.visit(tree.prompt, [], None)
    return walk.lines, walk.labels, walk.errors


class _Walk:
    def __init__(self, tree_id: str, reader: ScoreReader, context: Context) -> None:
        self.tree_id, self.reader, self.context = tree_id, reader, context
        self.lines: list[dict[str, Any]] = []
        self.labels: list[str] = []
        self.errors: list[FieldError] = []

    def visit(self, node: Node, above: list[dict[str, Any]], asker: str | None) -> None:
        if node.deleted:
            self.context.notes.add("oasst: a deleted message (and the replies below it) left out")
            return
        role = ROLES.get(node.role)
        if role is None:
            self.errors.append(FieldError(f"message {node.message_id}.role", f"{node.role!r} is not prompter or "
                                                                               "assistant"))
            return
        if role == "assistant":
            self.lines.append(self._interaction(node, above, asker))
            self.labels.append(f"message {node.message_id}")
        replies = [r for r in node.replies or [] if not r.deleted]
        conversation = [*above, {"role": role, "content": node.text}]
        for reply in node.replies or []:
            self.visit(reply, conversation, node.user_id if role == "user" else asker)
        self._rank(node, replies)

    def _interaction(self, node: Node, above: list[dict[str, Any]], asker: str | None) -> dict[str, Any]:
        iid = f"oasst:{node.message_id}"
        tags = {"message_tree_id": self.tree_id, **{k: v for k, v in (
            ("lang", node.lang), ("synthetic", node.synthetic), ("review_count", node.review_count),
            ("review_result", node.review_result), ("rank", node.rank), ("emojis", node.emojis),
            ("labels", node.labels)) if v is not None}}
        line: dict[str, Any] = {"id": iid, "messages": above, "response": node.text, "tags": {"oasst": tags},
                                "ratings": self._votes(node, iid) + self._labels(node, iid)}
        for key, value in (("model", node.model_name), ("user_id", asker), ("created_at", node.created_date)):
            if value is not None:
                line[key] = value.isoformat() if isinstance(value, datetime) else value
        return line

    def _votes(self, node: Node, iid: str) -> list[dict[str, Any]]:
        """Thumbs, one per voter: named where the events name them, else distinct anonymous raters."""
        named = [e for e in (node.events or {}).get("emoji", []) if e.get("emoji") in ("+1", "-1")]
        if named and all(e.get("user_id") for e in named):
            return [{"kind": "thumbs", "value": int(e["emoji"]), "rater_id": f"oasst:{e['user_id']}",
                     "source": "annotator"} for e in named]
        return [{"kind": "thumbs", "value": int(emoji), "rater_id": anon(iid, emoji, str(k)), "source": "annotator"}
                for emoji in ("+1", "-1") for k in range((node.emojis or {}).get(emoji, 0))]

    def _labels(self, node: Node, iid: str) -> list[dict[str, Any]]:
        out = []
        for name, label in (node.labels or {}).items():
            rating, error = self.reader.rating(name, label.get("value"), f"message {node.message_id}.labels.{name}")
            if error is not None:
                self.errors.append(error)
            elif rating is not None:
                out.append({**rating, "rater_id": anon(iid, "labels"), "source": "annotator"})
        return out

    def _rank(self, parent: Node, replies: list[Node]) -> None:
        """The replies' rank(s), on the line of the last ranked reply (every reply's line is written by now)."""
        present = {f"oasst:{r.message_id}" for r in replies if r.role == "assistant"}
        ranks: list[tuple[list[list[str]], str]] = []
        for event in (parent.events or {}).get("ranking", []):
            ids = [f"oasst:{m}" for m in event.get("ranked_message_ids") or []]
            ids = [i for i in ids if i in present]
            if event.get("user_id") and not event.get("not_rankable") and len(ids) >= 2:
                ranks.append(([[i] for i in ids], f"oasst:{event['user_id']}"))
        if not ranks:
            ranked = sorted((r.rank, f"oasst:{r.message_id}") for r in replies
                            if r.rank is not None and f"oasst:{r.message_id}" in present)
            if len(ranked) >= 2:
                tiers: dict[int, list[str]] = {}
                for rank, iid in ranked:
                    tiers.setdefault(rank, []).append(iid)
                ranks.append((list(tiers.values()), anon(f"oasst:{parent.message_id}", "rank")))
        for ranking, rater in ranks:
            named = {i for tier in ranking for i in tier}
            home = max(k for k, line in enumerate(self.lines) if line["id"] in named)
            self.lines[home]["ratings"].append({"kind": "rank", "ranking": ranking, "rater_id": rater,
                                                "source": "annotator"})


FORMAT = Format("oasst", records, looks_like, 'JSON Lines of message trees {"message_tree_id", "prompt": {...}}')
