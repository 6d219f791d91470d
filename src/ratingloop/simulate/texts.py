"""Simulation: text for simulated interactions, so that an answer carries its hidden quality, and the
whole simulated world as lines `ratingloop import` takes.

Reads a `Truth` (each interaction's quality and topic). Writes, per interaction, a question (one of
its topic's templates, a product filled in) and an answer of 2-4 sentences, each at a quality level
drawn around the interaction's quality: rude, wrong or off topic, vague ("I do not know"), correct,
correct and caring. The mean level follows the quality closely but no single sentence decides it, so
a content model can learn quality from the text, and a linear head on sentence embeddings reads it
with corr ~0.88 (quality is only partly recoverable, as with a real reward model). Slots (order
numbers, products, days), paraphrases and mixtures vary, so memorising strings cannot work.
`import_lines_for` writes the simulated world as `ratingloop import` lines.

    sim = simulate(SimConfig(single_rated=True))
    texts = sim_texts(sim.truth)
    report = import_lines(engine, import_lines_for(sim, texts), Limits(), user_key=settings.feedback_secret())
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import orjson

from ratingloop.simulate.population import Truth
from ratingloop.simulate.ratings import THUMBS, SimRatings

PRODUCTS = ("headphones", "blender", "desk lamp", "router", "backpack", "kettle", "monitor", "phone case",
            "coffee grinder", "keyboard", "tent", "air purifier")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")

# Per topic: questions, good sentences (relevant and correct), wrong sentences (on topic, false).
TOPICS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "billing": (
        ("When will my refund for the {p} arrive?", "Why was I charged twice for my {p}?",
         "Can I get an invoice for my {p}?", "How do I change the card you bill for my {p}?"),
        ("Refunds reach your card within {d} business days after we approve them.",
         "I can see the duplicate charge on order {n} and have reversed it today.",
         "You can download the invoice for order {n} from the Orders page under Billing.",
         "To update your card, open Settings, choose Payment methods and add the new card.",
         "The second charge was a temporary hold and it drops off by {day}.",
         "I have emailed you a receipt for the {p} with the tax shown separately."),
        ("Refunds are paid in cash at any of our stores.", "We never issue invoices for orders.",
         "Duplicate charges cannot be refunded once posted.", "Your card is billed again every {d} hours."),
    ),
    "shipping": (
        ("Where is my {p}? It has not arrived.", "Can you ship my {p} to a different address?",
         "How long does express delivery take?", "Why does tracking for my {p} not update?"),
        ("Order {n} left our warehouse yesterday and should arrive by {day}.",
         "Express delivery takes one to two business days for your area.",
         "I have changed the delivery address for your {p}; you will get a new tracking email.",
         "Tracking updates once the courier scans the parcel, usually within {d} hours.",
         "If the {p} does not arrive by {day}, we will send a replacement at no cost."),
        ("Express delivery takes about three months.", "We cannot track parcels once they ship.",
         "Your {p} was delivered to the moon by mistake.", "Addresses can only be changed after delivery."),
    ),
    "returns": (
        ("How do I return my {p}?", "Can I exchange my {p} for a different colour?",
         "My {p} arrived broken, what should I do?", "Is there a fee to return the {p}?"),
        ("You can return the {p} within 30 days using the prepaid label in your account.",
         "Returns are free; print the label from order {n} and drop the parcel at any post office.",
         "I am sorry the {p} arrived damaged; a replacement ships today and you can keep the broken one.",
         "For an exchange, start a return for order {n} and pick the new colour in the same form.",
         "Once we receive the {p}, your refund is processed within {d} business days."),
        ("Returns are only accepted after one year.", "You must pay a fee of 90 percent to return the {p}.",
         "Broken items cannot be replaced or refunded.", "Exchanges require a visit to our head office."),
    ),
    "account": (
        ("I forgot my password, how do I log in?", "How do I delete my account?",
         "Can I change the email on my account?", "Why is my account locked?"),
        ("Use the Forgot password link on the sign-in page and we will email you a reset link.",
         "You can delete your account under Settings, Privacy, Delete account; it takes effect in {d} days.",
         "To change your email, open Profile, enter the new address and confirm the code we send.",
         "Your account locks after five failed sign-ins and unlocks itself after {d} minutes.",
         "I have sent a verification code to your phone so you can sign in again."),
        ("Passwords cannot be reset; please create a new account.", "Accounts can never be deleted.",
         "We changed your email to a random address for safety.", "Locked accounts stay locked forever."),
    ),
    "technical": (
        ("My {p} will not turn on, can you help?", "How do I update the firmware on my {p}?",
         "The app keeps crashing when I open my orders.", "How do I reset my {p} to factory settings?"),
        ("Hold the power button on the {p} for ten seconds to restart it, then try again.",
         "Open the app, choose your {p} and tap Update firmware; it takes about {d} minutes.",
         "Please update the app to the latest version; the crash on the orders screen is fixed there.",
         "To reset the {p}, hold the reset button for five seconds until the light blinks.",
         "If the {p} still does not respond, we will replace it under warranty."),
        ("Unplugging the {p} voids your warranty.", "Firmware updates will erase your order history.",
         "The app only works on {day}s.", "Factory resets are not possible on any device."),
    ),
    "subscriptions": (
        ("How do I cancel my subscription?", "Why did my subscription price change?",
         "Can I pause my plan for a month?", "Will I lose my data if I downgrade?"),
        ("You can cancel any time under Settings, Subscription; you keep access until the period ends.",
         "The price changed because your introductory discount ended after {d} months.",
         "Yes, you can pause your plan for up to three months from the Subscription page.",
         "Downgrading keeps all your data; only the extra features are switched off."),
        ("Subscriptions can only be cancelled by post.", "Pausing a plan deletes your account.",
         "Prices change every {day} at random.", "Downgrading erases all your files."),
    ),
}
POLITE = ("Thanks for reaching out!", "Happy to help with that.", "Thank you for your patience.",
          "Good question, let me help.", "I hope this helps, have a great day.", "Sorry for the trouble.")
RUDE = ("That is a stupid question.", "Figure out your {p} yourself.", "Stop bothering us about your {p}.",
        "Read the manual before you write to us.", "Honestly, your {p} is not my problem.",
        "Whatever, I do not care.", "Ugh, not this again.", "We are closed on {day}s anyway, go away.")
OFF_TOPIC = ("The weather has been lovely this week.", "Did you know octopuses have three hearts?",
             "Our office cafeteria serves pasta on {day}.", "My favourite colour is green.",
             "I have been learning to play the guitar for {d} years.", "Football season starts on {day}.")
VAGUE = ("I do not know.", "I am not sure about the {p}, sorry.", "It depends on a few things, I think.",
         "Maybe check the website for more details.", "You could try again in {d} days.",
         "Hard to say, really.")
LEVELS = 5  # 0 rude, 1 wrong or off topic, 2 vague, 3 correct, 4 correct and caring
@dataclass(frozen=True)
class SimTexts:
    topic_names: tuple[str, ...]  # per topic index
    prompts: list[str]  # per interaction: the user's question
    answers: list[str]  # per interaction: the answer that was rated


def _fill(template: str, rng: np.random.Generator) -> str:
    return template.format(n=f"#{rng.integers(1_000, 9_999)}", p=PRODUCTS[rng.integers(len(PRODUCTS))],
                           d=int(rng.integers(2, 11)), day=DAYS[rng.integers(len(DAYS))])


def _pick(options: tuple[str, ...], rng: np.random.Generator) -> str:
    return _fill(options[rng.integers(len(options))], rng)


def sentence(topic: str, level: int, rng: np.random.Generator) -> str:
    """One sentence of an answer at a quality level (`LEVELS`)."""
    _, good, wrong = TOPICS[topic]
    if level >= 4:
        return f"{_pick(good, rng)} {_pick(POLITE, rng)}"
    if level == 3:
        return _pick(good, rng)
    if level == 2:
        return _pick(VAGUE, rng)
    if level == 1:
        return _pick(wrong if rng.random() < 0.6 else OFF_TOPIC, rng)
    return _pick(RUDE, rng)


def answer_text(topic: str, quality: float, rng: np.random.Generator) -> str:
    """2-4 sentences, each at a level drawn around the quality (2 + 1.3 quality, sd 0.6, rounded):
    the mean level tracks quality closely, no single sentence decides it."""
    n = int(rng.integers(2, 5))
    levels = np.clip(np.rint(2.0 + 1.3 * quality + 0.6 * rng.standard_normal(n)), 0, LEVELS - 1).astype(int)
    return " ".join(sentence(topic, int(lv), rng) for lv in levels)


def sim_texts(truth: Truth, seed: int = 0) -> SimTexts:
    """A question and an answer per simulated interaction (topic index t uses the t-th topic, cycling)."""
    rng = np.random.default_rng(seed)
    names = tuple(TOPICS)
    prompts, answers = [], []
    for q, t in zip(truth.quality.tolist(), truth.topic.tolist(), strict=True):
        topic = names[t % len(names)]
        prompts.append(_pick(TOPICS[topic][0], rng))
        answers.append(answer_text(topic, q, rng))
    return SimTexts(tuple(names[t % len(names)] for t in range(int(truth.topic.max()) + 1)), prompts, answers)


def interaction_id(item: int) -> str:
    return f"sim-{item:06d}"


def rater_id(rater: int) -> str:
    return f"u{rater:05d}"


def import_lines_for(sim: SimRatings, texts: SimTexts, items: np.ndarray | None = None) -> list[bytes]:
    """The simulated interactions (all, or only `items`) with their ratings, as `ratingloop import`
    JSONL lines. The asker is the interaction's first rater (in the single-rated setting, its only one);
    each rating comes a minute after its interaction, interactions a minute apart."""
    keep = np.arange(sim.n_items) if items is None else np.asarray(items)
    by_item: dict[int, list[int]] = {}
    for j, i in enumerate(sim.item.tolist()):
        by_item.setdefault(i, []).append(j)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    lines = []
    for i in keep.tolist():
        t = start + timedelta(minutes=2 * i)
        ratings = [_rating(sim, j, t + timedelta(minutes=1)) for j in by_item.get(i, [])]
        asker = rater_id(int(sim.rater[by_item[i][0]])) if i in by_item else None
        lines.append(orjson.dumps({
            "id": interaction_id(i), "messages": [{"role": "user", "content": texts.prompts[i]}],
            "response": texts.answers[i], "user_id": asker, "model": "sim", "created_at": t.isoformat(),
            "tags": {"topic": texts.topic_names[int(sim.truth.topic[i])]}, "ratings": ratings}))
    return lines


def _rating(sim: SimRatings, j: int, at: datetime) -> dict[str, object]:
    thumbs = sim.kind[j] == THUMBS
    out: dict[str, object] = {"rater_id": rater_id(int(sim.rater[j])), "source": "simulated",
                              "kind": "thumbs" if thumbs else "stars", "value": int(sim.value[j]),
                              "created_at": at.isoformat()}
    if not thumbs:
        out["scale"] = [int(sim.scale_min[j]), int(sim.scale_max[j])]
    return out
