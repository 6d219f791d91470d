"""Stage 5, train: what every recipe's TRL trainer shares - its TrainingArguments, its LoRA config, its base.

    model, tokenizer = load_base(resolved)            # the causal LM in fp32 and its chat tokenizer
    model, tokenizer = load_model(resolved, cfg)      # a recipe's `load_model`: bf16 frozen weights for LoRA
    model = warm_start(model, cfg, resolved.weights_path)  # run.py: under train.init_adapter, that adapter, trainable
    args = KTOConfig(**trainer_args(cfg, out_dir, progress), desirable_weight=...)
    trainer = fast(quiet(KTOTrainer(model=model, args=args, ..., peft_config=lora_config(cfg))), cfg)

Each recipe (sft.py, kto.py, dpo.py) adds only its method's own settings; run.py does the rest.
The speed settings (`train.bf16`, `train.group_by_length`, `train.lora_dropout`, no activation
checkpointing) were measured on the default model on a 2-core AMX CPU: bench/train.py, bench/results-train.md.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from ratingloop.errors import ConfigError
from ratingloop.models import ModelLoadError, ResolvedModel, cpu_has_fast_bf16, quiet_checkpointing_deprecation
from ratingloop.train.config import TrainConfig
from ratingloop.train.lm_head import fold_tiles_lean

log = logging.getLogger(__name__)


def trainer_args(cfg: TrainConfig, out_dir: Path, progress: bool) -> dict[str, Any]:
    """Keyword arguments every TRL config (SFTConfig, KTOConfig, DPOConfig) takes, from `cfg`."""
    import torch
    from transformers import set_seed

    set_seed(cfg.seed)  # before TRL wraps the model: the LoRA A matrices are drawn then
    project_answer_positions_only()
    fold_tiles_lean()
    return dict(
        output_dir=str(out_dir / "checkpoints"),
        report_to=reporters(),
        learning_rate=cfg.learning_rate, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, max_length=cfg.max_length,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a value below 1 is a fraction of the steps
        seed=cfg.seed, bf16=use_bf16(cfg), logging_steps=cfg.logging_steps, logging_first_step=True,
        save_strategy="steps" if cfg.save_steps else "no", save_steps=cfg.save_steps or 500,
        save_total_limit=cfg.save_total_limit, eval_strategy="no", dataloader_num_workers=0,
        disable_tqdm=True,  # with `progress`, run.py adds one rich bar (train/progress.py) in tqdm's place
        # TRL turns activation checkpointing on by default; it recomputes every layer's forward (~30% more
        # compute) to save memory a 135M model on CPU does not need
        activation_checkpointing=cfg.activation_checkpointing, include_num_input_tokens_seen=True,
        dataloader_pin_memory=torch.cuda.is_available(),
        # a CPU-only machine: without use_cpu, torchrun / accelerate launch would not set up CPU (gloo) DDP
        use_cpu=not torch.cuda.is_available(),
    )


def project_answer_positions_only() -> None:
    """Make TRL's fused LM head project only the positions the loss reads on a CPU too, as it does on a GPU.

    `trl.trainer.utils.add_fused_lm_head` (every TRL trainer's log-probabilities, and our pointwise trainer's)
    gathers the labelled positions before the 49k-column LM head only where Triton runs (`_use_triton`); on any
    other device it projects every position, prompt and padding included, because on a compiled device (XLA,
    Neuron) a count that changes per batch would recompile the graph. A CPU runs eagerly, so the gather costs
    nothing there; each kept position's log-probability is the same number either way (tests/test_train_lm_head.py).
    Measured on the default model (bench/results.md, "Faster rounds"): a KTO step 20.3 s -> 11.9 s on 2 AVX2 cores.
    Idempotent; a TRL without that hook is left as it is (the test fails, so an upgrade that moves it is seen).
    """
    try:
        import trl.trainer.utils as trl_utils
    except ImportError:
        return
    decides = getattr(trl_utils, "_use_triton", None)
    if decides is None or getattr(decides, "ratingloop_cpu", False):
        return

    def compact(device: Any) -> bool:
        return device.type == "cpu" or bool(decides(device))

    compact.ratingloop_cpu = True  # type: ignore[attr-defined]
    trl_utils._use_triton = compact


def reporters() -> list[str] | str:
    """Where metrics go besides log.jsonl: TensorBoard when installed, W&B when installed and configured."""
    found = [] if importlib.util.find_spec("tensorboard") is None else ["tensorboard"]
    if importlib.util.find_spec("wandb") is not None and (os.environ.get("WANDB_API_KEY")
                                                          or os.environ.get("WANDB_MODE") == "offline"):
        found.append("wandb")
    return found or "none"


def lora_config(cfg: TrainConfig, task_type: str = "CAUSAL_LM") -> Any:
    """The PEFT LoRA config the trainer wraps the base with (`peft_config=`); None for full fine-tuning, and
    under train.init_adapter, whose adapter `warm_start` has put on the model already (TRL then trains it as it is)."""
    if not cfg.lora or cfg.init_adapter:
        return None
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.modules(), task_type=task_type)


def warm_start(model: Any, cfg: TrainConfig, base_path: Path) -> Any:
    """`model` (the base loaded from `base_path`) under train.init_adapter's LoRA adapter, trainable: a PeftModel
    the recipes' trainers take as it is (`lora_config` is None then). `model` itself when init_adapter is empty.

    The adapter's own LoraConfig is what trains (a line is logged where train.lora_r, lora_alpha, lora_dropout or
    target_modules say otherwise). Its weights load in fp32 over a base cast to bf16, as a fresh LoRA's would.
    """
    if not cfg.init_adapter:
        return model
    problems = cfg.init_adapter_problems()  # checked at the start of a run; a resumed run checks again here
    if problems:
        raise ConfigError("train config: " + "; ".join(problems))
    key = f"train.init_adapter={cfg.init_adapter}"
    check_adapter_base(cfg.init_adapter, base_path)
    all_linear = linear_layer_names(model)
    from peft import PeftModel

    try:
        with quiet_checkpointing_deprecation():
            wrapped = PeftModel.from_pretrained(model, str(Path(cfg.init_adapter).expanduser()), is_trainable=True)
    except Exception as e:  # noqa: BLE001 - any loader failure is reported with the folder
        raise ModelLoadError(f"{key}: cannot apply it to {base_path} ({type(e).__name__}: {e})") from e
    own = wrapped.peft_config["default"]
    differ = lora_differences(own, cfg, all_linear)
    if differ:
        log.warning("%s: training the adapter's own LoRA (%s), not train.* (%s)", key,
                    ", ".join(f"{k}={a}" for k, (a, _) in differ.items()),
                    ", ".join(f"{k}={b}" for k, (_, b) in differ.items()))
    return wrapped


def check_adapter_base(adapter: str, base_path: Path) -> None:
    """Raise ConfigError unless the adapter was trained on the weights in `base_path` (its adapter_config.json's
    base_model_name_or_path, resolved as `resolve_model` resolves an adapter's base)."""
    from ratingloop.models import resolve_model

    key = f"train.init_adapter={adapter}"
    try:
        resolved = resolve_model(Path(adapter).expanduser(), pull=False)
    except ModelLoadError as e:
        raise ConfigError(f"{key}: its base cannot be found ({e}); it must be this run's base, {base_path}") from e
    if resolved.kind != "adapter":
        raise ConfigError(f"{key}: is not a PEFT adapter folder (no adapter_config.json)")
    if resolved.weights_path.resolve() != Path(base_path).resolve():
        raise ConfigError(f"{key}: was trained on the base {resolved.weights_path}, but this run's base is "
                          f"{base_path}; train with --base {resolved.weights_path}, or leave train.init_adapter "
                          "empty for a fresh LoRA")


def linear_layer_names(model: Any) -> set[str]:
    """The last name of each linear layer but the LM head: what PEFT's "all-linear" adapts."""
    import torch

    head = model.get_output_embeddings()
    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module is not head}


