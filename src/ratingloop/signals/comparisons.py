"""Stage 3, signals: comparisons (`preference`, `rank`) as observations of the same latent quality the
other kinds observe - Thurstone's model with the rater's scale and noise, ties included.

Reads `RawComparisons` (the comparisons that count, one entry per preference or rank, as tiers of item
indices: `signals.load` fills it from `store.load_comparisons`) and writes `Comparisons`: one row per
implied pair, which the rater model (`signals.raters`) fits beside the ratings. The model of one pair,
answer i against answer j, by rater r:

    d = a_r (q_i - q_j) + e,  e ~ N(0, 2 s2_r)     the perceived difference: each answer is seen with the
                                                   rater's noise, and the rater's offset b_r cancels
    i preferred iff d > delta_r,  a tie iff |d| <= delta_r                   (Glenn & David 1960)

So a comparison says nothing about a rater's offset, only about their scale a_r: an honest rater's is
positive, an inverter's negative, a random rater's ~0 - the same classes the troll tests compare for
ratings (`signals.evidence`). A tie is information, q_i ~ q_j, as strong as the rater's threshold
delta_r is narrow. delta_r is a habit like an offset: fitted per rater by matching their share of ties,
shrunk toward the population's with `TIE_PSEUDO` pseudo-comparisons.

A rank of k answers is the set of its k (k - 1) / 2 implied pairs, each weighted 2 / k, so a ranking
counts as k - 1 comparisons (a chain through its tiers), not as k^2 / 2: a long ranking does not drown
the preferences around it. A preference said with a `strength` s counts s of a comparison. A comparison
on an aspect stands in for an overall one of the same answers by the same rater (as aspect ratings
do), the aspects of one set sharing a comparison's weight by `aspect_weights`.

The augmented model is fitted as the thumbs' probit is (EM: E[d | outcome] from a truncated normal);
the posterior of q across pairs by Gaussian belief propagation (each comparison sends each of its
answers a message that holds the other answer's uncertainty; exact on the trees that preferences and
ranks of one prompt's answers form). The helpers below are that arithmetic; raters.py calls them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from scipy.special import erfcx, log_ndtr, ndtr

_SQRT_2_OVER_PI = np.sqrt(2.0 / np.pi)
_INV_SQRT2 = 1.0 / np.sqrt(2.0)
_LOG_SQRT_2PI = 0.5 * np.log(2.0 * np.pi)
TIE_PSEUDO = 4.0  # pseudo-comparisons at the population's tie share behind each rater's tie threshold
MIN_DELTA = 1e-3  # a rater who ties at all has a threshold at least this wide (reward units)


@dataclass(frozen=True)
class RawComparisons:
    """Comparisons as arrays: per comparison its rater, the item it is stored under, its aspect and its
    strength; per answer it names (a member) the comparison, the item and the tier (0 = best)."""

    rater: np.ndarray  # int (c,)
    item: np.ndarray  # int (c,): the interaction the rating is stored under
    aspect: np.ndarray  # int (c,): index into RawRatings.aspects
    strength: np.ndarray  # float (c,): a preference's strength, NaN when not said (and for a rank)
    member_cmp: np.ndarray  # int (k,)
    member_item: np.ndarray  # int (k,)
    member_tier: np.ndarray  # int (k,)

    @classmethod
    def from_tiers(cls, rater: Sequence[int], tiers: Sequence[Sequence[Sequence[int]]],
                   aspect: Sequence[int] | None = None, strength: Sequence[float | None] | None = None,
                   item: Sequence[int] | None = None) -> RawComparisons:
        """From per-comparison tiers of item indices, best first: ((3,), (5, 8)) = 3 beat 5 and 8, which tied."""
        members = [(c, x, k) for c, t in enumerate(tiers) for k, tier in enumerate(t) for x in tier]
        m = np.asarray(members, np.int64).reshape(-1, 3)
        n = len(tiers)
        return cls(np.asarray(rater, np.int64), np.asarray(item if item is not None else [t[0][0] for t in tiers],
                                                          np.int64),
                   np.zeros(n, np.int64) if aspect is None else np.asarray(aspect, np.int64),
                   np.full(n, np.nan) if strength is None else np.asarray(
                       [np.nan if s is None else s for s in strength], float),
                   m[:, 0], m[:, 1], m[:, 2])

    def __len__(self) -> int:
        return len(self.rater)


@dataclass(frozen=True)
class Comparisons:
    """One row per implied pair: `first` preferred to `second` (or tied with it), and its weight."""

    rater: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # (p,)
    first: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # (p,) the preferred answer
    second: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # (p,)
    tie: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # (p,)
    weight: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (p,) strength, 2 / k in a rank, aspect share
    origin: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (p,) index into RawComparisons
    member_rater: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # per answer named by a
    member_item: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # comparison that counted

    def __len__(self) -> int:
        return len(self.rater)


def as_pairs(raw: RawComparisons | None, aspects: tuple[str, ...] = ("overall",),
          aspect_weights: Mapping[str, float] | None = None) -> Comparisons:
    """Every comparison as its implied pairs (module doc: rank weights, strength, aspect stand-ins)."""
    if raw is None or len(raw) == 0:
        return Comparisons()
    weight = np.where(np.isfinite(raw.strength), raw.strength, 1.0) * _aspect_share(raw, aspects, aspect_weights or {})
    order = np.lexsort((raw.member_tier, raw.member_cmp))
    cmp_, item, tier = raw.member_cmp[order], raw.member_item[order], raw.member_tier[order]
    size = np.bincount(cmp_, minlength=len(raw))
    start = np.concatenate([[0], np.cumsum(size)[:-1]])
    after = start[cmp_] + size[cmp_] - 1 - np.arange(len(cmp_))  # members of the same comparison after this one
    left = np.repeat(np.arange(len(cmp_)), after)
    right = left + 1 + np.arange(len(left)) - np.repeat(np.cumsum(after) - after, after)
    origin = cmp_[left]
    # members are sorted best tier first, so `left` is never worse than `right`
    w = weight[origin] * 2.0 / size[origin]
    keep = w > 0
    used = np.zeros(len(raw), bool)
    used[origin[keep]] = True
    named = used[cmp_]
    return Comparisons(raw.rater[origin[keep]].astype(np.int32), item[left[keep]].astype(np.int32),
                       item[right[keep]].astype(np.int32), (tier[left] == tier[right])[keep], w[keep], origin[keep],
                       raw.rater[cmp_[named]].astype(np.int32), item[named].astype(np.int32))


def _aspect_share(raw: RawComparisons, aspects: tuple[str, ...], weights: Mapping[str, float]) -> np.ndarray:
    """Per comparison: 1 on overall; on an aspect, its share of the weights of the aspects the same rater
    compared the same answers on, or 0 where that rater gave an overall comparison of them."""
    if not raw.aspect.any():
        return np.ones(len(raw))
    sets: list[tuple[int, frozenset[int]]] = [(int(r), frozenset()) for r in raw.rater.tolist()]
    for c, x in zip(raw.member_cmp.tolist(), raw.member_item.tolist(), strict=True):
        sets[c] = (sets[c][0], sets[c][1] | {x})
    w = np.asarray([1.0 if a == 0 else float(weights.get(aspects[a], 1.0)) for a in raw.aspect.tolist()])
    overall: set[tuple[int, frozenset[int]]] = {s for s, a in zip(sets, raw.aspect.tolist(), strict=True) if a == 0}
    total: dict[tuple[int, frozenset[int]], float] = {}
    for s, a, wk in zip(sets, raw.aspect.tolist(), w.tolist(), strict=True):
        if a != 0:
            total[s] = total.get(s, 0.0) + wk
    return np.asarray([1.0 if a == 0 else 0.0 if s in overall or total[s] <= 0 else wk / total[s]
                       for s, a, wk in zip(sets, raw.aspect.tolist(), w.tolist(), strict=True)])


# --- the ordered probit's arithmetic ---------------------------------------------------------------------

def truncated(eta: np.ndarray, sd: np.ndarray, delta: np.ndarray, tie: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For d ~ N(eta, sd^2) given its outcome (d > delta, or |d| <= delta for a tie): the mean and variance
    of u = (d - eta) / sd, and log P(outcome). d log P / d eta = mean / sd; E[d | outcome] = eta + sd mean."""
    hi = np.where(tie, (delta - eta) / sd, np.inf)
    lo = (np.where(tie, -delta, delta) - eta) / sd
    mean, var, logp = np.empty_like(lo), np.empty_like(lo), np.empty_like(lo)
    win = ~tie
    a = lo[win]  # one-sided: u > a; phi(a) / Phi(-a) through erfcx, stable in both tails
    lam = _SQRT_2_OVER_PI / erfcx(a * _INV_SQRT2)
    mean[win], var[win], logp[win] = lam, np.clip(1.0 + a * lam - lam * lam, 0.0, 1.0), log_ndtr(-a)
    if tie.any():
        mean[tie], var[tie], logp[tie] = _interval(lo[tie], hi[tie])
    return mean, var, logp


