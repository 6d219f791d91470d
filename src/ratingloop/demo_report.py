"""The demo's report: one HTML page a person can read, with its plots inline (SVG, drawn by matplotlib),
from what the demo measured and what the store recorded.

    data = DemoData(phases=[...], rounds=[...], live={...}, flags=[...])
    write_report(Path("ratingloop-demo"), data)      # -> ratingloop-demo/report.html

Sections: the hidden score of what each version served, per phase, with its 95% CI (the truth the
simulated users rate by, which no stage of ratingloop can read); the live ratings per version (what
the users said); the rater model's flags against the true trolls; and what each round did and why.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class DemoData:
    # [{"label": "before any round", "versions": {version: {"answers", "hidden_mean", "ci_low", "ci_high",
    #   "ratings"}}}, ...]
    phases: list[dict[str, Any]]
    # [{"round": id, "outcome": promoted|rejected|failed|..., "version_id", "reasons": [...], "win_rate", "ci_low",
    #   "ci_high", "n_prompts", "seconds"}, ...]
    rounds: list[dict[str, Any]]
    live: dict[str, dict[str, float]] = field(default_factory=dict)  # version -> {"n", "mean", "ci_low", "ci_high"}
    # [{"group": "honest users", "n": 30, "flagged": 1}, {"group": "inverting askers", ...}, ...]
    flags: list[dict[str, Any]] = field(default_factory=list)
    minutes: float = 0.0
    setup: str = ""


def _svg(fig: Any) -> str:
    """The pyplot figure as inline SVG (`ratingloop.report.svg`, cropped), and out of pyplot's figure list."""
    import matplotlib.pyplot as plt

    from ratingloop.report import svg

    text = svg(fig, tight=True)
    plt.close(fig)
    return text


def hidden_plot(data: DemoData) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    versions = sorted({v for p in data.phases for v in p["versions"]}, key=lambda v: (v != "base", v))
    for k, version in enumerate(versions):
        xs, ys, lo, hi = [], [], [], []
        for i, phase in enumerate(data.phases):
            v = phase["versions"].get(version)
            if v:
                xs.append(i + (k - (len(versions) - 1) / 2) * 0.08)
                ys.append(v["hidden_mean"])
                lo.append(v["hidden_mean"] - v["ci_low"])
                hi.append(v["ci_high"] - v["hidden_mean"])
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=4, label=version)
    ax.set_xticks(range(len(data.phases)), [p["label"] for p in data.phases], fontsize=8)
    ax.set_ylabel("hidden score of what users got")
    ax.axhline(0, color="#999", linewidth=0.5)
    ax.legend(fontsize=8)
    ax.set_title("The truth behind the ratings, per phase and version (95% CI)", fontsize=10)
    return _svg(fig)


def live_plot(data: DemoData) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    names = list(data.live)
    means = [data.live[n]["mean"] for n in names]
    err = [[data.live[n]["mean"] - data.live[n]["ci_low"] for n in names],
           [data.live[n]["ci_high"] - data.live[n]["mean"] for n in names]]
    ax.bar(range(len(names)), means, yerr=err, capsize=4, color="#4a7bb7")
    ax.set_xticks(range(len(names)), [f"{n}\n({int(data.live[n]['n'])} ratings)" for n in names], fontsize=7)
    ax.set_ylabel("mean rating on [-1, 1]")
    ax.axhline(0, color="#999", linewidth=0.5)
    ax.set_title("What users said: live ratings per version (95% CI)", fontsize=10)
    return _svg(fig)


def flags_plot(data: DemoData) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    shares = [g["flagged"] / g["n"] if g["n"] else 0.0 for g in data.flags]
    colors = ["#5a9e5a" if g["group"].startswith("honest") else "#c0504d" for g in data.flags]
    bars = ax.bar(range(len(data.flags)), shares, color=colors)
    for bar, g in zip(bars, data.flags, strict=True):  # the count, also where nothing was flagged
        ax.annotate(f"{g['flagged']}/{g['n']}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(data.flags)), [g["group"] for g in data.flags], fontsize=7, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("share flagged")
    ax.set_title("The rater model's flags against the true trolls", fontsize=10)
    return _svg(fig)


def render(data: DemoData) -> str:
    e = html.escape
    rows = []
    for r in data.rounds:
        win = (f"{r['win_rate']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}] on {r['n_prompts']} prompts"
               if r.get("win_rate") is not None else "-")
        rows.append(f"<tr><td>{e(str(r['round']))}</td><td class='{e(r['outcome'])}'>{e(r['outcome'])}</td>"
                    f"<td>{e(str(r.get('version_id') or '-'))}</td><td>{e(win)}</td>"
                    f"<td>{e('; '.join(r.get('reasons') or []) or '-')}</td><td>{r.get('seconds', 0):.0f} s</td></tr>")
    phases = []
    for p in data.phases:
        for version, v in p["versions"].items():
            phases.append(f"<tr><td>{e(p['label'])}</td><td>{e(version)}</td><td>{v['answers']}</td>"
                          f"<td>{v['hidden_mean']:+.3f} [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}]</td>"
                          f"<td>{v['ratings']}</td></tr>")
    sections = [
        ("hidden", "Did the served model get better?", hidden_plot(data) if data.phases else "<p>no phases</p>",
         "<table><tr><th>phase</th><th>version</th><th>answers</th><th>hidden score (95% CI)</th>"
         "<th>ratings</th></tr>" + "".join(phases) + "</table>"),
        ("live", "What the users said", live_plot(data) if data.live else "<p>no live ratings</p>", ""),
        ("flags", "Trolls", flags_plot(data) if data.flags else "<p>no signals run</p>", ""),
        ("rounds", "What each round did, and why", "",
         "<table><tr><th>round</th><th>outcome</th><th>candidate</th><th>win rate (95% CI)</th><th>reasons</th>"
         "<th>took</th></tr>" + "".join(rows) + "</table>"),
    ]
    body = "".join(f"<section id='{sid}'><h2>{e(title)}</h2>{plot}{table}</section>"
                   for sid, title, plot, table in sections)
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>ratingloop demo</title>"
            f"<style>{STYLE}</style></head><body><h1>ratingloop demo</h1><p>{e(data.setup)}</p>"
            f"<p>{data.minutes:.1f} minutes.</p>{body}</body></html>")


STYLE = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}"
         "table{border-collapse:collapse;margin:1rem 0;font-size:.85rem}"
         "td,th{border:1px solid #ccc;padding:.3rem .5rem;text-align:left;vertical-align:top}"
         "svg{max-width:100%;height:auto}.promoted{color:#2a7a2a;font-weight:bold}"
         ".rejected,.failed{color:#b03030;font-weight:bold}")


def write_report(folder: Path, data: DemoData) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "report.html"
    path.write_text(render(data), encoding="utf-8")
    return path.resolve()
