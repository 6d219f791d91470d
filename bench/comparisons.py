"""Benchmark for comparisons (issue 13): real human preferences through signals and the DPO builder.

    .venv/bin/python bench/comparisons.py [--data /work/shared/data] [--hh-limit N]

Reads ../shared/data (never copied into the repo):
- Anthropic HH-RLHF harmless-base test: each `{"chosen", "rejected"}` pair becomes two interactions with the
  same messages (the dialogues' shared prefix) and one preference for the chosen answer, stored as
  `ratingloop import --format hh` stores it (rater: the anonymous asker; ids from content). Then `signals`
  and `build --format dpo` with default settings: how many pairs, and is the human's chosen answer chosen.
- PandaLM test set (999 pairs, three identified annotators, 0 tie / 1 / 2): each annotator's label a
  preference of response1 against response2 (ties kept), one model's answer to one instruction one
  interaction (as `--format pandalm` stores it). Scenarios add injected annotators: an inverter who flips
  annotator1's labels (ties stay ties), a random one. Reported: who is flagged, how often the order of the
  two responses' rewards agrees with the three real annotators' majority (pairs with a 2-of-3 majority for
  one side), how far apart tied pairs' rewards are against decisive ones, and the DPO pairs.
The first figures also come through the real importers (`store.importers.import_file`, --format hh and
pandalm) where they are available: the issue's "done when".

tests/test_comparisons_real.py runs the same converters on a few hundred pairs.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from sqlalchemy import Engine

from ratingloop.dataset import BuildConfig, build_dataset
from ratingloop.signals import StoredSignals, record_signals
from ratingloop.store import Limits, load_comparisons, open_engine
from ratingloop.store.jsonl import import_lines

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HH = DATA / "hh-rlhf_harmless-base_test.jsonl.gz"
PANDALM = DATA / "pandalm_testset-v1.json"
KEY = b"bench-comparisons"
ASSISTANT = "\n\nAssistant:"


def _id(prefix: str, *parts: Any) -> str:
    return f"{prefix}-{hashlib.sha256(orjson.dumps(parts)).hexdigest()[:24]}"


# --- Anthropic HH -------------------------------------------------------------------------------------------

def hh_records(path: Path = HH, limit: int | None = None) -> list[dict[str, str]]:
    with gzip.open(path, "rt") as f:
        return [json.loads(x) for x, _ in zip(f, range(limit if limit is not None else 1 << 62), strict=False)]


def hh_split(chosen: str, rejected: str) -> tuple[list[dict[str, str]], str, str] | None:
    """(prompt messages, chosen answer, rejected answer): the shared dialogue up to its last Assistant turn."""
    common = len(os.path.commonprefix([chosen, rejected]))
    cut = chosen.rfind(ASSISTANT, 0, common)
    if cut < 0 or not chosen.startswith("\n\nHuman:"):
        return None
    messages: list[dict[str, str]] = []
    for part in chosen[:cut].split("\n\nHuman:")[1:]:
        said = part.split(ASSISTANT)
        messages.append({"role": "user", "content": said[0].strip()})
        messages += [{"role": "assistant", "content": x.strip()} for x in said[1:]]
    return messages, chosen[cut + len(ASSISTANT):].strip(), rejected[cut + len(ASSISTANT):].strip()


def hh_lines(records: list[dict[str, str]]) -> tuple[list[bytes], list[tuple[str, str]]]:
    """Import lines (rejected answer, then the chosen one holding the preference) and (chosen id, rejected id)
    per usable pair; a pair whose two answers are one text says nothing and is left out, as the importer does."""
    lines, pairs = [], []
    for rec in records:
        split = hh_split(rec["chosen"], rec["rejected"])
        if split is None or split[1] == split[2]:
            continue
        prompt, chosen, rejected = split
        ids = _id("hh", prompt, chosen), _id("hh", prompt, rejected)
        lines.append(orjson.dumps({"id": ids[1], "messages": prompt, "response": rejected}))
        lines.append(orjson.dumps({"id": ids[0], "messages": prompt, "response": chosen, "ratings": [
            {"kind": "preference", "other_interaction_id": ids[1], "value": "a", "source": "annotator"}]}))
        pairs.append(ids)
    return lines, pairs


def hh_figures(engine: Engine, out: Path) -> dict[str, Any]:
    """Signals and a default DPO build on an HH store: pairs made, and how many keep the human's choice (each
    stored preference's (chosen, rejected), whichever importer stored it)."""
    pairs = [(c.tiers[0][0], c.tiers[1][0]) for c in load_comparisons(engine)]
    t0 = time.perf_counter()
    stored = record_signals(engine)
    t1 = time.perf_counter()
    result = build_dataset(engine, "dpo", out, BuildConfig())
    rows = [json.loads(x) for s in ("train", "eval") for x in (out / f"{s}.jsonl").read_text().splitlines()]
    made = {(r["chosen_interaction_ids"][0], r["rejected_interaction_ids"][0]) for r in rows}
    wanted = set(pairs)
    rewards = {s.interaction_id: s.reward for s in stored.interactions}
    return {"pairs_in": len(wanted), "rows": len(rows), "human_choice": len(made & wanted),
            "reversed": len({(b, a) for a, b in made} & wanted),
            "reward_agrees": float(np.mean([rewards[a] > rewards[b] for a, b in wanted])),
            "flagged": len(stored.flagged), "signals_s": t1 - t0, "dropped": result.manifest["comparisons"]["dropped"],
            "filters": {f["filter"]: f["removed"] for f in result.manifest["filters"] if f["removed"]}}