def lora_differences(own: Any, cfg: TrainConfig, all_linear: set[str]) -> dict[str, tuple[Any, Any]]:
    """key -> (the adapter's value, train.KEY's) where an adapter's LoraConfig `own` and `cfg` differ."""
    differ: dict[str, tuple[Any, Any]] = {}
    for key, theirs in (("lora_r", own.r), ("lora_alpha", own.lora_alpha), ("lora_dropout", own.lora_dropout)):
        if theirs != getattr(cfg, key):
            differ[key] = (theirs, getattr(cfg, key))
    targets = own.target_modules
    wanted = cfg.modules()
    if isinstance(targets, str) or targets is None:  # a regex or PEFT's shorthand, as given
        same = targets == (wanted if isinstance(wanted, str) else ",".join(wanted))
        shown = str(targets)
    else:  # PEFT stores names, or whole module paths for "all-linear"
        names = {str(t).rsplit(".", 1)[-1] for t in targets}
        same = names == (all_linear if wanted == "all-linear" else set(wanted))
        shown = ",".join(sorted(names))
    if not same:
        differ["target_modules"] = (shown, cfg.target_modules)
    return differ


def save_model(model: Any, out_dir: Path) -> None:
    """The trained model to `out_dir`: the LoRA adapter alone (not the frozen "ref" copy TRL keeps of a
    train.init_adapter start), or the whole model under train.lora=false."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model.save_pretrained(str(out_dir), selected_adapters=[model.active_adapter])
    else:
        model.save_pretrained(str(out_dir))


def keep_start_as_reference(model: Any) -> None:
    """Add a frozen copy "ref" of a pretrained adapter (a train.init_adapter start), as TRL's KTO, DPO and GRPO
    trainers do for a PeftModel without a ref_model, so a reference is the start, not the bare base."""
    from peft import PeftModel

    if not isinstance(model, PeftModel) or "default" not in model.peft_config or "ref" in model.peft_config:
        return
    model.add_adapter("ref", model.peft_config["default"])
    for name, param in model.named_parameters():
        if ".default." in name:
            model.get_parameter(name.replace(".default.", ".ref.")).data.copy_(param.data)


def chat_tokenizer(tokenizer: Any, path: Path, reads: str) -> Any:
    """`tokenizer`, checked to have a chat template (what `reads` needs) and padding with eos if it had no pad."""
    if not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError(f"--base {path}: the tokenizer has no chat template, and {reads} chat messages; give an "
                             "instruct/chat model")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def use_bf16(cfg: TrainConfig) -> bool:
    """`train.bf16` where bf16 matmuls are fast: a CUDA GPU that has them, or a CPU with AMX or AVX512-BF16
    (elsewhere a CPU emulates bf16, slower than fp32)."""
    import torch

    if not cfg.bf16:
        return False
    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    return cpu_has_fast_bf16()


def load_base(resolved: ResolvedModel) -> tuple[Any, Any]:
    """The base in fp32 (LoRA weights train in fp32; `cfg.bf16` autocasts the matmuls) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolved.weights_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - any loader failure is reported with the folder
        raise ModelLoadError(f"--base {path}: cannot load a causal LM and its tokenizer ({type(e).__name__}: {e}); "
                             "give a Hugging Face model folder, or run `ratingloop model pull` for the default"
                             ) from e
    return model, chat_tokenizer(tokenizer, path, "the training rows are")


