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


def _logits(model: Any, seqs: list[tuple[list[int], int]], idx: list[int], pad: int) -> Any:
    """Log-softmax over the vocabulary at every position, fp32, for the sequences `idx` (right padded)."""
    import torch

    device = next(model.parameters()).device
    width = max(len(seqs[i][0]) for i in idx)
    ids = torch.full((len(idx), width), pad, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        ids[row, :len(seqs[i][0])] = torch.tensor(seqs[i][0])
        mask[row, :len(seqs[i][0])] = 1
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
    return torch.log_softmax(logits, dim=-1)


def answer_logprobs(model: Any, tokenizer: Any, prompts: Sequence[Messages], answers: Sequence[str], *,
                    batch_size: int = 4, max_length: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(sum of the answer tokens' log-probabilities, number of answer tokens) per answer."""
    import torch

    seqs = encode(tokenizer, prompts, answers, max_length)
    total, count = np.zeros(len(seqs)), np.zeros(len(seqs), dtype=np.int64)
    pad = _pad(tokenizer)
    with torch.inference_mode():
        for idx in _batches(seqs, batch_size):
            logp = _logits(model, seqs, idx, pad)
            for row, i in enumerate(idx):
                ids, start = seqs[i]
                targets = torch.tensor(ids[start:], device=logp.device)
                # the logits at position k predict token k + 1
                total[i] = float(logp[row, start - 1:len(ids) - 1].gather(-1, targets[:, None]).sum())
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
            lp, lq = _logits(model_p, seqs, idx, pad), _logits(model_q, seqs, idx, pad)
            for row, i in enumerate(idx):
                ids, start = seqs[i]
                a, b = lp[row, start - 1:len(ids) - 1], lq[row, start - 1:len(ids) - 1]
                total[i] = float((a.exp() * (a - b)).sum().clamp_min(0.0))
                count[i] = len(ids) - start
    return total, count


def _pad(tokenizer: Any) -> int:
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
