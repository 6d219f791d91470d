"""Stage 5, train: the TRL plumbing that wsft and dro share - one answer per row, with a number attached.

    objective = WeightedObjective(...)               # wsft.py / dro.py: the method's math, on tensors
    trainer = pointwise_trainer(model, tokenizer, data, cfg, out_dir, progress, objective)
    trainer.train()

TRL's SFTTrainer tokenises the chat rows (prompt, completion) and masks the prompt out of the labels;
PointwiseTrainer keeps each row's number (`weight` for wsft, `score` for dro) through that preparation
and the collator, and per batch computes what an objective needs (`Sequences`): the summed log-probability
of each completion under the policy, and where the objective asks, under the reference - the base itself
with the LoRA adapter disabled (no second copy), a frozen copy of the starting adapter under train.init_adapter
(as TRL's KTO/DPO/GRPO trainers keep one), or a frozen copy of the base under full fine-tuning - together
with the reference's last hidden state at the last prompt token (a function of the prompt alone). The
objective turns that into a loss and the figures to log.

Modules an objective trains beside the policy (dro's value head) are attached to the model the Trainer
optimises, train at their own rate, are written to every checkpoint as NAME.safetensors and restored by
`train --resume`, and are written to OUT when training ends.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel
from trl import SFTConfig, SFTTrainer

from ratingloop.train.common import fast, keep_start_as_reference, lora_config, quiet, trainer_args
from ratingloop.train.config import TrainConfig
from ratingloop.train.data import TrainData


@dataclass
class Sequences:
    """One batch as an objective sees it, one entry per row."""

    logps: Tensor  # [B] log pi(y|x): the completion's token log-probs summed, under the policy (carries the gradient)
    tokens: Tensor  # [B] completion tokens in the sum (>= 1)
    target: Tensor  # [B] the row's number: its weight (wsft) or score (dro)
    ref_logps: Tensor  # [B] log pi_ref(y|x), no gradient; 0 on rows the objective did not ask for
    features: Tensor | None  # [B, hidden] the reference's last hidden state at the last prompt token, if asked for


class Objective(Protocol):
    """A method's loss on `Sequences` (wsft.WeightedObjective, dro.DROObjective)."""

    column: str  # the dataset column holding each row's number
    needs_reference: bool  # whether any row will ask for reference log-probs (full fine-tuning then copies the base)
    wants_features: bool  # whether `Sequences.features` is needed
    heads: dict[str, nn.Module]  # trained beside the policy; saved as NAME.safetensors
    head_learning_rate: float

    def reference_rows(self, target: Tensor) -> Tensor:
        """Which rows (bool [B]) need the reference."""
        ...

    def __call__(self, seq: Sequences) -> tuple[Tensor, dict[str, float]]:
        """The loss to minimise and the figures to log (averaged per logging step)."""
        ...


@dataclass
class WithTarget:
    """TRL's collator, plus the row's number as a float tensor under its column name."""

    collate: Callable[[list[dict[str, Any]]], dict[str, Any]]
    column: str

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(examples)
        batch[self.column] = torch.tensor([float(e[self.column]) for e in examples], dtype=torch.float32)
        return batch