def load_model(resolved: ResolvedModel, cfg: TrainConfig) -> tuple[Any, Any]:
    """The base and its tokenizer (`load_base`), its frozen weights cast to bf16 for a LoRA run under
    `train.bf16`: autocast would run their matmuls in bf16 anyway, and casting once here saves a cast per
    layer per step and half the memory. The LoRA weights PEFT adds stay fp32, so small updates are not lost
    to rounding; full fine-tuning (train.lora=false) keeps fp32 weights and autocasts."""
    model, tokenizer = load_base(resolved)
    if cfg.lora and use_bf16(cfg):
        import torch

        model = model.to(torch.bfloat16)
    return model, tokenizer


def fast(trainer: Any, cfg: TrainConfig) -> Any:
    """The trainer with the two CPU speed-ups TRL has no argument for; neither changes what a batch's loss is.

    `train.group_by_length`: batches of similar length (LengthBuckets). Chat answers vary in length, so a
    random batch of OASST answers is ~30% padding, which a CPU computes like any other token. Where rows carry a
    number (wsft's weight, dro's score), each batch keeps liked and disliked rows mixed as the data has them:
    liked and disliked answers often differ in length - the very thing users rate - and batches grouped by
    length alone came out all-liked or all-disliked, so a short run alternated directions (bench/results.md).
    bf16 LoRA: PEFT casts each adapted layer's input to the adapter's fp32 and back; under autocast the
    adapter's matmuls run in bf16 anyway, so the casts only copy activations.
    """
    if cfg.group_by_length:
        group_by_length(trainer, cfg.batch_size * cfg.grad_accum)
    if cfg.lora and use_bf16(cfg):
        from peft.tuners.lora import LoraLayer

        for module in trainer.model.modules():
            if isinstance(module, LoraLayer):
                module.cast_input_dtype_enabled = False
    return trainer


