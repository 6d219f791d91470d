"""Simulation over HTTP: simulated users chat with a running `ratingloop serve` through the OpenAI API
and rate what they were served through /v1/feedback with each answer's token, as real clients do.

    report = simulate_http("http://127.0.0.1:8000", key, PopulationConfig(users=20, trolls=0.2), turns=3)
    report.versions   # per version that answered: answers, mean hidden score with its 95% CI, ratings

Users chat concurrently (the server batches them); each turn asks a prompt from the bundled bank
(simulate/bank.py). The hidden score of an answer is the asking user's own (simulate/users.py); a
troll's counts too, as what the server gave them. A server that is down, refuses the key, or answers
an error stops the run with a message saying which and why.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import httpx
import numpy as np

from ratingloop import waits
from ratingloop.errors import RatingloopError
from ratingloop.simulate.bank import BankPrompt, bank
from ratingloop.simulate.users import PopulationConfig, SimUser, make_users


@dataclass
class VersionScore:
    answers: int
    hidden_mean: float
    ci_low: float
    ci_high: float
    ratings: int


@dataclass
class SimReport:
    url: str
    users: int
    trolls: int
    turns: int
    answers: int
    ratings: int
    versions: dict[str, VersionScore] = field(default_factory=dict)
    troll_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class SimulationError(RatingloopError):
    """The server could not be used: down, refusing the key, or answering errors."""


def simulate_http(url: str, key: str | None, cfg: PopulationConfig, *, turns: int = 3, max_tokens: int = 64,
                  concurrency: int = 4, timeout_s: float = 300, progress: Callable[[int], None] | None = None,
                  prompts: list[BankPrompt] | None = None) -> SimReport:
    """Run `cfg.users` users for `turns` turns each against the server at `url`, asking `prompts` (default:
    the bundled bank); see the module docstring."""
    if turns < 1:
        raise RatingloopError(f"--turns {turns}: at least 1")
    users = make_users(cfg)
    prompts = prompts or bank(max(30, cfg.users * turns), cfg.seed)
    base = url.rstrip("/")
    served: list[tuple[str, float, int]] = []  # (version, hidden score, ratings given)
    lock = threading.Lock()
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    def run_user(k: int, user: SimUser) -> None:
        rng = np.random.default_rng([cfg.seed, k])
        with httpx.Client(timeout=timeout_s) as http:
            for turn in range(turns):
                prompt = prompts[int(rng.integers(len(prompts)))]
                version, hidden, given = _turn(http, base, headers, user, prompt, rng, max_tokens,
                                               f"sim{cfg.seed}-{k}-{turn}")
                with lock:
                    served.append((version, hidden, given))
                if progress is not None:
                    progress(1)

    pool = ThreadPoolExecutor(max(1, concurrency))
    try:
        for future in [pool.submit(run_user, k, u) for k, u in enumerate(users)]:
            waits.result(future)  # the first failure stops the run with its message; Ctrl-C stops it at once
    except BaseException:  # a failure or Ctrl-C: no waiting users start, none is waited for
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    report = SimReport(url=base, users=cfg.users, trolls=sum(u.troll != "none" for u in users), turns=turns,
                       answers=len(served), ratings=sum(g for _, _, g in served),
                       troll_ids=[u.id for u in users if u.troll != "none"])
    for version in sorted({v for v, _, _ in served}):
        scores = np.array([h for v, h, _ in served if v == version])
        half = 1.96 * scores.std(ddof=1) / np.sqrt(len(scores)) if len(scores) > 1 else 0.0
        report.versions[version] = VersionScore(len(scores), float(scores.mean()), float(scores.mean() - half),
                                                float(scores.mean() + half),
                                                sum(g for v, _, g in served if v == version))
    return report


def _turn(http: httpx.Client, base: str, headers: dict[str, str], user: SimUser, prompt: BankPrompt,
          rng: np.random.Generator, max_tokens: int, key: str) -> tuple[str, float, int]:
    """One chat and its ratings: (version that answered, the user's hidden score, ratings given)."""
    body = {"model": "active", "messages": prompt.messages, "user": user.id, "max_tokens": max_tokens}
    answer = _post(http, f"{base}/v1/chat/completions", body, headers)
    meta, text = answer.get("ratingloop") or {}, answer["choices"][0]["message"]["content"] or ""
    if not meta.get("feedback_token"):
        raise SimulationError(f"{base} answered chat without ratingloop's feedback token: is it `ratingloop serve`?")
    given = 0
    for j, rating in enumerate(user.feedback(prompt, text, rng)):
        _post(http, f"{base}/v1/feedback", {**rating, "interaction_id": meta["interaction_id"],
                                            "idempotency_key": f"{key}-{j}"},
              {"Authorization": f"Bearer {meta['feedback_token']}"})
        given += 1
    return str(meta.get("version") or answer.get("model")), user.hidden(prompt, text), given


def _post(http: httpx.Client, url: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    try:
        r = http.post(url, json=body, headers=headers)
    except httpx.ConnectError as e:
        raise SimulationError(f"nothing answers at {url} ({e}); start `ratingloop serve` first, or pass --url") \
            from None
    except httpx.HTTPError as e:
        raise SimulationError(f"{url}: {type(e).__name__}: {e}") from None
    if r.status_code in (401, 403):
        raise SimulationError(f"{url} refused the key ({r.status_code}: {_message(r)}); pass --key, or set "
                              "RATINGLOOP_ADMIN_KEY to the server's admin key")
    if r.status_code >= 400:
        raise SimulationError(f"{url} answered {r.status_code}: {_message(r)}")
    return dict(r.json())


def _message(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return r.text[:300]
