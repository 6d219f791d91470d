"""Tiny, randomly initialised Llama models and a local tokenizer, for fast offline training tests.

The default model (SmolLM2-135M-Instruct) is a Llama; these are the same architecture at toy size
(hidden 32, 2 layers, 4 heads), so a TRL trainer runs one step in about a second on a CPU. There is
no hub access: the tokenizer is a byte-level BPE trained here on the given texts (every byte is in
its alphabet, so nothing is ever unknown), wrapped in PreTrainedTokenizerFast with a ChatML-style
chat template. Reused by the build tests and the training tests:

    tok = tiny_tokenizer(texts)
    model = tiny_causal_lm(tok)          # LlamaForCausalLM
    scorer = tiny_reward_model(tok)      # LlamaForSequenceClassification, num_labels=1
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

# No network in tests: transformers, datasets and TRL must never try the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|pad|>", "<|im_start|>", "<|im_end|>"]


def tiny_tokenizer(texts: Iterable[str], vocab_size: int = 400) -> Any:
    """A byte-level BPE tokenizer trained on `texts`, with pad/eos and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts) + ["user assistant system"], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|im_end|>",
                                   bos_token=None, unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _config(tok: Any, **extra: Any) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
                       tie_word_embeddings=True, **extra)


def tiny_causal_lm(tok: Any, seed: int = 0) -> Any:
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(_config(tok))


def tiny_reward_model(tok: Any, seed: int = 0) -> Any:
    import torch
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(seed)
    return LlamaForSequenceClassification(_config(tok, num_labels=1))


def texts_of(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Every string in conversational rows (prompt, completion, chosen, rejected), to train a tokenizer."""
    out = []
    for row in rows:
        for key in ("prompt", "completion", "chosen", "rejected"):
            for m in row.get(key) or []:
                out.append(m["content"])
    return out


def trainer_args() -> dict[str, Any]:
    """TrainingArguments shared by every TRL config in tests: one CPU step, nothing saved or reported."""
    return {"max_steps": 1, "per_device_train_batch_size": 2, "report_to": [], "use_cpu": True, "bf16": False,
            "save_strategy": "no", "logging_steps": 1, "gradient_checkpointing": False, "disable_tqdm": True,
            "dataloader_num_workers": 0}


# A few chat texts for generation tests; the varied model below answers them differently from each other.
CHAT_TEXTS = ["What is the capital of France?", "Paris is the capital of France.", "Tell me a joke about cats.",
              "Why is the sky blue? Rayleigh scattering of sunlight.", "Hello there, how are you today?"]


def save_varied_base(path: Path) -> Path:
    """A tiny random Llama whose greedy answers vary, saved as a model folder. At the default init the tied
    embeddings dominate and greedy decoding just repeats the last prompt token (whitespace); larger layer
    weights make answers varied, so generation tests mean something."""
    import torch

    tok = tiny_tokenizer(CHAT_TEXTS)
    model = tiny_causal_lm(tok)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2 and "embed" not in name:
                param.normal_(0, 0.5)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def save_random_adapter(base: Path, path: Path, seed: int = 1) -> Path:
    """A LoRA adapter of `base` with random B as well (init_lora_weights=False), so it visibly changes the
    base's answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ratingloop.models import quiet_checkpointing_deprecation

    torch.manual_seed(seed)
    with quiet_checkpointing_deprecation():
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
            r=4, lora_alpha=32, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False,
            task_type="CAUSAL_LM"))
    model.save_pretrained(path)
    return path
