"""Gradient-descent finetuning on the demonstrations (GD, Dai et al. 2023; Deutch et al. 2024).

The comparison's "FT" setting: a copy of the model (the loaded model is never modified) whose
chosen parameter group — by default only the key and value projections, the parameters Dai et al.'s
dual form says ICL implicitly updates — takes one SGD step per demonstration. Each step's per-layer
gradient ℓ2 norm is recorded (the heatmaps of Deutch et al. Fig. 4).

The helpers here (parameter groups, batching, masked next-token loss, clipping, the NaN guard, and
the float32 master weights that make half-precision finetuning update at all) are shared with
layer-causal GD in :mod:`icl_lens.training.lcgd`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from icl_lens._validation import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, check_token_ids, validate_fields
from icl_lens.errors import ConfigError, PromptError, TrainingDivergedError
from icl_lens.lens import lens_token_losses
from icl_lens.models.backends import HOOKED, Model, block_parameters, copy_model, final_residual, parameter_groups
from icl_lens.models.cpu_matmul import uses_cpu_matmul

logger = logging.getLogger(__name__)

PARAM_GROUPS: dict[str, str] = HOOKED.param_groups
"""Trainable parameter groups over a HookedTransformer's names (``_W_K``/``_W_V`` are GQA-shaped);
a bridge's are :attr:`icl_lens.models.backends.BridgeBackend.param_groups` (``attn.k.weight``, ...):
:func:`group_patterns` picks the model's own."""


