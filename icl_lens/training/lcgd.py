"""Layer-causal gradient descent (LCGD, Deutch et al. 2024).

In-context learning cannot send information from a higher layer back down to a lower one, but GD
can: the gradient reaching layer l's W_K/W_V flows back from the loss through every layer above l.
LCGD removes that path. With TransformerLens hooks (no re-implemented forward pass):

* ``blocks.{l}.hook_resid_pre`` returns the residual stream *detached*, so block l's parameters
  receive gradient only from what is computed at and after block l within this same block;
* ``blocks.{l}.hook_resid_post`` is read through the model's own final norm and unembedding
  (the logit lens, :func:`icl_lens.lens.logit_lens`) into a per-layer prediction, with
  loss_l = the same next-token cross-entropy as GD;
* the total loss is Σ_l loss_l. Because the blocks are cut apart, ∂total/∂θ_l = ∂loss_l/∂θ_l,
  so each layer's backward can run on its own (one layer's logits in memory at a time).

Schedules: ``simultaneous`` (reference: one backward and one step per demonstration, all layers at
once) and ``sequential`` (layer 0 trained on every demonstration first, then layer 1 on the updated
lower layers, and so on).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import torch
from tqdm.auto import tqdm

from icl_lens.errors import ConfigError
from icl_lens.lens import lens_loss_floats_per_row
from icl_lens.models.backends import Model, final_residual
from icl_lens.models.cpu_matmul import uses_cpu_matmul
from icl_lens.training.finetune import (
    FinetuneConfig,
    MasterWeights,
    TrainingTrace,
    check_demonstrations,
    check_finite,
    check_parameters_finite,
    clip_layer_gradients,
    demo_batches,
    layer_grad_norms,
    make_optimizer,
    masked_next_token_losses,
    trainable_copy,
)

logger = logging.getLogger(__name__)

Schedule = Literal["simultaneous", "sequential"]

LOGIT_BUDGET = 2**27
"""Most fp32 logits (512 MiB) one group of layers may hold at a time in :func:`layer_causal_losses`.
The lens loss of a group is one sweep over the vocabulary, faster per row with more rows (the
unembedding is read once per group), so groups are made as large as this budget allows and then
balanced. The chunked loss of :func:`icl_lens.lens.lens_token_losses` holds a chunk of logits per row
only: there every layer fits in one group."""


def layer_groups(layers: Sequence[int], rows_per_layer: int, floats_per_row: int) -> list[list[int]]:
    """``layers`` split, in order, into the fewest groups whose fp32 logits (``rows_per_layer ×
    floats_per_row`` per layer; :func:`icl_lens.lens.lens_loss_floats_per_row`) stay under
    :data:`LOGIT_BUDGET`, balanced in size (a group of one layer always fits)."""
    layers = list(layers)
    if not layers:
        return []
    most = max(1, LOGIT_BUDGET // max(1, rows_per_layer * floats_per_row))
    n_groups = -(-len(layers) // most)
    size = -(-len(layers) // n_groups)
    return [layers[start : start + size] for start in range(0, len(layers), size)]


def detach_hook(resid, hook):
    """A forward hook that cuts the gradient at a block's input (layer-causal GD)."""
    return resid.detach()


@uses_cpu_matmul
def layer_causal_losses(
    model: Model,
    tokens: torch.Tensor,
    attention_mask: torch.Tensor,
    loss_mask: torch.Tensor,
    n_layers: int | None = None,
    backward: bool = False,
    only_last: bool = False,
) -> list[torch.Tensor]:
    """Per-layer logit-lens losses of layer-causal GD for the first ``n_layers`` blocks
    (only the last of them with ``only_last``).

    Every block's input is detached, so loss_l depends on block l's parameters only through
    block l. Layers are unembedded together in groups that keep the fp32 logits under
    ``LOGIT_BUDGET`` elements (:func:`layer_groups`; one group where the loss is chunked). With
    ``backward=True`` each group's summed loss is back-propagated as soon as it is computed (the same
    gradients as ``sum(losses).backward()``, with one group's logits alive at a time where they are
    held); the returned losses are then detached.
    """
    n_layers = model.cfg.n_layers if n_layers is None else n_layers
    block_outputs: dict[int, torch.Tensor] = {}

    def capture(resid, hook):
        block_outputs[hook.layer()] = resid
        return resid

    hooks = []
    for layer in range(n_layers):
        hooks.append((f"blocks.{layer}.hook_resid_pre", detach_hook))
        hooks.append((f"blocks.{layer}.hook_resid_post", capture))
    final_residual(model, tokens, attention_mask, n_layers=n_layers, hooks=hooks)
    layers = list(range(n_layers - 1 if only_last else 0, n_layers))
    rows_per_layer = max(1, int((loss_mask > 0).sum()))
    losses: list[torch.Tensor] = []
    for group in layer_groups(layers, rows_per_layer, lens_loss_floats_per_row(model)):
        group_losses = masked_next_token_losses(model, [block_outputs.pop(l) for l in group], tokens, loss_mask)
        if backward:
            group_losses.sum().backward()
            group_losses = group_losses.detach()
        losses.extend(group_losses.unbind())
    return losses


@uses_cpu_matmul
def layer_causal_finetune(
    model: Model,
    demo_sequences: Sequence[Sequence[int]],
    answer_lengths: Sequence[int],
    cfg: FinetuneConfig = FinetuneConfig(),
    schedule: Schedule = "simultaneous",
    progress: bool = True,
) -> tuple[Model, TrainingTrace]:
    """LCGD on a copy of ``model``; returns it and its trace.

    The trace's ``grad_norms[i][l]`` is layer l's gradient norm at its i-th step for both
    schedules, so the layers × demonstration heatmap reads the same way.
    """
    if schedule not in ("simultaneous", "sequential"):
        raise ConfigError(f"LCGD schedule must be 'simultaneous' or 'sequential', got {schedule!r}")
    check_demonstrations(model, demo_sequences, answer_lengths)
    student, trainable = trainable_copy(model, cfg.params)
    n_layers = student.cfg.n_layers
    masters = MasterWeights(trainable)  # float32 masters for a half-precision model (see there)
    optimizer = make_optimizer(list(masters.params.values()), cfg)
    batches = list(demo_batches(demo_sequences, answer_lengths, cfg, student.cfg.device))
    trace = TrainingTrace()

    if schedule == "simultaneous":
        for step, (tokens, attention_mask, loss_mask) in enumerate(
            tqdm(batches, desc="lcgd", disable=not progress, leave=False)
        ):
            masters.zero_grad()
            losses = [float(l) for l in layer_causal_losses(student, tokens, attention_mask, loss_mask, backward=True)]
            masters.gradients_to_masters()
            norms = layer_grad_norms(masters.params, n_layers)
            check_finite(step, sum(losses), norms, what="layer-causal loss")
            clip_layer_gradients(masters.params, cfg, n_layers)
            optimizer.step()
            check_parameters_finite(step, masters.params)
            masters.masters_to_model(step)
            trace.losses.append(sum(losses))
            trace.layer_losses.append(losses)
            trace.grad_norms.append(norms)
    else:
        norm_rows = [[0.0] * n_layers for _ in batches]
        loss_rows = [[0.0] * n_layers for _ in batches]
        layer_params = [masters.of_layer(layer) for layer in range(n_layers)]
        for layer in tqdm(range(n_layers), desc="lcgd (sequential)", disable=not progress, leave=False):
            for step, (tokens, attention_mask, loss_mask) in enumerate(batches):
                masters.zero_grad()
                # Blocks above `layer` are not run; blocks below are detached, so only this layer learns.
                (loss,) = layer_causal_losses(
                    student, tokens, attention_mask, loss_mask, n_layers=layer + 1, only_last=True
                )
                loss.backward()
                masters.gradients_to_masters()
                norms = layer_grad_norms(layer_params[layer], n_layers)
                check_finite(step, float(loss.detach()), norms, what=f"layer-{layer} loss")
                clip_layer_gradients(layer_params[layer], cfg, n_layers)
                optimizer.step()
                check_parameters_finite(step, layer_params[layer])
                masters.masters_to_model(step, list(layer_params[layer]))
                norm_rows[step][layer] = norms[layer]
                loss_rows[step][layer] = float(loss.detach())
        trace.grad_norms = norm_rows
        trace.layer_losses = loss_rows
        trace.losses = [sum(row) for row in loss_rows]

    masters.warn_if_update_lost()
    for param in student.parameters():
        param.requires_grad_(False)
    student.eval()
    return student, trace
