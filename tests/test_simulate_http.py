"""Simulated users who chat with a real server over HTTP and rate what they were served with its tokens:
the hidden preferences, the population, the run against `ratingloop serve` on a tiny model, and a
server that is down or refuses the key."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from sqlalchemy import func, select

from ratingloop.simulate.bank import FACTS, BankPrompt, bank, preference_scores
from ratingloop.simulate.http import SimulationError, simulate_http
from ratingloop.simulate.users import PopulationConfig, make_users
from ratingloop.store import open_engine
from ratingloop.store.tables import Interaction, Rating
from servers import ADMIN_KEY, free_port, running_server_at
from tiny import save_varied_base

FRANCE = BankPrompt([{"role": "user", "content": "What is the capital of France?"}], "fact", ("paris",))


def test_hidden_preferences_read_the_answer() -> None:
    good = preference_scores(FRANCE, "Paris is the capital of France.")
    assert good["correct"] == 1 and good["helpful"] == 1 and good["direct"] == 1 and good["concise"] == 1
    wrong = preference_scores(FRANCE, "Sure! There are many cities in France, and Lyon is a lovely one to visit.")
    assert wrong["correct"] == -1 and wrong["direct"] < 0
    assert preference_scores(FRANCE, "I'm unable to help with that.")["helpful"] == -1
    assert preference_scores(FRANCE, "Thanks for asking, happy to help: Paris.")["friendly"] > 0
    assert preference_scores(FRANCE, "Figure it out yourself, it's obviously Paris.")["friendly"] < 0
    kinds = [p.kind for p in bank(30, seed=1)]
    assert kinds.count("fact") == kinds.count("howto") == kinds.count("support") == 10
    assert bank(30, seed=1) == bank(30, seed=1) and len(FACTS) >= 20


def test_population_is_seeded_with_trolls_and_honest_users_rate_what_they_see() -> None:
    users = make_users(PopulationConfig(users=20, trolls=0.2, rate=0.3, seed=4))
    assert users == make_users(PopulationConfig(users=20, trolls=0.2, rate=0.3, seed=4))
    assert sorted(u.troll for u in users if u.troll != "none") == ["coordinated", "flood", "inverter", "random"]
    assert all(abs(sum(u.weights.values()) - 1) < 1e-9 for u in users)
    honest = replace(users[0], noise=0.0, offset=0.0, rate=1.0, habit="thumbs", comments=0, corrects=0, aspects=0)
    inverter = replace(honest, troll="inverter")
    rng = np.random.default_rng(0)
    for answer in ("Paris.", "Paris is the capital of France.", "I'm unable to help with that."):
        truth = honest.hidden(FRANCE, answer)
        assert honest.feedback(FRANCE, answer, rng)[0]["value"] == (1 if truth > 0 else -1)
        assert inverter.feedback(FRANCE, answer, rng)[0]["value"] == (-1 if truth > 0 else 1)
    critic = replace(honest, comments=1.0, corrects=1.0, aspects=1.0,  # a user who cares about facts above all
                     weights={"direct": 0.1, "concise": 0.0, "correct": 0.9, "friendly": 0.0, "helpful": 0.0})
    said = critic.feedback(FRANCE, "It is Lyon, which everyone knows, and the weather there is lovely all year.", rng)
    kinds = {r["kind"]: r for r in said}
    assert kinds["thumbs"]["value"] == -1 and kinds["aspect"]["value"] == 1
    assert kinds["correction"]["text"] == "Paris." and kinds["comment"]["text"] == "Not great: the answer is wrong."
    with pytest.raises(Exception, match="--trolls"):
        make_users(PopulationConfig(trolls=1.5))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    tmp = tmp_path_factory.mktemp("sim")
    base = save_varied_base(tmp / "base")
    url = f"sqlite:///{tmp / 'sim.db'}"
    with running_server_at(url, tmp, backend=("--backend", "transformers", "--model", str(base)),
                           env={"RATINGLOOP_TOKEN_RATINGS_PER_S": "0"}) as address:
        yield address, url


def test_users_chat_and_rate_over_http(server: tuple[str, str]) -> None:
    address, db = server
    engine = open_engine(db)
    with engine.connect() as conn:
        before = conn.execute(select(func.count()).select_from(Rating.__table__)).scalar_one()
    report = simulate_http(address, ADMIN_KEY, PopulationConfig(users=10, trolls=0.2, rate=0.6, seed=2), turns=2,
                           max_tokens=8)
    assert report.answers == 20 and report.trolls == 2 and set(report.versions) == {"base"}
    score = report.versions["base"]
    assert score.answers == 20 and -1 <= score.ci_low <= score.hidden_mean <= score.ci_high <= 1
    with engine.connect() as conn:
        users = {row.user_id for row in conn.execute(select(Interaction.__table__.c.user_id))}
        after = conn.execute(select(func.count()).select_from(Rating.__table__)).scalar_one()
        raters = {r.rater_id for r in conn.execute(select(Rating.__table__.c.rater_id))}
    assert len({u for u in users if u and u.startswith("sim-")}) == 10
    assert after - before == report.ratings > 0
    assert set(report.troll_ids) <= raters  # the floods and the burst rate everything


def test_the_cli_reports_as_json_and_a_bad_server_stops_it_with_a_message(server: tuple[str, str],
                                                                           tmp_path: Path) -> None:
    address, _ = server
    run = subprocess.run([sys.executable, "-m", "ratingloop.cli", "simulate", "--users", "3", "--turns", "1",
                          "--url", address, "--key", ADMIN_KEY, "--max-tokens", "4", "--seed", "9", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["answers"] == 3
    with pytest.raises(SimulationError, match="refused the key"):
        simulate_http(address, "wrong-key", PopulationConfig(users=1), turns=1)
    with pytest.raises(SimulationError, match="nothing answers"):
        simulate_http(f"http://127.0.0.1:{free_port()}", ADMIN_KEY, PopulationConfig(users=1), turns=1)
    down = subprocess.run([sys.executable, "-m", "ratingloop.cli", "simulate", "--users", "1", "--turns", "1",
                           "--url", f"http://127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60)
    assert down.returncode == 1 and "nothing answers" in down.stderr and "Traceback" not in down.stderr
