"""Finetuning at several learning rates in one batched pass (the batched learning-rate sweep).

A sweep trains the same model on the same demonstrations at every rate of a grid; run one after
another, each training repeats the work on the frozen weights. Here every training batch is repeated
R times along the batch dimension (R = number of rates, rows ``r*B .. (r+1)*B-1`` belong to rate r).
The frozen parameters are shared; each rate carries its own float32 copy of the trained projections
(W_K, W_V, b_K, b_V for the default ``kv`` group, W_Q, b_Q for ``q``). On a HookedTransformer, hooks on
``blocks.{l}.attn.hook_k``/``hook_v``/``hook_q`` replace each rate's rows with the projection of the
attention's own input (captured by a pre-hook on ``blocks.{l}.attn``) through that rate's weights —
the same :func:`~transformer_lens.utilities.attention.simple_attn_linear` the model uses. On a
TransformerBridge, the Hugging Face projection modules themselves (``attn.k.original_component``, an
``nn.Linear`` or GPT-2's ``Conv1D``) compute each rate's rows with that rate's weight for the pass.

Rows never mix (attention, norms and the loss act within a row), so the gradient of the summed
per-rate losses gives every rate exactly its own gradient; each rate then takes its own optimizer step
(:func:`icl_lens.training.finetune.make_optimizer`, :func:`~icl_lens.training.finetune.clip_layer_gradients`, the same
finiteness checks as :func:`~icl_lens.training.finetune.finetune`). A rate that diverges is dropped from the
batch and recorded; the others go on. The first step is run once: every rate starts from the same
weights, so its loss and gradient are the same for all of them.

Plain GD (:func:`icl_lens.training.finetune.finetune`) and LCGD's ``simultaneous`` schedule
(:func:`icl_lens.training.lcgd.layer_causal_finetune`: every block's input detached, one logit-lens loss per
layer) are batched. :func:`unsupported_reason` names what is not (other parameter groups, LCGD's
``sequential`` schedule, half precision, attention variants whose input is not one shared tensor), for
which the sweep falls back to training one rate at a time.

:func:`score_rates` then scores the dev slice for every trained rate together, the same way (on a
HookedTransformer; a bridge's rates are scored one after another by :func:`~icl_lens.evaluation.evaluate`): rows
``r*B .. (r+1)*B-1`` of each scoring pass are one batch of queries under rate r's projections (the
shared prefix is encoded once per rate, in one pass, and each rate's rows attend to their own
rate's prefix keys/values). It computes only the class scores (and, for contextual calibration, the
content-free query's), the numbers :func:`icl_lens.evaluation.evaluate` and
:func:`icl_lens.calibration.content_free_scores` give for each rate's model alone, without recording
activations. A multi-token label continues from the query's cached keys/values rather than re-running
the query (:func:`~icl_lens.evaluation.continuation_unsupported` names the models where that would not be exact).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, cast

import torch
from jaxtyping import Float
from tqdm.auto import tqdm
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES
from transformer_lens.utilities.attention import simple_attn_linear

from icl_lens.calibration import calibrate, content_free_scores
from icl_lens.errors import ConfigError, TrainingDivergedError
from icl_lens.evaluation import (
    PAD_ID,
    RecordSpec,
    check_evaluation_inputs,
    continuation_unsupported,
    continued_scores,
    evaluate,
    label_log_probs,
    mean_token_log_prob,
    pad_right,
)
from icl_lens.lens import lens_loss_floats_per_row
from icl_lens.models.backends import BRIDGE, HOOKED, Model, Prefix, block_parameters, final_residual
from icl_lens.models.cpu_matmul import uses_cpu_matmul
from icl_lens.training.finetune import (
    FinetuneConfig,
    check_demonstrations,
    check_finite,
    check_parameters_finite,
    clip_layer_gradients,
    demo_batches,
    finetune,
    layer_grad_norms,
    make_optimizer,
    masked_next_token_losses,
    trainable_copy,
    trained_parameters,
)
from icl_lens.training.lcgd import LOGIT_BUDGET, detach_hook, layer_causal_finetune, layer_groups

logger = logging.getLogger(__name__)

Method = Literal["gd", "lcgd"]

BATCHABLE_GROUPS = frozenset({"kv", "q"})
"""Parameter groups made only of attention input projections, which the hooks can make per-rate."""

DEFAULT_MAX_BATCH_BYTES = 4 * 2**30
"""Default memory bound of one batched chunk of rates (4 GiB; see :func:`bytes_per_rate`)."""

_PROJECTION = re.compile(r"^blocks\.(\d+)\.attn\.(_?)([Wb])_([QKV])$")
_BRIDGE_PROJECTION = re.compile(r"^blocks\.(\d+)\.attn\.([qkv])\.(weight|bias)$")
_INPUT_OF = {"Q": "query_input", "K": "key_input", "V": "value_input"}


def trainer_method(trainer: Callable) -> Method | None:
    """``"gd"`` for :func:`~icl_lens.training.finetune.finetune`, ``"lcgd"`` for LCGD's simultaneous schedule
    (``layer_causal_finetune`` itself or a ``functools.partial`` of it fixing only ``schedule``), else None."""
    if trainer is finetune:
        return "gd"
    if trainer is layer_causal_finetune:
        return "lcgd"
    if (
        isinstance(trainer, functools.partial)
        and trainer.func is layer_causal_finetune
        and not trainer.args
        and set(trainer.keywords) <= {"schedule"}
        and trainer.keywords.get("schedule", "simultaneous") == "simultaneous"
    ):
        return "lcgd"
    return None


def unsupported_reason(model, cfg: FinetuneConfig, trainer: Callable) -> str | None:
    """Why the rates of this sweep cannot be trained together exactly (None: they can)."""
    hooked, bridge = HOOKED.owns(model), BRIDGE.owns(model)
    if not (hooked or bridge):
        return f"the model is a {type(model).__name__}, neither a HookedTransformer nor a TransformerBridge"
    if trainer_method(trainer) is None:
        return f"trainer {getattr(trainer, '__name__', trainer)!r} is neither finetune nor LCGD's simultaneous schedule"
    groups = set(cfg.params.split("+"))
    if not groups <= BATCHABLE_GROUPS:
        return f"parameter group {cfg.params!r} (only {'/'.join(sorted(BATCHABLE_GROUPS))} are batched)"
    c = model.cfg
    if c.dtype != torch.float32 or any(p.dtype != torch.float32 for p in model.parameters()):
        return f"dtype {c.dtype} (half precision trains float32 masters cast into the model each step)"
    for flag in ("use_attn_in", "use_split_qkv_input", "load_in_4bit", "ungroup_grouped_query_attention"):
        if getattr(c, flag, False):
            return f"the model's cfg.{flag} is set"
    if getattr(c, "n_devices", 1) != 1:
        return f"the model is split over {c.n_devices} devices"
    if bridge:
        return _bridge_reason(model, cfg)
    if c.original_architecture in POST_NORM_ARCHITECTURES:
        return f"post-norm architecture {c.original_architecture}"
    return None


def _bridge_reason(model, cfg: FinetuneConfig) -> str | None:
    """Why a bridge's trained projections cannot be made per-rate (None: they can): each must be an
    ``nn.Linear`` or ``Conv1D`` that the attention really calls, once per layer, on a short probe pass."""
    from transformers.pytorch_utils import Conv1D

    if getattr(model.cfg, "icl_lens_processed", False):
        return "the bridge's weights are processed (folded norms, centred writes)"
    names = list(trained_parameters(model, cfg.params))
    modules = _bridge_projection_modules(model, names)
    if modules is None:
        return f"a trained parameter of group {cfg.params!r} is not an attention q/k/v projection's weight or bias"
    for prefix, module in modules.items():
        if not isinstance(module, (torch.nn.Linear, Conv1D)):
            return f"{prefix[:-1]} is a {type(module).__name__}, not an nn.Linear or Conv1D"
    calls = dict.fromkeys(modules, 0)
    handles = []
    for prefix, module in modules.items():

        def count(_module, _args, _output, prefix=prefix):
            calls[prefix] += 1

        handles.append(module.register_forward_hook(count))
    tokens = torch.zeros(1, 2, dtype=torch.long, device=model.cfg.device)
    try:
        with torch.no_grad():
            final_residual(model, tokens, torch.ones_like(tokens))
    finally:
        for handle in handles:
            handle.remove()
    uncalled = [prefix[:-1] for prefix, n in calls.items() if n != 1]
    if uncalled:
        return f"the bridge's attention does not call {uncalled[0]} once per forward pass"
    return None


def _bridge_projection_modules(model, trained_names: Sequence[str]) -> dict[str, torch.nn.Module] | None:
    """``{"blocks.{l}.attn.{q|k|v}.": Hugging Face module}`` for the trained names (None: one is not
    such a projection)."""
    modules: dict[str, torch.nn.Module] = {}
    for name in trained_names:
        match = _BRIDGE_PROJECTION.match(name)
        if match is None:
            return None
        layer, part = int(match.group(1)), match.group(2)
        module = getattr(getattr(model.blocks[layer].attn, part, None), "original_component", None)
        if module is None:
            return None
        modules[f"blocks.{layer}.attn.{part}."] = module
    return modules


def bytes_per_rate(model: Model, demo_sequences: Sequence[Sequence[int]], cfg: FinetuneConfig, method: Method) -> int:
    """An upper estimate of the memory one more rate adds to a batched step, in bytes.

    Per rate: its trained parameters in float32 with their gradient and optimizer state (SGD momentum:
    1 more copy, Adam: 2); the activations autograd keeps for the backward of one training batch
    (per token and layer about 16·d_model + 3·d_mlp floats plus 2·n_heads·pos attention scores and
    pattern); and the float32 logits of the counted tokens with their log-softmax and gradient (3
    copies of ``n_tokens × d_vocab``, or of a vocabulary chunk where the loss is chunked:
    :func:`icl_lens.lens.lens_loss_floats_per_row`; LCGD unembeds ``LOGIT_BUDGET``-bounded groups of
    layers).
    """
    c = model.cfg
    n_trained = sum(p.numel() for p in trained_parameters(model, cfg.params).values())
    states = 2 + (2 if cfg.optimizer == "adam" else (1 if cfg.momentum else 0))
    longest = max(len(s) for s in demo_sequences)
    tokens = min(cfg.batch_size, len(demo_sequences)) * longest
    d_mlp = c.d_mlp or 4 * c.d_model
    per_layer_token = 16 * c.d_model + 3 * d_mlp + 2 * c.n_heads * longest
    activations = tokens * c.n_layers * per_layer_token
    logit_rows = tokens
    floats_per_row = lens_loss_floats_per_row(model)
    if method == "lcgd":
        layers_at_once = max(1, min(c.n_layers, LOGIT_BUDGET // max(1, tokens * floats_per_row)))
        logit_rows *= layers_at_once
    logits = 3 * logit_rows * floats_per_row
    return 4 * (n_trained * states + activations + logits)


def chunk_size(per_rate: int, max_batch_bytes: int) -> int:
    """How many rates fit in one chunk under ``max_batch_bytes`` (at least 1)."""
    return max(1, max_batch_bytes // max(1, per_rate))


@dataclass
class BatchedTraining:
    """The outcome of :func:`train_rates`.

    ``student`` is a frozen copy of the model (its own parameters untouched); ``params[lr]`` the
    trained parameters of each rate that finished (names as in
    :func:`~icl_lens.models.backends.block_parameters`);
    ``diverged[lr]`` the reason of each that did not; ``losses[lr]`` each rate's per-step loss (the
    sum over layers for LCGD), as in :class:`icl_lens.training.finetune.TrainingTrace`.
    """

    student: Model
    params: dict[float, dict[str, torch.Tensor]] = field(default_factory=dict)
    diverged: dict[float, str] = field(default_factory=dict)
    losses: dict[float, list[float]] = field(default_factory=dict)

    @torch.no_grad()
    def load(self, lr: float) -> Model:
        """The student holding rate ``lr``'s trained parameters (written in place)."""
        own = block_parameters(self.student)
        for name, value in self.params[lr].items():
            own[name].copy_(value)
        return self.student