def group_by_length(trainer: Any, batch_size: int) -> None:
    """Draw the trainer's batches from rows of similar length (tokenized: input_ids, or prompt + answer ids),
    stratified by the row's rating where it has one."""
    data = trainer.train_dataset
    if data is None or not hasattr(data, "column_names"):
        return
    columns = data.column_names
    if "input_ids" in columns:
        lengths = [len(x) for x in data["input_ids"]]
    else:
        answers = [c for c in ("completion_ids", "chosen_ids", "rejected_ids") if c in columns]
        if "prompt_ids" not in columns or not answers:
            return
        longest = [max(map(len, xs)) for xs in zip(*(data[c] for c in answers), strict=True)]
        lengths = [len(p) + a for p, a in zip(data["prompt_ids"], longest, strict=True)]
    strata = rating_strata(data)
    # the Trainer builds its train DataLoader's sampler with this
    trainer._get_train_sampler = lambda train_dataset=None: LengthBuckets(lengths, batch_size, strata=strata)


def rating_strata(data: Any) -> list[bool] | None:
    """Which rows are the liked ones: wsft's positive `weight` (pulled up, not pushed down), dro's `score` above
    the mean; None where rows carry no rating (sft, dpo: every row is liked, or a pair) and for kto, which keeps
    plain length grouping: the loop's defaults were measured with it, mixing cost its batches padding (6% -> 14%),
    and in the one CI run with kto mixed the personal default-model test's minority adapter was rejected
    (bench/results.md, issue 14's sixth part)."""
    columns = data.column_names
    if "weight" in columns:
        return [float(x) > 0 for x in data["weight"]]
    if "score" in columns:
        scores = [float(x) for x in data["score"]]
        mean = sum(scores) / len(scores) if scores else 0.0
        return [x > mean for x in scores]
    return None


class LengthBuckets:
    """Row indices for a DataLoader, in batches of similar length: shuffle the rows, sort each window of
    `window` batches' worth by length, cut it into batches, shuffle the batches (a short last batch goes last,
    so every batch the DataLoader cuts is one of these). transformers' LengthGroupedSampler keeps 4 windows
    at least, which leaves a few hundred rows ~25% padding; here a window is 64 batches.

    With `strata` (a class per row: liked or not), a window is sorted by each row's length *rank within its
    class* (as a fraction of the class), so the classes interleave along it in proportion and every batch holds
    each class's rows of about the same length quantile: the data's mix in every batch, within a row.

    The shuffles draw from torch's global RNG, which the Trainer seeds, so a resumed run replays its batches.
    """

    def __init__(self, lengths: list[int], batch_size: int, window: int = 64,
                 strata: list[bool] | None = None) -> None:
        self.lengths, self.batch_size, self.window = lengths, batch_size, window * batch_size
        self.strata = strata

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Any:
        import torch

        order = torch.randperm(len(self.lengths)).tolist()
        batches = []
        for start in range(0, len(order), self.window):
            rows = self._sorted(order[start:start + self.window])
            batches += [rows[i:i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        full = [b for b in batches if len(b) == self.batch_size]
        short = [b for b in batches if len(b) < self.batch_size]
        for k in torch.randperm(len(full)).tolist():
            yield from full[k]
        for batch in short:
            yield from batch

    def _sorted(self, rows: list[int]) -> list[int]:
        by_length = sorted(rows, key=self.lengths.__getitem__)
        if self.strata is None:
            return by_length
        classes: dict[bool, list[int]] = {}
        for i in by_length:
            classes.setdefault(self.strata[i], []).append(i)
        # the middle of each row's slot within its class; ties between classes fall to the rarer class first
        place = {i: ((k + 0.5) / len(members), len(members)) for members in classes.values()
                 for k, i in enumerate(members)}
        return sorted(rows, key=place.__getitem__)


def quiet(trainer: Any) -> Any:
    """The trainer without PrinterCallback, which prints log dicts to stdout (stdout is for results)."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer
