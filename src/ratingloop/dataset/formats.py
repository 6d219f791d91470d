"""Stage 4, dataset (`ratingloop build`): answers -> rows for the pointwise formats, in TRL's conversational shapes.

    sft       {"prompt": [messages], "completion": [{"role": "assistant", ...}], "interaction_ids": [...]}
    kto       sft's columns + "label" (bool: desirable)
    reward    sft's columns + "score" (the debiased reward, in [-1, 1])
    weighted  sft's columns + "weight" (reward * confidence, in [-1, 1]; < 0 pushes an answer down)

`interaction_ids` names the interactions a row came from (several where identical answers were merged;
for a correction, the interaction it corrects, the correction being a rating of it), so a row can be
traced to its ratings (`ratingloop show`, the store). TRL's trainers read only the columns they need.

SFT and KTO keep only answers whose reward is clear of the bar by z sds, so a lone thumbs from an
unknown rater does not decide; reward and weighted keep every answer whose confidence reaches
`min_confidence` and let the number carry the doubt. Corrections are completions a rater wrote, so
they count as good answers (sft, kto desirable, weight `correction_weight`) but have no score of
their own (reward). DPO pairs live in pairs.py.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ratingloop.dataset.answers import Pool
from ratingloop.dataset.config import BuildConfig
from ratingloop.dataset.rows import Answer, Correction, FilterLog, Row

# TRL's recommended ratio (desirable_weight * n_desirable) / (undesirable_weight * n_undesirable) lies in
# [1, 4/3] (KTO paper, eq. 8; TRL's KTOTrainer warns outside it). We aim at its middle so that
# TRL's rounding to two decimals never lands us on an edge.
KTO_TARGET_RATIO = 1.15


def completion(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def answer_row(a: Answer, **extra: Any) -> Row:
    return Row({"prompt": a.prompt, "completion": completion(a.completion), **extra,
                "interaction_ids": list(a.interaction_ids)}, a.prompt_key, a.rating_ids)


def correction_row(c: Correction, **extra: Any) -> Row:
    a = c.corrected
    return Row({"prompt": a.prompt, "completion": completion(c.text), **extra,
                "interaction_ids": list(a.interaction_ids)}, a.prompt_key, (c.rating_id,))


def sft_rows(pool: Pool, cfg: BuildConfig, log: FilterLog) -> list[Row]:
    good = [a for a in pool.answers if a.reward - cfg.z * a.sd >= cfg.sft_min_reward]
    log.add("not_confidently_good", len(pool.answers) - len(good),
            f"answers are not confidently good (reward - {cfg.z}*sd < sft_min_reward={cfg.sft_min_reward})")
    return [answer_row(a) for a in good] + _corrections(pool, cfg, log, correction_row)


def kto_rows(pool: Pool, cfg: BuildConfig, log: FilterLog) -> list[Row]:
    desirable, undesirable, unsure = [], [], []
    for a in pool.answers:
        if a.reward - cfg.z * a.sd > cfg.kto_neutral:
            desirable.append(a)
        elif a.reward + cfg.z * a.sd < cfg.kto_neutral:
            undesirable.append(a)
        else:
            unsure.append(a)
    # KTO learns from both classes. When one is short while the other is not (sparse, single-rated feedback
    # where few answers are confidently bad), the unsure answers of the short side that come closest to
    # clearing z fill it up to kto_min_class: the side of neutral they fall on is still the best evidence.
    filled = 0
    for short, other, sign in ((undesirable, desirable, -1.0), (desirable, undesirable, 1.0)):
        need = cfg.kto_min_class - len(short)
        if need > 0 and len(other) >= cfg.kto_min_class:
            side = [a for a in unsure if sign * (a.reward - cfg.kto_neutral) > 0]
            side.sort(key=lambda a: -sign * (a.reward - cfg.kto_neutral) / max(a.sd, 1e-9))
            short.extend(side[:need])
            unsure = [a for a in unsure if a not in side[:need]]
            filled += len(side[:need])
    why = f"answers' rewards are within {cfg.z} sd of kto_neutral={cfg.kto_neutral}: neither clearly desirable nor " \
          "undesirable"
    if filled:
        why += f" ({filled} more filled the short class up to kto_min_class={cfg.kto_min_class}, labelled by " \
               "the side of neutral they fall on)"
    log.add("uncertain_label", len(unsure), why)
    label = {id(a): True for a in desirable} | {id(a): False for a in undesirable}
    rows = [answer_row(a, label=label[id(a)]) for a in pool.answers if id(a) in label]  # the pool's order
    return rows + _corrections(pool, cfg, log, lambda c: correction_row(c, label=True))


def reward_rows(pool: Pool, cfg: BuildConfig, log: FilterLog) -> list[Row]:
    human = [a for a in pool.answers if not a.judged]
    log.add("judged_only", len(pool.answers) - len(human),
            "answers only a reward model rated: a reward model must not learn its own scores")
    sure = [a for a in human if a.confidence >= cfg.min_confidence]
    log.add("low_confidence", len(human) - len(sure),
            f"answers have confidence < min_confidence={cfg.min_confidence}")
    if pool.corrections:
        log.add("corrections_unscored", len(pool.corrections), "corrections have no score of their own (not used)")
    return [answer_row(a, score=round(a.reward, 4)) for a in sure]


def weighted_rows(pool: Pool, cfg: BuildConfig, log: FilterLog) -> list[Row]:
    rows, unsure, weak = [], 0, 0
    for a in pool.answers:
        weight = a.reward * a.confidence  # the reward, shrunk further where the fit is unsure of it
        if a.confidence < cfg.min_confidence:
            unsure += 1
        elif abs(weight) < cfg.weighted_min_abs:
            weak += 1
        else:
            rows.append(answer_row(a, weight=round(weight, 4)))
    log.add("low_confidence", unsure, f"answers have confidence < min_confidence={cfg.min_confidence}")
    log.add("near_zero_weight", weak, f"answers have |reward * confidence| < weighted_min_abs={cfg.weighted_min_abs}")
    return rows + _corrections(pool, cfg, log, lambda c: correction_row(c, weight=cfg.correction_weight))


def _corrections(pool: Pool, cfg: BuildConfig, log: FilterLog, make: Callable[[Correction], Row]) -> list[Row]:
    if not cfg.use_corrections:
        log.add("corrections_off", len(pool.corrections), "corrections left out (use_corrections=False)")
        return []
    return [make(c) for c in pool.corrections]


def kto_weights(rows: list[Row]) -> dict[str, Any]:
    """TRL's KTOTrainer weights for the class balance of `rows` (the train split)."""
    return kto_class_weights([bool(r.data["label"]) for r in rows])


def kto_class_weights(labels: Sequence[bool]) -> dict[str, Any]:
    """TRL's KTOTrainer weights for a class balance (True: desirable): the larger class keeps weight 1 and
    the smaller one is raised so that desirable_weight * n_desirable / (undesirable_weight * n_undesirable)
    is KTO_TARGET_RATIO. Returns desirable_weight, undesirable_weight, n_desirable, n_undesirable, rule."""
    n_des = sum(1 for label in labels if label)
    n_und = len(labels) - n_des
    des, und = 1.0, 1.0
    if n_des and n_und and n_des >= n_und:
        und = n_des / (KTO_TARGET_RATIO * n_und)
    elif n_des and n_und:
        des = KTO_TARGET_RATIO * n_und / n_des
    return {"desirable_weight": round(des, 4), "undesirable_weight": round(und, 4), "n_desirable": n_des,
            "n_undesirable": n_und,
            "rule": "desirable_weight*n_desirable / (undesirable_weight*n_undesirable) = 1.15, inside TRL's [1, 4/3]"}


BUILDERS: dict[str, Callable[[Pool, BuildConfig, FilterLog], list[Row]]] = {
    "sft": sft_rows, "kto": kto_rows, "reward": reward_rows, "weighted": weighted_rows,
}