class _RateProjections:
    """Per-rate attention input projections: rows ``r*B .. (r+1)*B-1`` use ``rate_params[r]``."""

    def __init__(self, student: Model, trained_names: Sequence[str]):
        self.student = student
        self.by_layer: dict[int, dict[str, list[str]]] = {}
        for name in trained_names:
            match = _PROJECTION.match(name)
            assert match is not None, f"{name} is not an attention or MLP projection"
            layer, _, _, kind = match.groups()
            self.by_layer.setdefault(int(layer), {}).setdefault(kind, []).append(name)
        self.inputs: dict[int, dict[str, torch.Tensor]] = {}
        self.rate_params: list[dict[str, torch.Tensor]] = []

    def _capture(self, layer: int):
        def pre_hook(module, args, kwargs):
            self.inputs[layer] = kwargs
            return None

        return pre_hook

    def _project(self, layer: int, kind: str):
        attn = self.student.blocks[layer].attn
        prefix = f"blocks.{layer}.attn."
        grouped = "_" if kind in "KV" and hasattr(attn, "_W_K") else ""  # GQA keeps K/V as _W_K [n_kv_heads, ...]
        weight_attr, bias_attr = f"{grouped}W_{kind}", f"{grouped}b_{kind}"

        def hook(act, hook):
            x = self.inputs[layer][_INPUT_OF[kind]]
            rows = x.shape[0] // len(self.rate_params)
            outs = []
            for r, params in enumerate(self.rate_params):
                w = params.get(prefix + weight_attr, getattr(attn, weight_attr))
                b = params.get(prefix + bias_attr, getattr(attn, bias_attr))
                outs.append(simple_attn_linear(x[r * rows : (r + 1) * rows], w, b))
            return torch.cat(outs)

        return hook

    def hooks(self) -> list[tuple[str | Callable, Callable]]:
        return [
            (f"blocks.{layer}.attn.hook_{kind.lower()}", self._project(layer, kind))
            for layer, kinds in self.by_layer.items()
            for kind in kinds
        ]

    def forward(self, rate_params, run: Callable[[], object]):
        """``run()`` with rows split among ``rate_params`` (pre-hooks removed afterwards)."""
        self.rate_params = list(rate_params)
        handles = [
            self.student.blocks[layer].attn.register_forward_pre_hook(self._capture(layer), with_kwargs=True)
            for layer in self.by_layer
        ]
        try:
            with self.student.hooks(fwd_hooks=self.hooks()):
                return run()
        finally:
            for handle in handles:
                handle.remove()
            self.inputs.clear()


class _ModuleRateProjections:
    """Per-rate attention input projections of a TransformerBridge: for the pass, each trained Hugging
    Face projection module computes rows ``r*B .. (r+1)*B-1`` with ``rate_params[r]``'s weight and
    bias, as the module itself computes (``F.linear``; ``addmm`` for GPT-2's ``Conv1D``)."""

    def __init__(self, student: Model, trained_names: Sequence[str]):
        modules = _bridge_projection_modules(student, trained_names)
        assert modules is not None, "checked by unsupported_reason()"
        self.modules = modules
        self.rate_params: list[dict[str, torch.Tensor]] = []

    def _forward_of(self, prefix: str, module: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        linear = isinstance(module, torch.nn.Linear)
        own_weight = cast(torch.Tensor, module.weight)
        own_bias = cast("torch.Tensor | None", getattr(module, "bias", None))

        def forward(x: torch.Tensor) -> torch.Tensor:
            rows = x.shape[0] // len(self.rate_params)
            outs = []
            for r, params in enumerate(self.rate_params):
                weight = params.get(prefix + "weight", own_weight)
                bias = params.get(prefix + "bias", own_bias)
                part = x[r * rows : (r + 1) * rows]
                if linear:
                    outs.append(torch.nn.functional.linear(part, weight, bias))
                else:  # Conv1D: weight [in, out]
                    assert bias is not None, "GPT-2's Conv1D always has a bias"
                    flat = torch.addmm(bias, part.reshape(-1, part.shape[-1]), weight)
                    outs.append(flat.view(*part.shape[:-1], weight.shape[-1]))
            return torch.cat(outs)

        return forward

    def forward(self, rate_params, run: Callable[[], object]):
        """``run()`` with rows split among ``rate_params`` (the modules' own ``forward`` restored afterwards)."""
        self.rate_params = list(rate_params)
        for prefix, module in self.modules.items():
            module.forward = self._forward_of(prefix, module)  # an instance attribute shadows the class's forward
        try:
            return run()
        finally:
            for module in self.modules.values():
                del module.forward


def _rate_projections(student: Model, trained_names: Sequence[str]):
    """The per-rate projections for ``student``'s backend."""
    if HOOKED.owns(student):
        return _RateProjections(student, trained_names)
    return _ModuleRateProjections(student, trained_names)


@uses_cpu_matmul
def train_rates(
    model: Model,
    demo_sequences: Sequence[Sequence[int]],
    answer_lengths: Sequence[int],
    base: FinetuneConfig,
    lrs: Sequence[float],
    method: Method = "gd",
    progress: bool = False,
) -> BatchedTraining:
    """Train a copy of ``model`` at every rate of ``lrs`` together (see the module docstring).

    Check first with :func:`unsupported_reason`; the result at each rate is the one
    :func:`~icl_lens.training.finetune.finetune` (``method="gd"``) or LCGD's simultaneous schedule
    (``"lcgd"``) gives at that rate, up to float32 summation order.
    """
    check_demonstrations(model, demo_sequences, answer_lengths)
    student, trainable = trainable_copy(model, base.params)
    for param in student.parameters():
        param.requires_grad_(False)
    n_layers = student.cfg.n_layers
    names = list(trainable)
    rates = sorted(lrs)
    params = {lr: {n: trainable[n].detach().float().clone().requires_grad_(True) for n in names} for lr in rates}
    optimizers = {lr: make_optimizer(list(params[lr].values()), replace(base, lr=lr)) for lr in rates}
    out = BatchedTraining(student=student, losses={lr: [] for lr in rates})
    projections = _rate_projections(student, names)
    active = list(rates)
    batches = list(demo_batches(demo_sequences, answer_lengths, base, student.cfg.device))
    for step, (tokens, attention_mask, loss_mask) in enumerate(
        tqdm(batches, desc=f"{method} ×{len(rates)} rates", disable=not progress, leave=False)
    ):
        if not active:
            break
        # Step 0: every rate still holds the starting weights, so one replica gives every rate's loss and gradient.
        replicas = active[:1] if step == 0 else active
        for lr in active:
            for p in params[lr].values():
                p.grad = None
        losses = _batched_losses(
            student, projections, [params[lr] for lr in replicas], tokens, attention_mask, loss_mask, method
        )
        if step == 0:
            for lr in active[1:]:
                for name, p in params[lr].items():
                    source = params[replicas[0]][name].grad
                    p.grad = None if source is None else source.clone()
            losses = losses * len(active)
        for lr, loss in zip(list(active), losses):
            try:
                norms = layer_grad_norms(params[lr], n_layers)
                check_finite(step, loss, norms, what="layer-causal loss" if method == "lcgd" else "loss")
                clip_layer_gradients(params[lr], base, n_layers)
                optimizers[lr].step()
                check_parameters_finite(step, params[lr])
            except TrainingDivergedError as exc:
                logger.info("lr %g diverged: %s", lr, exc)
                out.diverged[lr] = str(exc)
                active.remove(lr)
                continue
            out.losses[lr].append(loss)
    for lr in active:
        out.params[lr] = {n: p.detach() for n, p in params[lr].items()}
    return out


def _batched_losses(student, projections, rate_params, tokens, attention_mask, loss_mask, method) -> list[float]:
    """Forward the batch once per rate (stacked), back-propagate, and return each rate's loss."""
    n_rates = len(rate_params)
    n_layers = student.cfg.n_layers
    rows = tokens.shape[0]
    stacked_tokens = tokens.repeat(n_rates, 1)
    stacked_mask = attention_mask.repeat(n_rates, 1)

    def split(resid):
        return [resid[r * rows : (r + 1) * rows] for r in range(n_rates)]

    if method == "gd":
        final = projections.forward(rate_params, lambda: final_residual(student, stacked_tokens, stacked_mask))
        # one loss per rate, each over that rate's rows alone: the same products (and so the same rounding)
        # as the sequential sweep's. All rates' rows in one call is ~8 % faster but not exact: a row's
        # logits and row sums depend on how many rows share the product (measured at d_model 640: calls of
        # fewer than ~16 rows, and the row sums of a column-major chunk at any size), enough to flip a
        # dev query after 16 steps at lr 0.03
        per_rate = torch.cat([masked_next_token_losses(student, [part], tokens, loss_mask) for part in split(final)])
        per_rate.sum().backward()
        return [float(v) for v in per_rate.detach()]

    block_outputs: dict[int, torch.Tensor] = {}

    def capture(resid, hook):
        block_outputs[hook.layer()] = resid
        return resid

    extra = []
    for layer in range(n_layers):
        extra.append((f"blocks.{layer}.hook_resid_pre", detach_hook))
        extra.append((f"blocks.{layer}.hook_resid_post", capture))
    projections.forward(rate_params, lambda: final_residual(student, stacked_tokens, stacked_mask, hooks=extra))
    # Groups of whole layers, all rates of a layer in one group (a layer's graph is freed by its
    # backward), each rate's layers unembedded in a loss of their own: the same products, and so the same
    # rounding, as the sequential sweep's layer_causal_losses. Groups are sized for one rate, as the
    # sequential sweep sizes them: the batched sweep runs only on float32 models (unsupported_reason), whose
    # frozen unembedding the loss always sweeps in chunks, so no rate's logits outlive its own loss call.
    rows_per_layer = max(1, int((loss_mask > 0).sum()))
    layer_losses = torch.zeros(n_layers, n_rates)
    for group in layer_groups(range(n_layers), rows_per_layer, lens_loss_floats_per_row(student)):
        parts = [split(block_outputs.pop(layer)) for layer in group]  # [layer][rate]
        group_losses = torch.stack(
            [masked_next_token_losses(student, [p[r] for p in parts], tokens, loss_mask) for r in range(n_rates)],
            dim=1,
        )  # [len(group), n_rates]
        group_losses.sum().backward()
        layer_losses[group] = group_losses.detach().cpu()
    return [float(sum(float(v) for v in layer_losses[:, r])) for r in range(n_rates)]


CPU_RATES_PER_PASS = 1
"""Rates per scoring pass on a CPU. A pass's time there is mostly memory-bound attention work
(``rows × heads × pos × keys``) that grows out of the caches with more rows, so wide passes took
more CPU time than one rate per pass (``experiments/bench_lr_sweep.py --tiny``; docs/performance.md).
An accelerator gains from wide passes instead."""


def scoring_bytes_per_rate(
    model: Model, prefix_length: int, longest_row: int, longest_label: int, rows_per_rate: int
) -> int:
    """An upper estimate of the memory one more rate adds to a scoring pass of :func:`score_rates`, in bytes.

    Per query row (no gradient is kept): the prefix's keys/values copied for the row and their
    concatenation with the row's own (2 copies of ``n_layers × 2 × (prefix + row) × n_kv_heads ×
    d_head``); one layer's activations (about 8·d_model + 3·d_mlp floats per token, plus the
    attention scores and pattern ``2 × n_heads × row × (prefix + row)``); the final residual; and the
    float32 logits of the label's tokens with their log-softmax (``3 × label × d_vocab``). Plus,
    once per rate, the pass that encodes the prefix (its activations and ``prefix²`` attention).
    """
    c = model.cfg
    kv_heads = getattr(c, "n_key_value_heads", None) or c.n_heads
    keys = prefix_length + longest_row
    d_mlp = c.d_mlp or 4 * c.d_model
    cache = 2 * c.n_layers * 2 * keys * kv_heads * c.d_head
    layer = longest_row * (8 * c.d_model + 3 * d_mlp) + 2 * c.n_heads * longest_row * keys
    logits = 3 * longest_label * c.d_vocab_out
    prefix_pass = prefix_length * (8 * c.d_model + 3 * d_mlp) + 2 * c.n_heads * prefix_length**2
    return 4 * (rows_per_rate * (cache + layer + longest_row * c.d_model + logits) + prefix_pass)


@torch.no_grad()
@uses_cpu_matmul
def score_rates(
    trained: BatchedTraining,
    prefix: Sequence[int],
    queries: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    *,
    n_start: int = 1,
    batch_size: int = 16,
    content_free_query: Sequence[int] | None = None,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    max_rates_per_pass: int | None = None,
) -> dict[float, Float[torch.Tensor, "n_queries n_classes"] | None]:
    """Every trained rate's class scores on ``queries`` after ``prefix``, all rates scored together.

    Each rate's scores are the ``class_scores`` of :func:`~icl_lens.evaluation.evaluate` on
    ``trained.load(lr)`` with the same arguments (the queries batched the same way, so padding is
    the same), contextually calibrated (:func:`~icl_lens.calibration.calibrate`) by the
    content-free query's scores when ``content_free_query`` is given. A rate whose trained weights
    or (calibrated) scores are not finite maps to None; the others are unaffected (rows never mix).
    Rates are scored in passes of as many as fit ``max_batch_bytes``
    (:func:`scoring_bytes_per_rate`; at least one rate, i.e. one evaluation batch, per pass) and at
    most ``max_rates_per_pass`` (None: no limit on an accelerator, :data:`CPU_RATES_PER_PASS` on a CPU).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if max_rates_per_pass is not None and (
        isinstance(max_rates_per_pass, bool) or not isinstance(max_rates_per_pass, int) or max_rates_per_pass < 1
    ):
        raise ConfigError(f"max_rates_per_pass must be None or an integer >= 1, got {max_rates_per_pass!r}")
    student = trained.student
    prefix, queries, labels = check_evaluation_inputs(student, prefix, queries, labels, n_start=n_start)
    if content_free_query is not None:
        _, (content_free_query,), _ = check_evaluation_inputs(
            student, prefix, [content_free_query], labels, n_start=n_start
        )
    out: dict[float, torch.Tensor | None] = {}
    rates = []
    for lr in sorted(trained.params):
        bad = [n for n, p in trained.params[lr].items() if not bool(torch.isfinite(p).all())]
        if bad:
            logger.info("lr %g diverged: trained parameter %s is not finite", lr, bad[0])
            out[lr] = None
        else:
            rates.append(lr)
    if not rates:
        return out
    if not HOOKED.owns(student):  # a bridge: each rate's model scored by evaluate, one after another
        for lr in rates:
            rate_scores = evaluated_class_scores(
                trained.load(lr), prefix, queries, labels, n_start, batch_size, content_free_query
            )
            out[lr] = rate_scores if bool(torch.isfinite(rate_scores).all()) else None
            if out[lr] is None:
                logger.info("lr %g diverged: the trained model's class scores are not finite", lr)
        return out
    order = sorted(range(len(queries)), key=lambda i: -len(queries[i]))  # as evaluate batches them
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    longest_label = max(map(len, labels))
    per_rate = scoring_bytes_per_rate(
        student, len(prefix), max(map(len, queries)) + longest_label, longest_label, len(batches[0])
    )
    if max_rates_per_pass is None:
        max_rates_per_pass = CPU_RATES_PER_PASS if torch.device(str(student.cfg.device)).type == "cpu" else len(rates)
    size = min(chunk_size(per_rate, max_batch_bytes), max_rates_per_pass)
    projections = _RateProjections(student, list(trained.params[rates[0]]))
    full_reason = continuation_unsupported(student) if any(len(label) > 1 for label in labels) else None
    if full_reason is not None:
        logger.info("scoring multi-token labels in full passes of query + label: %s", full_reason)
    score_batch = _score_batch if full_reason is not None else _score_batch_continued
    for start in range(0, len(rates), size):
        group = rates[start : start + size]
        rate_params = [trained.params[lr] for lr in group]
        prefix_kv = _encode_rate_prefixes(student, projections, rate_params, prefix)
        scores = torch.zeros(len(group), len(queries), len(labels))
        for batch in batches:
            batch_scores = score_batch(
                student, projections, rate_params, prefix_kv, [queries[i] for i in batch], labels
            )
            scores[:, torch.tensor(batch)] = batch_scores
        if content_free_query is not None:
            bias = score_batch(student, projections, rate_params, prefix_kv, [content_free_query], labels)
        for r, lr in enumerate(group):
            rate_scores = scores[r]
            if bool(torch.isfinite(rate_scores).all()) and content_free_query is not None:
                rate_scores = calibrate(rate_scores, bias[r])
            if not bool(torch.isfinite(rate_scores).all()):
                logger.info("lr %g diverged: the trained model's class scores are not finite", lr)
                out[lr] = None
            else:
                out[lr] = rate_scores
    return out


def evaluated_class_scores(
    model: Model,
    prefix: Sequence[int],
    queries: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    n_start: int,
    batch_size: int,
    content_free_query: Sequence[int] | None,
) -> Float[torch.Tensor, "n_queries n_classes"]:
    """``model``'s class scores on ``queries`` after ``prefix`` (:func:`~icl_lens.evaluation.evaluate`,
    nothing recorded), contextually calibrated by the content-free query's when it is given."""
    run = evaluate(
        model, prefix, queries, labels, n_start=n_start, record=RecordSpec(), batch_size=batch_size, progress=False
    )
    scores = run.class_scores
    if content_free_query is not None and bool(torch.isfinite(scores).all()):
        scores = calibrate(scores, content_free_scores(model, prefix, content_free_query, labels, n_start))
    return scores


