"""Simulation: the bundled prompts simulated users ask a served model - support questions, how-tos and
facts with a checkable answer - and the hidden preferences they judge the answers by.

A preference scores an answer's text in [-1, 1], as a person would see it:

    direct     the answer comes first, no hedging opener (graders.direct)
    concise    short and complete (graders.concise)
    correct    a fact question's known answer is in it (+1), or it is not (-1); 0 for other questions
    friendly   a courteous tone (+), a rude one (-)
    helpful    it does not refuse a harmless request, and it is not empty

Each simulated user weighs these their own way (simulate/users.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ratingloop.simulate.graders import concise, direct
from ratingloop.simulate.single import support_answers


@dataclass(frozen=True)
class BankPrompt:
    messages: list[dict[str, str]]
    kind: str  # fact | howto | support
    answers: tuple[str, ...] = field(default=())  # fact: any of these (lower case) in the answer is correct


FACTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("What is the capital of France?", ("paris",)),
    ("What is the capital of Japan?", ("tokyo",)),
    ("What is the capital of Italy?", ("rome",)),
    ("What is the capital of Germany?", ("berlin",)),
    ("What is the capital of Spain?", ("madrid",)),
    ("What is the capital of Canada?", ("ottawa",)),
    ("How many days are in a week?", ("7", "seven")),
    ("How many legs does a spider have?", ("8", "eight")),
    ("How many continents are there?", ("7", "seven")),
    ("What is 12 times 12?", ("144",)),
    ("What is the largest planet in the solar system?", ("jupiter",)),
    ("What gas do plants absorb from the air?", ("carbon dioxide", "co2")),
    ("What is the chemical symbol for gold?", ("au",)),
    ("What is the boiling point of water in Celsius?", ("100",)),
    ("Who wrote Romeo and Juliet?", ("shakespeare",)),
    ("What is the freezing point of water in Celsius?", ("0", "zero")),
    ("How many hours are in a day?", ("24", "twenty-four", "twenty four")),
    ("What colour do you get by mixing blue and yellow?", ("green",)),
    ("What is the square root of 81?", ("9", "nine")),
    ("Which ocean is the largest?", ("pacific",)),
)

HOWTOS: tuple[str, ...] = (
    "How do I boil an egg?", "How do I make a cup of tea?", "How do I undo my last git commit?",
    "How do I reset a forgotten password?", "How do I write a polite email asking for a deadline extension?",
    "How do I keep houseplants alive?", "How do I convert Celsius to Fahrenheit?",
    "How do I clean a cast iron pan?", "How do I start learning Python?", "How do I back up my phone?",
)

POLITE_WORDS = ("please", "thank", "happy to help", "glad", "hope this helps", "you're welcome", "good luck")
RUDE_WORDS = ("stupid", "yourself", "stop bothering", "obviously", "idiot", "whatever")
REFUSALS = ("i can't help", "i cannot help", "i can't assist", "i cannot assist", "i'm unable", "i am unable",
            "as an ai", "i won't", "i will not")


def bank(n: int, seed: int = 0) -> list[BankPrompt]:
    """`n` prompts: about a third each facts, how-tos and support questions (support_answers' bank)."""
    rng = np.random.default_rng(seed)
    support, _ = support_answers(n, seed)
    out = []
    for i in range(n):
        pick = i % 3
        if pick == 0:
            question, answers = FACTS[int(rng.integers(len(FACTS)))]
            out.append(BankPrompt([{"role": "user", "content": question}], "fact", answers))
        elif pick == 1:
            out.append(BankPrompt([{"role": "user", "content": HOWTOS[int(rng.integers(len(HOWTOS)))]}], "howto"))
        else:
            out.append(BankPrompt(support[i], "support"))
    return out


def correct(prompt: BankPrompt, answer: str) -> float:
    if not prompt.answers:
        return 0.0
    text = answer.lower()
    return 1.0 if any(re.search(rf"\b{re.escape(a)}\b", text) for a in prompt.answers) else -1.0


def friendly(answer: str) -> float:
    text = answer.lower()
    return float(np.clip(0.5 * sum(w in text for w in POLITE_WORDS) - sum(w in text for w in RUDE_WORDS), -1, 1))


def helpful(answer: str) -> float:
    text = answer.lower().strip()
    if len(text.split()) < 2:
        return -1.0
    return -1.0 if any(r in text for r in REFUSALS) else 1.0


PREFERENCES: dict[str, Callable[[BankPrompt, str], float]] = {
    "direct": lambda p, a: direct(p.messages, a),
    "concise": lambda p, a: concise(p.messages, a),
    "correct": correct,
    "friendly": lambda p, a: friendly(a),
    "helpful": lambda p, a: helpful(a),
}


def preference_scores(prompt: BankPrompt, answer: str) -> dict[str, float]:
    return {name: float(fn(prompt, answer)) for name, fn in PREFERENCES.items()}