class PointwiseTrainer(SFTTrainer):
    # the loss is a mean over the micro-batch, so Trainer must divide it by the accumulation steps
    loss_is_scaled_for_ga = False  # type: ignore[assignment]  # transformers types it as None | bool
    objective: Objective
    reference_model: Any  # the frozen start under full fine-tuning; None with LoRA (the adapter is switched off)
    out_dir: Path

    def __init__(self, *, objective: Objective, reference_model: Any, out_dir: Path, **kwargs: Any) -> None:
        self.objective = objective
        self.reference_model = reference_model
        self.out_dir = Path(out_dir)
        super().__init__(**kwargs)
        self.data_collator = WithTarget(self.data_collator, objective.column)
        policy: Any = self.model
        for name, head in objective.heads.items():
            # a submodule of the optimised model: moved with it, in train/eval mode with it, synced under DDP
            policy.add_module(name, head.to(self.args.device))
            if isinstance(policy, PreTrainedModel):  # full fine-tuning: keep it out of model.safetensors
                policy._keys_to_ignore_on_save = set(policy._keys_to_ignore_on_save or ()) | {
                    f"{name}.{key}" for key in head.state_dict()}
        if reference_model is not None:
            from trl.trainer.utils import add_fused_lm_head

            add_fused_lm_head(reference_model)
            reference_model.to(self.args.device)

    # --- data: keep the number through TRL's column pruning ------------------------------------------
    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        columns: list[str] = list(self._signature_columns or [])
        if self.objective.column not in columns:
            self._signature_columns = [*columns, self.objective.column]  # type: ignore[assignment]

    # --- the loss ---------------------------------------------------------------------------------------
    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        target = inputs[self.objective.column]
        batch = {k: inputs[k] for k in ("input_ids", "attention_mask", "labels")}
        out = model(**batch, fused_lm_head=True)
        mask = out.label_mask  # [B, T-1]: which next-token labels are completion tokens
        logps = out.log_probs.sum(dim=1)  # zero where masked
        ref_logps, features = self._reference(model, batch, mask, self.objective.reference_rows(target))
        seq = Sequences(logps, mask.sum(dim=1).clamp(min=1), target, ref_logps, features)
        loss, figures = self.objective(seq)
        mode = "train" if model.training else "eval"
        for key, value in figures.items():
            self._metrics[mode][key].append(value)
        return (loss, out) if return_outputs else loss

    def _reference(self, model: Any, batch: dict[str, Tensor], mask: Tensor,
                   rows: Tensor) -> tuple[Tensor, Tensor | None]:
        """log pi_ref(y|x) for `rows` (0 elsewhere) and, if wanted, the reference's last-prompt-token state."""
        n = mask.size(0)
        ref_logps = torch.zeros(n, device=mask.device)
        features = None
        if not bool(rows.any()):
            return ref_logps, features
        index = rows.nonzero().squeeze(1)
        sub = {k: v[index] for k, v in batch.items()}
        captured: dict[str, Tensor] = {}
        forward, lm, context = self._reference_model(model)
        hook = None
        if self.objective.wants_features:  # the backbone's output: final-normed hidden states, [b, T, hidden]
            hook = lm.base_model.register_forward_hook(
                lambda _m, _a, output: captured.__setitem__("h", output.last_hidden_state))
        try:
            with torch.no_grad(), context:
                out = forward(**sub, fused_lm_head=True)
        finally:
            if hook is not None:
                hook.remove()
        ref_logps[index] = out.log_probs.sum(dim=1).float()
        if self.objective.wants_features:
            h = captured["h"]
            # the hidden state that predicts the first completion token sits on the last prompt token; causal
            # attention makes it a function of the prompt alone
            last_prompt = mask[index].float().argmax(dim=1)
            picked = h[torch.arange(len(index), device=h.device), last_prompt].float()
            features = torch.zeros(n, picked.size(1), device=picked.device)
            features[index] = picked
        return ref_logps, features

    def _reference_model(self, model: Any) -> tuple[Any, Any, Any]:
        """What computes the reference (called with the batch), its causal LM (whose backbone we read), and the
        context it runs in: the frozen copy, the policy with the frozen copy of its starting adapter active
        (train.init_adapter), or the policy with its adapter disabled."""
        if self.reference_model is not None:
            return self.reference_model, self.reference_model, contextlib.nullcontext()
        peft_model = self.accelerator.unwrap_model(model)
        if "ref" in peft_model.peft_config:
            from trl.trainer.utils import use_adapter

            return peft_model, peft_model.get_base_model(), use_adapter(peft_model, "ref")
        return peft_model, peft_model.get_base_model(), peft_model.disable_adapter()

    def prediction_step(self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None) -> tuple[Tensor, None, None]:
        """Evaluation reports the objective's loss only; there are no logits to compare."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # --- the heads: their own learning rate, in every checkpoint, in OUT ----------------------------
    def create_optimizer(self, model: Any = None) -> Any:
        if self.optimizer is not None:
            return self.optimizer
        params = [p for head in self.objective.heads.values() for p in head.parameters()]
        for p in params:  # out of Trainer's groups, which all run at the policy's rate
            p.requires_grad_(False)
        try:
            optimizer = super().create_optimizer(model)
        finally:
            for p in params:
                p.requires_grad_(True)
        if params:
            optimizer.add_param_group({"params": params, "lr": self.objective.head_learning_rate, "weight_decay": 0.0})
        return optimizer

    def _save(self, output_dir: str | None = None, state_dict: dict[str, Any] | None = None) -> None:
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            save_heads(self.objective.heads, Path(output_dir or str(self.args.output_dir)))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_heads(self.objective.heads, Path(resume_from_checkpoint))

    def train(self, *args: Any, **kwargs: Any) -> Any:
        output = super().train(*args, **kwargs)
        if self.args.should_save:
            save_heads(self.objective.heads, self.out_dir)
        return output


def save_heads(heads: dict[str, nn.Module], folder: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    for name, head in heads.items():
        save_file({k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()},
                  str(folder / f"{name}.safetensors"))


def load_heads(heads: dict[str, nn.Module], folder: Path) -> None:
    from safetensors.torch import load_file

    from ratingloop.errors import RatingloopError

    for name, head in heads.items():
        path = folder / f"{name}.safetensors"
        if not path.is_file():
            raise RatingloopError(f"--resume: {path} is missing, so the {name} cannot continue where it stopped; "
                                  "start the run again")
        device = next(head.parameters()).device
        head.load_state_dict(load_file(str(path), device=str(device)))


def pointwise_trainer(model: Any, tokenizer: Any, data: TrainData, cfg: TrainConfig, out_dir: Path, progress: bool,
                      objective: Objective) -> PointwiseTrainer:
    """A PointwiseTrainer for `objective` on `data`, LoRA unless cfg.lora is false."""
    args = SFTConfig(**trainer_args(cfg, out_dir, progress))
    reference = None
    if not cfg.lora and objective.needs_reference:  # full fine-tuning moves every weight: keep the start frozen
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    elif objective.needs_reference:  # train.init_adapter: the start is that adapter, kept as a frozen "ref" copy
        keep_start_as_reference(model)
    return fast(quiet(PointwiseTrainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
                                       processing_class=tokenizer, peft_config=lora_config(cfg), objective=objective,
                                       reference_model=reference, out_dir=out_dir)), cfg)


def last_logged(trainer: Any, prefix: str) -> dict[str, float]:
    """The newest training-log value of each key under `prefix` (the method's own figures, for the registry)."""
    found: dict[str, float] = {}
    for entry in trainer.state.log_history:
        found |= {k: float(v) for k, v in entry.items() if k.startswith(prefix) and isinstance(v, (int, float))}
    return found


def completion_logps(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]]) -> list[float]:
    """log pi(completion | prompt) of each row ({"prompt": messages, "completion": messages}) under `model`,
    tokenised as TRL's SFTTrainer tokenises it for training."""
    from trl.data_utils import common_prefix_length

    out = []
    device = next(model.parameters()).device
    for row in rows:
        prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=True, return_dict=True,
                                               add_generation_prompt=True)["input_ids"]
        full = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True,
                                             return_dict=True)["input_ids"]
        start = common_prefix_length(prompt, full)
        ids = torch.tensor([full], device=device)
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1].float()
        token_logps = logits.log_softmax(-1).gather(1, ids[0, 1:, None]).squeeze(1)
        out.append(float(token_logps[start - 1:].sum()))
    return out