def _encode_rate_prefixes(student, projections, rate_params, prefix: list[int]):
    """The prefix's key/value cache under each rate's projections (batch row r = rate r), or None."""
    if not prefix:
        return None
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    n_rates = len(rate_params)
    tokens = torch.tensor([prefix] * n_rates, device=student.cfg.device)
    cache = TransformerLensKeyValueCache.init_cache(student.cfg, student.cfg.device, batch_size=n_rates)
    projections.forward(
        rate_params,
        lambda: student(tokens, past_kv_cache=cache, attention_mask=torch.ones_like(tokens), return_type=None),
    )
    cache.freeze()
    return cache


def _rows_prefix(prefix_kv, rows_per_rate: int) -> Prefix | None:
    """A prefix whose row ``r*B + i`` holds rate r's keys/values (the frozen cache repeated per row)."""
    if prefix_kv is None:
        return None
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

    entries = [
        TransformerLensKeyValueCacheEntry(
            past_keys=e.past_keys.repeat_interleave(rows_per_rate, dim=0),
            past_values=e.past_values.repeat_interleave(rows_per_rate, dim=0),
            frozen=True,
        )
        for e in prefix_kv.entries
    ]
    mask = prefix_kv.previous_attention_mask.repeat_interleave(rows_per_rate, dim=0)
    cache = TransformerLensKeyValueCache(entries=entries, previous_attention_mask=mask, frozen=True)
    return Prefix(length=int(mask.shape[1]), cache=cache)


