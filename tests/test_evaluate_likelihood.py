"""The gate's likelihood passes compute the LM head only where the answer is (issue 14); they must give what
the whole-sequence path gives: each answer's log-probability and the token KL, one sequence at a time with
the logits at every position, on a tiny random Llama whose prompts and answers differ in length."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ratingloop.evaluate.likelihood import answer_logprobs, encode, token_kl
from tiny import tiny_causal_lm, tiny_tokenizer

PROMPTS = [[{"role": "user", "content": q}] for q in
           ["Refund?", "How long does shipping to Norway take for a parcel of books?", "Hi",
            "Can I change the address on an order that already shipped last week?", "Colour?"]]
ANSWERS = ["Within five days of the return.", "Two to four days.", "Hello! How can I help you today with your order?",
           "No.", "The blue one, which ships from the warehouse in Oslo tomorrow morning."]


@pytest.fixture(scope="module")
def pair() -> tuple[object, object, object]:
    tok = tiny_tokenizer([m["content"] for p in PROMPTS for m in p] + ANSWERS)
    return tiny_causal_lm(tok, seed=0).eval(), tiny_causal_lm(tok, seed=1).eval(), tok


def _reference(model: object, tok: object) -> list[torch.Tensor]:
    """Log-softmax at the positions predicting each answer token, one unpadded sequence at a time."""
    out = []
    with torch.inference_mode():
        for ids, start in encode(tok, PROMPTS, ANSWERS, 1024):
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()  # type: ignore[operator]
            out.append(torch.log_softmax(logits, -1)[start - 1:len(ids) - 1])
    return out


@pytest.mark.parametrize("batch_size", [1, 3, 5])
def test_answer_logprobs_equal_the_whole_sequence_path(pair: tuple, batch_size: int) -> None:
    model, _, tok = pair
    total, count = answer_logprobs(model, tok, PROMPTS, ANSWERS, batch_size=batch_size)
    seqs = encode(tok, PROMPTS, ANSWERS, 1024)
    for i, (logp, (ids, start)) in enumerate(zip(_reference(model, tok), seqs, strict=True)):
        assert count[i] == len(ids) - start
        assert total[i] == pytest.approx(float(logp.gather(-1, torch.tensor(ids[start:])[:, None]).sum()), abs=1e-4)
    assert len(set(count.tolist())) > 2  # the answers' lengths differ, so left padding was exercised


def test_token_kl_equals_the_whole_sequence_path(pair: tuple) -> None:
    p, q, tok = pair
    total, count = token_kl(p, q, tok, PROMPTS, ANSWERS, batch_size=3)
    expected = [float((a.exp() * (a - b)).sum()) for a, b in zip(_reference(p, tok), _reference(q, tok), strict=True)]
    np.testing.assert_allclose(total, expected, rtol=1e-4, atol=1e-5)
    assert (total > 0).all()
    same, _ = token_kl(p, p, tok, PROMPTS, ANSWERS, batch_size=3)
    np.testing.assert_allclose(same, 0.0, atol=1e-6)