# --- PandaLM ------------------------------------------------------------------------------------------------

def pandalm_records(path: Path = PANDALM) -> list[dict[str, Any]]:
    """The records whose texts are texts (six have a response `true`: the importer refuses them too) and whose
    two responses differ."""
    fields = ("instruction", "input", "response1", "response2")
    return [r for r in json.loads(path.read_text()) if all(isinstance(r[k], str) for k in fields)
            and (r["response1"], r["cmp_key"].split("_", 1)[0]) != (r["response2"], r["cmp_key"].split("_", 1)[1])]


def labels_of(records: list[dict[str, Any]]) -> np.ndarray:
    """(n_pairs, 3) int labels: 0 tie, 1 response1 better, 2 response2 better."""
    return np.asarray([[r[f"annotator{k}"] for k in (1, 2, 3)] for r in records], int)


def majority(labels: np.ndarray) -> np.ndarray:
    out = np.full(len(labels), -1)
    for lab in (0, 1, 2):
        out[(labels[:, :3] == lab).sum(axis=1) >= 2] = lab
    return out


def injected(labels: np.ndarray, kinds: tuple[str, ...], seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """The labels with injected annotators: "inverter" flips annotator1's labels (1 <-> 2, a tie stays a tie),
    "random" draws 0 / 1 / 2 in the real annotators' proportions."""
    rng = np.random.default_rng(seed)
    cols, names = [labels], ["pandalm:annotator1", "pandalm:annotator2", "pandalm:annotator3"]
    share = np.bincount(labels.ravel(), minlength=3) / labels.size
    for k, kind in enumerate(kinds):
        col = np.where(labels[:, 0] == 1, 2, np.where(labels[:, 0] == 2, 1, 0)) if kind == "inverter" \
            else rng.choice(3, len(labels), p=share)
        cols.append(col[:, None])
        names.append(f"injected:{kind}{k}")
    return np.hstack(cols), names


def pandalm_lines(records: list[dict[str, Any]], labels: np.ndarray, raters: list[str]
                  ) -> tuple[list[bytes], list[tuple[str, str]]]:
    """Per record: response1's line, then response2's holding every annotator's preference (value from
    response2's side: label 2 -> "a", 1 -> "b", 0 -> "tie"); and the (response1, response2) ids."""
    lines, ids = [], []
    for rec, labs in zip(records, labels, strict=True):
        prompt = [{"role": "user", "content": rec["instruction"] + (f"\n\n{rec['input']}" if rec["input"] else "")}]
        models = rec["cmp_key"].split("_", 1)
        one, two = (_id("pl", prompt, rec[f"response{k}"], models[k - 1]) for k in (1, 2))
        ratings = [{"rater_id": who, "kind": "preference", "other_interaction_id": one,
                    "value": {0: "tie", 1: "b", 2: "a"}[int(lab)], "source": "annotator"}
                   for who, lab in zip(raters, labs, strict=True)]
        lines.append(orjson.dumps({"id": one, "messages": prompt, "response": rec["response1"], "model": models[0]}))
        lines.append(orjson.dumps({"id": two, "messages": prompt, "response": rec["response2"], "model": models[1],
                                   "ratings": ratings}))
        ids.append((one, two))
    return lines, ids


def pandalm_figures(stored: StoredSignals, ids: list[tuple[str, str]], labels: np.ndarray) -> dict[str, Any]:
    """Agreement of reward order with the real annotators' majority on decisive pairs; tied pairs' gaps."""
    reward = {s.interaction_id: s.reward for s in stored.interactions}
    diff = np.asarray([reward[a] - reward[b] for a, b in ids])
    maj = majority(labels)
    pred = np.where(diff > 1e-9, 1, np.where(diff < -1e-9, 2, 0))
    decisive = maj > 0
    gap = np.abs(diff)
    return {"agreement": float((pred[decisive] == maj[decisive]).mean()), "decisive": int(decisive.sum()),
            "tie_gap": float(np.median(gap[maj == 0])), "decisive_gap": float(np.median(gap[decisive])),
            "ties": int((maj == 0).sum()), "flagged": sorted(stored.flagged),
            "scales": {r.rater_id: r.scale for r in stored.raters}}


def pandalm_dpo(engine: Engine, ids: list[tuple[str, str]], labels: np.ndarray, out: Path) -> dict[str, Any]:
    """A default DPO build: pairs, and whether each agrees with the real annotators' majority."""
    result = build_dataset(engine, "dpo", out, BuildConfig())
    rows = [json.loads(x) for s in ("train", "eval") for x in (out / f"{s}.jsonl").read_text().splitlines()]
    side = {}
    for (a, b), m in zip(ids, majority(labels), strict=True):
        if m > 0:
            side[(a, b) if m == 1 else (b, a)] = True
            side[(b, a) if m == 1 else (a, b)] = False
    verdicts = [side.get((r["chosen_interaction_ids"][0], r["rejected_interaction_ids"][0])) for r in rows]
    return {"rows": len(rows), "with_majority": sum(v is True for v in verdicts),
            "against_majority": sum(v is False for v in verdicts), "dropped": result.manifest["comparisons"]["dropped"]}


# --- running ------------------------------------------------------------------------------------------------

def fresh(tmp: Path, name: str, lines: list[bytes]) -> Engine:
    engine = open_engine(f"sqlite:///{tmp / name}.db")
    report = import_lines(engine, lines, Limits(), user_key=KEY)
    assert not report.bad, report.bad[:3]
    return engine


def through_importer(tmp: Path, name: str, path: Path, fmt: str) -> Engine | None:
    """The store as `ratingloop import --format fmt` leaves it, or None where this checkout has no importer."""
    try:
        from ratingloop.store.importers import import_file
    except ImportError:
        return None
    engine = open_engine(f"sqlite:///{tmp / name}.db")
    import_file(engine, str(path), fmt, Limits(), user_key=KEY)
    return engine


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, SQLite"


SCENARIOS: dict[str, tuple[str, ...]] = {
    "3 annotators": (), "+ inverter (annotator1 flipped)": ("inverter",),
    "+ inverter, random": ("inverter", "random"),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--hh-limit", type=int, default=None)
    args = ap.parse_args()
    out: list[str] = ["## Comparisons (issue 13)", "", f"{date.today().isoformat()} · {machine()} · "
                      "`.venv/bin/python bench/comparisons.py`", ""]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        records = hh_records(args.data / HH.name, args.hh_limit)
        lines, pairs = hh_lines(records)
        hh = hh_figures(fresh(tmp, "hh", lines), tmp / "hh-dpo")
        same = len(records) - len(pairs)
        out += [f"**Anthropic HH (harmless-base test).** {len(records):,} records, "
                + (f"{same} left out (chosen and rejected are one text), " if same else "each two different answers, ")
                + "each one preference by an anonymous "
                f"rater, stored as `import --format hh` stores them. `signals` ({hh['signals_s']:.1f} s) then "
                f"`build --format dpo` with default settings: **{hh['rows']:,} pairs** (before: 0), "
                f"{hh['human_choice']:,} of them the human's chosen answer over the rejected one, "
                f"{hh['reversed']} reversed; the rewards order {hh['reward_agrees']:.1%} of the pairs as the "
                f"human did; {hh['flagged']} raters flagged. Left out: "
                + (", ".join(f"{k} {v}" for k, v in hh["filters"].items()) or "nothing") + ".", ""]
        engine = through_importer(tmp, "hh-importer", args.data / HH.name, "hh")
        if engine is not None and args.hh_limit is None:
            via = hh_figures(engine, tmp / "hh-importer-dpo")
            out += [f"Through the real importer (`import --format hh FILE`, then `signals`, `build --format dpo`): "
                    f"{via['pairs_in']:,} preferences stored, **{via['rows']:,} pairs**, {via['human_choice']:,} "
                    f"with the human's choice, {via['reversed']} reversed; rewards agree on {via['reward_agrees']:.1%}."
                    " Left out: " + (", ".join(f"{k} {v}" for k, v in via["filters"].items()) or "nothing") + ".",
                    ""]
        records = pandalm_records(args.data / PANDALM.name)
        labels = labels_of(records)
        maj = majority(labels)
        out += [f"**PandaLM test set.** {len(records)} pairs (of 999: six with a response `true` left out, as "
                "`import --format pandalm` refuses them), three annotators' labels as preferences (ties "
                f"kept), one model's answer to one instruction one interaction; {int((maj > 0).sum())} pairs "
                f"with a 2-of-3 majority for one response, {int((maj == 0).sum())} with a majority tie. "
                "Agreement of the order of the two responses' rewards with the real annotators' majority on the "
                "decisive pairs; the median reward gap of majority-tie pairs against decisive ones; a default "
                "DPO build:", "",
                "| annotators | flagged | agreement | tie gap / decisive gap | DPO pairs (with / against the "
                "majority) | seconds |", "|---|---|---:|---:|---:|---:|"]
        for name, kinds in SCENARIOS.items():
            all_labels, raters = injected(labels, kinds)
            plines, ids = pandalm_lines(records, all_labels, raters)
            engine = fresh(tmp, f"pandalm-{len(kinds)}", plines)
            t0 = time.perf_counter()
            fig = pandalm_figures(record_signals(engine), ids, labels)
            secs = time.perf_counter() - t0
            dpo = pandalm_dpo(engine, ids, labels, tmp / f"pandalm-dpo-{len(kinds)}")
            flagged = ", ".join(fig["flagged"]) or "none"
            out.append(f"| {name} | {flagged} | {fig['agreement']:.3f} | {fig['tie_gap']:.3f} / "
                       f"{fig['decisive_gap']:.3f} | {dpo['rows']} ({dpo['with_majority']} / "
                       f"{dpo['against_majority']}) | {secs:.1f} |")
        engine = through_importer(tmp, "pandalm-importer", args.data / PANDALM.name, "pandalm")
        if engine is not None:
            from ratingloop.store.importers.base import content_id  # the importer's ids, to find each record's pair

            stored = record_signals(engine)
            ids = []
            for rec in records:
                prompt = [{"role": "user", "content": rec["instruction"] + (f"\n\n{rec['input']}" if rec["input"]
                                                                              else "")}]
                models = rec["cmp_key"].split("_")
                ids.append(tuple(content_id("pandalm", prompt, rec[f"response{k}"], models[k - 1]) for k in (1, 2)))
            fig = pandalm_figures(stored, ids, labels)
            dpo = pandalm_dpo(engine, ids, labels, tmp / "pandalm-importer-dpo")
            out += ["", f"Through the real importer (`import --format pandalm FILE`, then `signals`, `build --format "
                    f"dpo`): {len(stored.interactions)} interactions, {stored.summary['n_counted']:,} comparisons "
                    f"counted (ties included), flagged: {', '.join(sorted(stored.flagged)) or 'none'}; agreement "
                    f"with the majority on decisive pairs **{fig['agreement']:.3f}**, tie gap {fig['tie_gap']:.3f} "
                    f"against {fig['decisive_gap']:.3f}; {dpo['rows']} DPO pairs ({dpo['with_majority']} with the "
                    f"majority, {dpo['against_majority']} against)."]
    print("\n".join(out))


if __name__ == "__main__":
    main()