def _score_batch(
    student, projections, rate_params, prefix_kv, queries: list[list[int]], labels: list[list[int]]
) -> Float[torch.Tensor, "n_rates batch n_classes"]:
    """One evaluation batch of ``queries`` for every rate of ``rate_params`` (rows rate-major): the
    class scores :func:`~icl_lens.evaluation.evaluate` computes — class 0's answer appended to each
    query, single-token classes read at the prediction position, other multi-token classes in a pass
    of their own."""
    n_rates, rows = len(rate_params), len(queries)
    kv = _rows_prefix(prefix_kv, rows)
    pred_pos = (torch.tensor([len(q) for q in queries]) - 1).repeat(n_rates)

    def rates_log_probs(label: list[int]) -> torch.Tensor:
        tokens, mask = pad_right([list(q) + label for q in queries], PAD_ID, student.cfg.device)
        tokens, mask = tokens.repeat(n_rates, 1), mask.repeat(n_rates, 1)
        resid = projections.forward(rate_params, lambda: final_residual(student, tokens, mask, prefix=kv))
        return label_log_probs(student, resid, pred_pos, label)

    answer = labels[0]
    answer_log_probs = rates_log_probs(answer)
    scores = torch.zeros(n_rates * rows, len(labels), device=answer_log_probs.device)
    scores[:, 0] = mean_token_log_prob(answer_log_probs, answer)
    first = answer_log_probs[:, 0]
    for class_id, label in enumerate(labels[1:], start=1):
        if len(label) == 1:
            scores[:, class_id] = first[:, label[0]]
        else:
            scores[:, class_id] = mean_token_log_prob(rates_log_probs(label), label)
    return scores.float().cpu().view(n_rates, rows, len(labels))


def _score_batch_continued(
    student, projections, rate_params, prefix_kv, queries: list[list[int]], labels: list[list[int]]
) -> Float[torch.Tensor, "n_rates batch n_classes"]:
    """As :func:`_score_batch`, the query run once: its keys/values are cached, and each multi-token
    label's tokens (all but the last) continue from that cache, so no label re-runs the query
    (:func:`~icl_lens.evaluation.continued_scores`, one copy of the queries per rate)."""
    n_rates, rows = len(rate_params), len(queries)
    scores = continued_scores(
        student,
        prefix_kv,
        queries,
        labels,
        copies=n_rates,
        run=lambda forward: projections.forward(rate_params, forward),
    )
    return scores.float().cpu().view(n_rates, rows, len(labels))