@dataclass(frozen=True)
class FinetuneConfig:
    """How the model is finetuned on the k demonstrations (reference defaults of Deutch et al. 2024).

    Args:
        params: trainable group: ``kv`` (W_K, W_V, b_K, b_V), ``q``, ``o``, ``mlp`` or ``all``
            (every parameter inside the blocks); several joined by ``+`` (e.g. ``"kv+o"``).
        optimizer: ``sgd`` or ``adam``.
        lr: learning rate (constant).
        momentum: SGD momentum.
        weight_decay: weight decay of either optimizer.
        epochs: passes over the demonstrations.
        batch_size: demonstrations per step (1: one step per demonstration).
        loss_on: ``all`` tokens of each demonstration (input and answer) or ``answer`` tokens only.
        clip_value: per-layer ℓ∞ gradient value clip (None: off).
        clip_norm: per-layer ℓ2 gradient norm clip (None: off).
        clip_global_norm: one ℓ2 norm over all trained parameters of all layers together, clipped
            to this value (None: off). This is the clip of Deutch et al. 2024's reference trainer
            (``--clip-norm 12`` for LCGD on Subj), applied like ``torch.nn.utils.clip_grad_norm_``
            to the gradient of the mean-per-token loss. Applied after the per-layer clips.
    """

    params: str = "kv"
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 1e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    epochs: int = 1
    batch_size: int = 1
    loss_on: Literal["all", "answer"] = "all"
    clip_value: float | None = None
    clip_norm: float | None = None
    clip_global_norm: float | None = None

    def __post_init__(self) -> None:
        validate_fields(self, _FINETUNE_BOUNDS)
        for group in self.params.split("+"):
            if group not in PARAM_GROUPS:
                raise ConfigError(f"unknown parameter group {group!r}; choose from {sorted(PARAM_GROUPS)}")
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.loss_on not in ("all", "answer"):
            raise ConfigError(f"loss_on must be 'all' or 'answer', got {self.loss_on!r}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name in _FINETUNE_WRITTEN_ONLY_WHEN_SET:  # so cells finished before the field existed stay valid
            if out[name] == self.__dataclass_fields__[name].default:
                del out[name]
        return out


_FINETUNE_WRITTEN_ONLY_WHEN_SET = ("clip_global_norm",)
"""Fields added after results existed: left out of :meth:`FinetuneConfig.to_dict` (and so of the
cell digest of the experiment config that nests it) while at their default."""


_FINETUNE_BOUNDS = {
    "lr": POSITIVE,
    "momentum": NON_NEGATIVE,
    "weight_decay": NON_NEGATIVE,
    "epochs": AT_LEAST_ONE,
    "batch_size": AT_LEAST_ONE,
    "clip_value": POSITIVE,
    "clip_norm": POSITIVE,
    "clip_global_norm": POSITIVE,
}
"""Bounds of FinetuneConfig's numeric fields (types and NaN/inf come from the hints)."""


@dataclass
class TrainingTrace:
    """What happened during finetuning.

    ``grad_norms[step][layer]`` is the ℓ2 norm of that layer's trainable-parameter gradient
    (before clipping) at that step; ``losses[step]`` the step's loss (the sum over layers for
    LCGD, whose per-layer losses are in ``layer_losses``).
    """

    losses: list[float] = field(default_factory=list)
    grad_norms: list[list[float]] = field(default_factory=list)
    layer_losses: list[list[float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def layer_of(param_name: str) -> int:
    match = re.match(r"^blocks\.(\d+)\.", param_name)
    if match is None:
        raise ValueError(f"{param_name} is not a block parameter")
    return int(match.group(1))


def group_patterns(model: Model, params: str) -> list[re.Pattern]:
    """The regular expressions of parameter group(s) ``params`` (``kv``, ``kv+o``, ...) over the
    block-parameter names of ``model``'s backend."""
    groups = parameter_groups(model)
    return [re.compile(groups[g]) for g in params.split("+")]


def trained_parameters(model: Model, params: str) -> dict[str, torch.nn.Parameter]:
    """The parameters of group(s) ``params``, by their backend name (nothing is (un)frozen)."""
    patterns = group_patterns(model, params)
    return {name: p for name, p in block_parameters(model).items() if any(pat.search(name) for pat in patterns)}


def select_trainable(model: Model, params: str) -> dict[str, torch.nn.Parameter]:
    """Freeze everything, then unfreeze and return the parameters of the chosen group(s)."""
    for param in model.parameters():
        param.requires_grad_(False)
    chosen = trained_parameters(model, params)
    for param in chosen.values():
        param.requires_grad_(True)
    if not chosen:
        raise ConfigError(f"parameter group {params!r} matches no parameter of this model")
    return chosen


def trainable_copy(model: Model, params: str) -> tuple[Model, dict[str, torch.nn.Parameter]]:
    """A deep copy of ``model`` with only the chosen group trainable (the original is untouched)."""
    student = copy_model(model)
    student.train(False)  # no dropout in these models, but keep eval semantics explicit
    return student, select_trainable(student, params)


class MasterWeights:
    """Float32 master copies of the trainable parameters of a half-precision model.

    In bfloat16 (8 significant bits) an SGD update smaller than half a unit in the last place of
    the weight rounds away: at Gemma's weight scale (RMS ≈ 0.04) and lr 1e-4 no entry of W_K
    changes, so the "finetuned" model would equal the original. Here the optimizer (momentum,
    weight decay, Adam moments, every clip) acts on float32 masters; after backward the model's
    gradients are moved onto the masters as float32, and after each step the masters are cast
    into the model's parameters for the next forward. The small updates accumulate in the masters
    and reach the model as soon as they add up to a representable change.

    The finetuned model is still a half-precision model: an update far below half a unit in the
    last place (Gemma-3-270M, 4 demonstrations at lr 1e-4: about 1 % of a bf16 ulp) cannot be held
    by it however it is computed. :meth:`update_fidelity` measures how much of the update the model
    holds, and the trainers log a warning when it holds little of it.

    For a float32 model the masters *are* the model's parameters and every method is a no-op, so
    float32 finetuning is unchanged bit for bit.
    """

    def __init__(self, trainable: dict[str, torch.nn.Parameter]):
        self.model_params = dict(trainable)
        self.separate = any(p.dtype != torch.float32 for p in trainable.values())
        if self.separate:
            self.params = {n: torch.nn.Parameter(p.detach().float().clone()) for n, p in trainable.items()}
            self.start = {n: p.detach().float().clone() for n, p in trainable.items()}
        else:
            self.params = self.model_params

    def of_layer(self, layer: int) -> dict[str, torch.nn.Parameter]:
        """The masters of one layer."""
        return {n: p for n, p in self.params.items() if layer_of(n) == layer}

    def zero_grad(self) -> None:
        for param in (*self.model_params.values(), *self.params.values()):
            param.grad = None

    def gradients_to_masters(self) -> None:
        """Move the model's gradients onto the masters, as float32."""
        if not self.separate:
            return
        for name, param in self.model_params.items():
            self.params[name].grad = None if param.grad is None else param.grad.detach().float()
            param.grad = None

    @torch.no_grad()
    def update_fidelity(self) -> float:
        """Cosine between the update the model's parameters hold and the masters' update (1.0 for
        a float32 model, or where nothing moved)."""
        if not self.separate:
            return 1.0
        held = torch.cat([(p.detach().float() - self.start[n]).flatten() for n, p in self.model_params.items()])
        wanted = torch.cat([(p.detach() - self.start[n]).flatten() for n, p in self.params.items()])
        if not bool(wanted.any()):
            return 1.0
        return float(torch.nn.functional.cosine_similarity(held, wanted, dim=0))

    def warn_if_update_lost(self, min_fidelity: float = 0.9) -> None:
        """Log a warning when the half-precision model holds little of the trained update."""
        fidelity = self.update_fidelity()
        if fidelity < min_fidelity:
            dtype = next(iter(self.model_params.values())).dtype
            logger.warning(
                "the finetuning update is mostly below the resolution of %s: the finetuned model holds it "
                "with cosine %.2f only, so it behaves almost like the original; use dtype float32 or a larger "
                "learning rate",
                str(dtype).removeprefix("torch."),
                fidelity,
            )

    @torch.no_grad()
    def masters_to_model(self, step: int, names: Sequence[str] | None = None) -> None:
        """Cast the masters (all, or ``names``) into the model's parameters; a cast that overflows
        (float16's range ends at 65504) is divergence at ``step``."""
        if not self.separate:
            return
        names = list(self.params if names is None else names)
        for name in names:
            self.model_params[name].copy_(self.params[name])
        check_parameters_finite(step, {name: self.model_params[name] for name in names})


def make_optimizer(params: Sequence[torch.Tensor], cfg: FinetuneConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def demo_batches(
    sequences: Sequence[Sequence[int]], answer_lengths: Sequence[int], cfg: FinetuneConfig, device
) -> Iterator[
    tuple[Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch pos"], Float[torch.Tensor, "batch pos_minus_1"]]
]:
    """Right-padded token batches in demonstration order: tokens, attention mask, loss mask.

    ``loss_mask[b, t]`` is 1 where position t's prediction of token t+1 counts in the loss.
    """
    for _ in range(cfg.epochs):
        for start in range(0, len(sequences), cfg.batch_size):
            rows = sequences[start : start + cfg.batch_size]
            answers = answer_lengths[start : start + cfg.batch_size]
            width = max(len(r) for r in rows)
            tokens = torch.zeros(len(rows), width, dtype=torch.long)
            attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
            loss_mask = torch.zeros(len(rows), width - 1)
            for i, (row, n_answer) in enumerate(zip(rows, answers)):
                tokens[i, : len(row)] = torch.tensor(row)
                attention_mask[i, : len(row)] = 1
                first_target = len(row) - n_answer if cfg.loss_on == "answer" else 1
                loss_mask[i, first_target - 1 : len(row) - 1] = 1.0
            yield tokens.to(device), attention_mask.to(device), loss_mask.to(device)


@uses_cpu_matmul
def masked_next_token_losses(
    model: Model,
    residuals: Sequence[Float[torch.Tensor, "batch pos d_model"]],
    tokens: Int[torch.Tensor, "batch pos"],
    mask: Float[torch.Tensor, "batch pos_minus_1"],
) -> Float[torch.Tensor, " n_residuals"]:
    """Mean next-token cross-entropy over the counted positions of each residual stream.

    Each residual stream is read through the logit lens (for the final one that is the model's
    own output). Only counted positions are unembedded, and the streams are stacked into one
    loss (:func:`icl_lens.lens.lens_token_losses`): the unembedding (671 MB for a 262k vocabulary)
    is then read once per call instead of once per layer, which is what makes LCGD's 18 per-layer
    losses affordable on CPU.
    """
    counted = mask > 0
    n_counted = int(counted.sum())
    if n_counted == 0:
        raise ConfigError("no token counts in the finetuning loss (empty loss mask)")
    picked = torch.cat([residual[:, :-1][counted] for residual in residuals])  # [n_res * n_counted, d]
    targets = tokens[:, 1:][counted].repeat(len(residuals))
    token_losses = lens_token_losses(model, picked, targets)
    return token_losses.view(len(residuals), n_counted).mean(dim=1)


def masked_next_token_loss(
    model: Model,
    residual: Float[torch.Tensor, "batch pos d_model"],
    tokens: Int[torch.Tensor, "batch pos"],
    mask: Float[torch.Tensor, "batch pos_minus_1"],
) -> torch.Tensor:
    """Mean cross-entropy per counted token of predicting token t+1 at position t, reading
    ``residual`` (the final one: the model's own output) through the logit lens."""
    return masked_next_token_losses(model, [residual], tokens, mask)[0]


def layer_grad_norms(trainable: Mapping[str, torch.Tensor], n_layers: int) -> list[float]:
    """ℓ2 norm of each layer's trainable-parameter gradient (0 where a layer has none)."""
    squared = [0.0] * n_layers
    for name, param in trainable.items():
        if param.grad is not None:
            squared[layer_of(name)] += float(param.grad.detach().float().pow(2).sum())
    return [math.sqrt(s) for s in squared]


def check_finite(step: int, loss: float, norms: Sequence[float], what: str = "loss") -> None:
    """Stop with a clear error at the first NaN/inf loss or gradient, naming step and layer."""
    if not math.isfinite(loss):
        raise TrainingDivergedError(f"finetuning diverged: {what} is {loss} at step {step}; lower the learning rate")
    for layer, norm in enumerate(norms):
        if not math.isfinite(norm):
            raise TrainingDivergedError(
                f"finetuning diverged: gradient of layer {layer} is {norm} at step {step}; lower the learning rate"
            )


def check_parameters_finite(step: int, trainable: Mapping[str, torch.Tensor]) -> None:
    """After a step: any NaN/inf weight is divergence, named by step and layer."""
    for name, param in trainable.items():
        if not bool(torch.isfinite(param).all()):
            raise TrainingDivergedError(
                f"finetuning diverged: parameters of layer {layer_of(name)} ({name}) became non-finite at step "
                f"{step}; lower the learning rate"
            )


def clip_layer_gradients(trainable: Mapping[str, torch.Tensor], cfg: FinetuneConfig, n_layers: int) -> None:
    """Per-layer ℓ∞ value clip and/or ℓ2 norm clip, then the global ℓ2 norm clip over every
    parameter in ``trainable`` (Deutch et al. 2024's reference clip), in place."""
    if cfg.clip_value is not None:
        for param in trainable.values():
            if param.grad is not None:
                param.grad.clamp_(-cfg.clip_value, cfg.clip_value)
    if cfg.clip_norm is not None:
        norms = layer_grad_norms(trainable, n_layers)
        for name, param in trainable.items():
            norm = norms[layer_of(name)]
            if param.grad is not None and norm > cfg.clip_norm:
                param.grad.mul_(cfg.clip_norm / (norm + 1e-12))
    if cfg.clip_global_norm is not None:
        torch.nn.utils.clip_grad_norm_(
            [p for p in trainable.values() if p.grad is not None], cfg.clip_global_norm, norm_type=2.0
        )


def check_demonstrations(model: Model, demo_sequences: Sequence[Sequence[int]], answer_lengths: Sequence[int]) -> None:
    """Refuse demonstrations GD cannot train on, before the model is copied: none at all, a sequence
    without a next token to predict, token ids outside the vocabulary, longer than the context, or an
    answer length that does not fit its sequence."""
    if not demo_sequences:
        raise ConfigError("no demonstrations to finetune on (k = 0)")
    if len(answer_lengths) != len(demo_sequences):
        raise PromptError(f"{len(demo_sequences)} demonstrations but {len(answer_lengths)} answer lengths")
    for i, (sequence, answer_length) in enumerate(zip(demo_sequences, answer_lengths)):
        ids = check_token_ids(sequence, model.cfg.d_vocab, f"demonstration {i}")
        if len(ids) < 2:
            raise PromptError(f"demonstration {i} has {len(ids)} token(s): at least 2 are needed to predict one")
        if len(ids) > model.cfg.n_ctx:
            raise PromptError(f"demonstration {i} has {len(ids)} tokens, more than the context ({model.cfg.n_ctx})")
        if isinstance(answer_length, bool) or not isinstance(answer_length, int) or not 1 <= answer_length < len(ids):
            raise PromptError(
                f"demonstration {i}: answer length {answer_length!r} must be an integer in 1..{len(ids) - 1}"
            )


@uses_cpu_matmul
def finetune(
    model: Model,
    demo_sequences: Sequence[Sequence[int]],
    answer_lengths: Sequence[int],
    cfg: FinetuneConfig = FinetuneConfig(),
    progress: bool = True,
) -> tuple[Model, TrainingTrace]:
    """Plain GD: finetune a copy of ``model`` on the demonstrations; return it and its trace."""
    check_demonstrations(model, demo_sequences, answer_lengths)
    student, trainable = trainable_copy(model, cfg.params)
    masters = MasterWeights(trainable)
    optimizer = make_optimizer(list(masters.params.values()), cfg)
    trace = TrainingTrace()
    n_layers = student.cfg.n_layers
    batches = list(demo_batches(demo_sequences, answer_lengths, cfg, student.cfg.device))
    for step, (tokens, attention_mask, loss_mask) in enumerate(
        tqdm(batches, desc="finetune", disable=not progress, leave=False)
    ):
        masters.zero_grad()
        final_resid = final_residual(student, tokens, attention_mask, n_layers=n_layers)
        loss = masked_next_token_loss(student, final_resid, tokens, loss_mask)
        loss.backward()
        masters.gradients_to_masters()
        norms = layer_grad_norms(masters.params, n_layers)
        check_finite(step, float(loss.detach()), norms)
        clip_layer_gradients(masters.params, cfg, n_layers)
        optimizer.step()
        check_parameters_finite(step, masters.params)
        masters.masters_to_model(step)
        trace.losses.append(float(loss.detach()))
        trace.grad_norms.append(norms)
    masters.warn_if_update_lost()
    for param in student.parameters():
        param.requires_grad_(False)
    student.eval()
    return student, trace