def _interval(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, variance and log mass of N(0, 1) on [lo, hi], computed on the side of 0 where the tail is thin."""
    flip = lo + hi > 0
    a, b = np.where(flip, -hi, lo), np.where(flip, -lo, hi)  # now a + b <= 0: both masses are left tails
    la, lb = log_ndtr(a), log_ndtr(b)
    with np.errstate(divide="ignore"):
        logz = lb + np.log1p(-np.exp(np.minimum(la - lb, 0.0)))
    ra = np.exp(-0.5 * a * a - _LOG_SQRT_2PI - logz)
    rb = np.exp(-0.5 * b * b - _LOG_SQRT_2PI - logz)
    mean = ra - rb
    var = np.clip(1.0 + a * ra - b * rb - mean * mean, 0.0, 1.0)
    return np.where(flip, -mean, mean), var, logz


def information(eta: np.ndarray, sd: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Expected Fisher information about eta of one comparison (outcomes: first wins, tie, second wins),
    times sd^2: what it says about a rater's scale relative to a Gaussian rating's 1 (2/pi at eta = 0 without ties)."""
    up, low = (delta - eta) / sd, (-delta - eta) / sd
    win = np.exp(-0.5 * up * up - _LOG_SQRT_2PI) * _SQRT_2_OVER_PI / erfcx(up * _INV_SQRT2)  # phi^2 / (1 - Phi)
    lose = np.exp(-0.5 * low * low - _LOG_SQRT_2PI) * _SQRT_2_OVER_PI / erfcx(-low * _INV_SQRT2)  # phi^2 / Phi
    out: np.ndarray = win + lose
    some = delta > 0
    if some.any():  # the tie's term: (phi(low) - phi(up))^2 / P(tie), phi(up) = phi(low) exp(2 delta eta / sd^2)
        _, _, logz = _interval(low[some], up[some])
        x = 2.0 * delta[some] * eta[some] / sd[some] ** 2
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            log_gap = np.where(x > 0, x + np.log1p(-np.exp(-np.abs(x))), np.log(-np.expm1(np.minimum(x, 0.0))))
            out[some] += np.exp(-low[some] ** 2 - 2 * _LOG_SQRT_2PI + 2.0 * log_gap - logz)
    return out


# --- the pairs in the rater model: Gaussian belief propagation over the augmented differences -----------------

def cavities(c: Comparisons, m: np.ndarray, v: np.ndarray, messages: np.ndarray) -> np.ndarray:
    """(p, 4): mean and variance of q_first, then of q_second, given everything but this comparison (the
    posterior without the message it sent; `messages` as `send` returns them)."""
    p1 = 1.0 / v[c.first] - messages[:, 0]
    p2 = 1.0 / v[c.second] - messages[:, 2]
    return np.stack([(m[c.first] / v[c.first] - messages[:, 1]) / p1, 1.0 / p1,
                     (m[c.second] / v[c.second] - messages[:, 3]) / p2, 1.0 / p2], axis=1)


def send(a: np.ndarray, noise: np.ndarray, z: np.ndarray, cav: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(p, 4): the precision and precision-weighted mean of q each comparison sends its first answer, then its
    second, given d = z (the E-step's) and the other answer's cavity: a q_1 = z + a q_2 + e, e ~ N(0, noise)."""
    m1, v1, m2, v2 = cav.T
    t1, t2 = w * a / (noise + a * a * v2), w * a / (noise + a * a * v1)
    return np.stack([t1 * a, t1 * (z + a * m2), t2 * a, t2 * (a * m1 - z)], axis=1)


def moment_precision(a: np.ndarray, noise: np.ndarray, delta: np.ndarray, tie: np.ndarray, cav: np.ndarray,
                     w: np.ndarray) -> np.ndarray:
    """(p, 2): the precision a comparison adds to q_first and q_second counted by what its outcome says
    (assumed-density filtering, as `raters._thumbs_variance` does for thumbs), not by its augmented d,
    which would count a preference as if the size of the difference had been seen."""
    m1, v1, m2, v2 = cav.T
    total = noise + a * a * (v1 + v2)
    _, var, _ = truncated(a * (m1 - m2), np.sqrt(total), delta, tie)
    out = np.empty((len(a), 2))
    for k, vk in enumerate((v1, v2)):
        f = np.clip(a * a * vk / total * (1.0 - var), 0.0, 1.0 - 1e-9)
        out[:, k] = w * f / (vk * (1.0 - f))
    return out


def tie_thresholds(eta: np.ndarray, sd: np.ndarray, tie: np.ndarray, weight: np.ndarray, rater: np.ndarray,
                   n_raters: int, iters: int = 24) -> np.ndarray:
    """Per rater, the threshold delta at which their comparisons' predicted share of ties (d ~ N(eta, sd^2),
    what the other ratings say about each pair) matches their own share, shrunk toward the population's
    with TIE_PSEUDO pseudo-comparisons. 0 for everyone when nobody tied. Bisection, all raters at once."""
    if not tie.any():
        return np.zeros(n_raters)
    n = np.bincount(rater, weight, n_raters)
    share = float((weight * tie).sum() / weight.sum())
    target = (np.bincount(rater, weight * tie, n_raters) + TIE_PSEUDO * share) / (n + TIE_PSEUDO)
    lo, hi = np.zeros(n_raters), np.full(n_raters, 4.0 * float(np.max(sd)) + 4.0)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        d = mid[rater]
        p = ndtr((d - eta) / sd) - ndtr((-d - eta) / sd)
        predicted = np.bincount(rater, weight * p, n_raters) / np.maximum(n, 1e-12)
        low = predicted < target
        lo, hi = np.where(low, mid, lo), np.where(low, hi, mid)
    return np.maximum(0.5 * (lo + hi), MIN_DELTA)


@dataclass
class PairState:
    """The comparisons' part of the rater model while it is fitted (`raters.fit_raters` drives it): per pair
    the E-step's d, the cavities of its two answers and the messages it last sent them; per rater the tie
    threshold. Rater parameters come in as arrays over raters: a (scale), s2 (noise; a pair's is 2 s2)."""

    c: Comparisons
    wq: np.ndarray  # (p,) weight on quality: the pair's weight, 0 for a flagged rater's
    z: np.ndarray  # (p,) E[d | outcome]
    cav: np.ndarray  # (p, 4) mean and variance of q_first and of q_second without this pair
    delta: np.ndarray  # (R,) tie thresholds
    msg: np.ndarray  # (p, 4) what `quality` last sent

    @classmethod
    def start(cls, c: Comparisons, rater_weight: np.ndarray, m: np.ndarray, v: np.ndarray, a: np.ndarray,
              s2: np.ndarray, warm: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> PairState:
        """From a start of q (m, v) and rater parameters, or `warm` = (z, cavities, thresholds) of an earlier fit."""
        r = c.rater
        wq = c.weight * np.asarray(rater_weight, float)[r]
        if warm is not None and len(warm[0]) == len(c) and len(warm[2]) == len(a):
            z, cav, delta = (x.copy() for x in warm)
            return cls(c, wq, z, cav, delta, np.zeros((len(c), 4)))
        z = np.where(c.tie, 0.0, 0.4)  # E[d | a win] for a typical rater, before any fit
        cav = np.stack([m[c.first], v[c.first], m[c.second], v[c.second]], axis=1)
        state = cls(c, wq, z, cav, np.zeros(len(a)), np.zeros((len(c), 4)))
        state.delta = state.thresholds(a, s2)
        return state

    def noise(self, s2: np.ndarray) -> np.ndarray:
        return 2.0 * s2[self.c.rater]

    def thresholds(self, a: np.ndarray, s2: np.ndarray) -> np.ndarray:
        ar = a[self.c.rater]
        dm, dv = self.cav[:, 0] - self.cav[:, 2], self.cav[:, 1] + self.cav[:, 3]
        return tie_thresholds(ar * dm, np.sqrt(self.noise(s2) + ar * ar * dv), self.c.tie, self.c.weight,
                              self.c.rater, len(a))

    def rater_step(self, a: np.ndarray, s2: np.ndarray, naive_var: float | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Each rater's terms of the scale's regression, d on E[q_first - q_second | the others] (no offset):
        sum w dm^2 and sum w dm z, w = weight / (2 s2 + a^2 Var). `naive_var`: the first step's plain weights."""
        r, R = self.c.rater, len(a)
        dm, dv = self.cav[:, 0] - self.cav[:, 2], self.cav[:, 1] + self.cav[:, 3]
        wk = self.c.weight / (self.noise(s2) + a[r] ** 2 * dv) if naive_var is None else self.c.weight / naive_var
        return np.bincount(r, wk * dm * dm, R), np.bincount(r, wk * dm * self.z, R)

    def quality(self, a: np.ndarray, s2: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray]:
        """Precision and precision-weighted mean the pairs add to each answer's q (their messages)."""
        self.msg = send(a[self.c.rater], self.noise(s2), self.z, self.cav, self.wq)
        f, s = self.c.first, self.c.second
        return (np.bincount(f, self.msg[:, 0], n_items) + np.bincount(s, self.msg[:, 2], n_items),
                np.bincount(f, self.msg[:, 1], n_items) + np.bincount(s, self.msg[:, 3], n_items))

    def update(self, m: np.ndarray, v: np.ndarray, a: np.ndarray, s2: np.ndarray) -> None:
        """After a quality step: the cavities, the E-step's d (a truncated normal around a (m_1 - m_2)), the
        tie thresholds."""
        self.cav = cavities(self.c, m, v, self.msg)
        ar, sd = a[self.c.rater], np.sqrt(self.noise(s2))
        eta = ar * (m[self.c.first] - m[self.c.second])
        mean, _, _ = truncated(eta, sd, self.delta[self.c.rater], self.c.tie)
        self.z = eta + sd * mean
        self.delta = self.thresholds(a, s2)

    def outcome_precision(self, a: np.ndarray, s2: np.ndarray, n_items: int) -> np.ndarray:
        """Per answer: the precision the pairs add counted by their outcomes, less what their messages added."""
        ar = a[self.c.rater]
        adf = moment_precision(ar, self.noise(s2), self.delta[self.c.rater], self.c.tie, self.cav, self.wq)
        f, s = self.c.first, self.c.second
        out: np.ndarray = (np.bincount(f, adf[:, 0] - self.msg[:, 0], n_items)
                           + np.bincount(s, adf[:, 1] - self.msg[:, 2], n_items))
        return out

    def information(self, a: np.ndarray, s2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per pair: the information weight of its outcome (relative to a Gaussian rating's), its total variance
        2 s2 + a^2 Var, and the others' mean and variance of q_first - q_second."""
        ar = a[self.c.rater]
        dm, dv = self.cav[:, 0] - self.cav[:, 2], self.cav[:, 1] + self.cav[:, 3]
        total = self.noise(s2) + ar * ar * dv
        return information(ar * dm, np.sqrt(total), self.delta[self.c.rater]), total, dm, dv
