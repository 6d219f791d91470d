"""Stage 6, evaluate: what two loaded causal LMs say about the same answers - each answer's log-likelihood,
and the token-level KL divergence between them. Used by the human-ratings judge and the KL guard.

An answer is scored as the model would have produced it: the chat template with the generation
prompt, then the answer's tokens and the end-of-turn (eos) token. Sequences longer than
`max_length` lose the prompt's beginning, never the answer. Forward passes run in fp32 without
gradients; the models must share one tokenizer (versions of one base do).
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

Messages = Sequence[dict[str, str]]


def encode(tokenizer: Any, prompts: Sequence[Messages], answers: Sequence[str],
           max_length: int) -> list[tuple[list[int], int]]:
    """(token ids, index of the first answer token) per (prompt, answer)."""
    out = []
    eos = tokenizer.eos_token_id
    for prompt, answer in zip(prompts, answers, strict=True):
        text = tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
        p = tokenizer(text, add_special_tokens=False)["input_ids"]
        a = tokenizer(answer, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
        a = a[:max_length - 1]
        p = p[-(max_length - len(a)):]
        out.append((list(p) + list(a), len(p)))
    return out


def _batches(seqs: list[tuple[list[int], int]], batch_size: int) -> Iterator[list[int]]:
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))  # similar lengths: little padding
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def _answer_logps(model: Any, seqs: list[tuple[list[int], int]], idx: list[int], pad: int) -> list[Any]:
    """Per sequence of `idx`: the log-softmax over the vocabulary at each position that predicts an answer
    token ([answer tokens, vocab], fp32), in the order of `idx`.

    The LM head and the log-softmax, over a 49k-token vocabulary the largest costs of a forward pass, run
    only where the answer is: the batch is LEFT padded so every answer ends in the last column, and
    `logits_to_keep` keeps the columns of the longest answer (position ids count real tokens only).
    """
    import torch

    device = next(model.parameters()).device
    width = max(len(seqs[i][0]) for i in idx)
    keep = max(len(seqs[i][0]) - seqs[i][1] for i in idx) + 1  # the logits at position k predict token k + 1
    ids = torch.full((len(idx), width), pad, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        n = len(seqs[i][0])
        ids[row, width - n:] = torch.tensor(seqs[i][0])
        mask[row, width - n:] = 1
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                   logits_to_keep=keep).logits
    out = []
    for row, i in enumerate(idx):
        answer = len(seqs[i][0]) - seqs[i][1]  # columns [-answer-1, -1) predict the answer's tokens
        out.append(torch.log_softmax(logits[row, keep - answer - 1:keep - 1].float(), dim=-1))
    return out


def answer_logprobs(model: Any, tokenizer: Any, prompts: Sequence[Messages], answers: Sequence[str], *,
                    batch_size: int = 4, max_length: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(sum of the answer tokens' log-probabilities, number of answer tokens) per answer."""
    import torch

    seqs = encode(tokenizer, prompts, answers, max_length)
    total, count = np.zeros(len(seqs)), np.zeros(len(seqs), dtype=np.int64)
    pad = _pad(tokenizer)
    with torch.inference_mode():
        for idx in _batches(seqs, batch_size):
            for i, logp in zip(idx, _answer_logps(model, seqs, idx, pad), strict=True):
                ids, start = seqs[i]
                targets = torch.tensor(ids[start:], device=logp.device)
                total[i] = float(logp.gather(-1, targets[:, None]).sum())
                count[i] = len(ids) - start
    return total, count


def token_kl(model_p: Any, model_q: Any, tokenizer: Any, prompts: Sequence[Messages], answers: Sequence[str], *,
             batch_size: int = 4, max_length: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(sum over answer positions of KL(p || q) of the next-token distributions, number of positions) per answer.

    The exact KL of each position's full next-token distribution along the given answers (not a
    one-sample estimate), so it is never negative and is 0 for identical models.
    """
    import torch

    seqs = encode(tokenizer, prompts, answers, max_length)
    total, count = np.zeros(len(seqs)), np.zeros(len(seqs), dtype=np.int64)
    pad = _pad(tokenizer)
    with torch.inference_mode():
        for idx in _batches(seqs, batch_size):
            lp, lq = _answer_logps(model_p, seqs, idx, pad), _answer_logps(model_q, seqs, idx, pad)
            for i, a, b in zip(idx, lp, lq, strict=True):
                total[i] = float((a.exp() * (a - b)).sum().clamp_min(0.0))
                count[i] = len(seqs[i][0]) - seqs[i][1]
    return total, count


def _pad(tokenizer: Any) -> int:
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
