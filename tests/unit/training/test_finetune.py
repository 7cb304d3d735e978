import copy

import pytest
import torch

from icl_lens.errors import ConfigError, TrainingDivergedError
from icl_lens.training.finetune import FinetuneConfig, demo_batches, finetune, masked_next_token_loss, select_trainable
from icl_lens.training.lcgd import layer_causal_finetune, layer_causal_losses
from icl_lens.prompts import PromptFormat, encode_prompts
from icl_lens.tasks import get_task, sample_demonstrations, sample_queries


def _demos(model, k=4):
    t = get_task("sst2")
    p = encode_prompts(model.tokenizer, t, sample_demonstrations(t, k, 0), sample_queries(t, 2), PromptFormat(),
                       model.cfg.n_ctx)
    return p.demo_sequences, p.demo_answer_lengths


def _reference_loss(logits, tokens, mask):
    """Next-token cross-entropy from the model's full logits, averaged over counted positions."""
    log_probs = logits[:, :-1].log_softmax(-1)
    token_loss = -log_probs.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    return (token_loss * mask).sum() / mask.sum()


def _state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("trainer", ["gd", "lcgd", "lcgd-sequential"])
def test_only_kv_parameters_of_a_copy_change(tiny_llama, trainer):
    before = _state(tiny_llama)
    seqs, answers = _demos(tiny_llama)
    cfg = FinetuneConfig(lr=1e-2)
    if trainer == "gd":
        tuned, trace = finetune(tiny_llama, seqs, answers, cfg, progress=False)
    else:
        schedule = "sequential" if trainer.endswith("sequential") else "simultaneous"
        tuned, trace = layer_causal_finetune(tiny_llama, seqs, answers, cfg, schedule, progress=False)
    # the loaded model is never modified
    for name, p in tiny_llama.named_parameters():
        assert torch.equal(p, before[name]), name
    changed = {n for n, p in tuned.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.split(".")[-1] in ("_W_K", "_W_V", "_b_K", "_b_V") for n in changed)
    assert len(trace.grad_norms) == 4 and all(len(row) == tiny_llama.cfg.n_layers for row in trace.grad_norms)
    assert all(v > 0 for row in trace.grad_norms for v in row)


def test_sgd_step_matches_hand_update(tiny_gpt):
    """One demonstration, batch 1: θ' = θ - lr · ∂loss/∂θ for W_K/W_V, nothing else."""
    seqs, answers = _demos(tiny_gpt, k=1)
    lr = 0.05
    tuned, trace = finetune(tiny_gpt, seqs, answers, FinetuneConfig(lr=lr), progress=False)
    ref = copy.deepcopy(tiny_gpt)
    params = select_trainable(ref, "kv")
    tokens, attn, mask = next(demo_batches(seqs, answers, FinetuneConfig(), "cpu"))
    loss = _reference_loss(ref(tokens, attention_mask=attn), tokens, mask)
    loss.backward()
    assert abs(float(loss.detach()) - trace.losses[0]) < 1e-5
    for name, p in params.items():
        assert torch.allclose(dict(tuned.named_parameters())[name], p - lr * p.grad, atol=1e-6), name


def test_loss_from_final_residual_equals_loss_from_logits(any_tiny):
    seqs, answers = _demos(any_tiny, k=3)
    tokens, attn, mask = next(demo_batches(seqs, answers, FinetuneConfig(batch_size=3, loss_on="answer"), "cpu"))
    resid = any_tiny(tokens, attention_mask=attn, stop_at_layer=any_tiny.cfg.n_layers)
    expected = _reference_loss(any_tiny(tokens, attention_mask=attn), tokens, mask)
    assert abs(float(masked_next_token_loss(any_tiny, resid, tokens, mask)) - float(expected)) < 1e-5
    with pytest.raises(ConfigError, match="empty loss mask"):
        masked_next_token_loss(any_tiny, resid, tokens, torch.zeros_like(mask))


def test_answer_only_loss_mask():
    cfg = FinetuneConfig(loss_on="answer", batch_size=2)
    tokens, attn, mask = next(demo_batches([[9, 1, 2, 3, 4], [9, 5, 6]], [2, 1], cfg, "cpu"))
    assert mask.tolist() == [[0, 0, 1, 1], [0, 1, 0, 0]]
    assert attn.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    all_mask = next(demo_batches([[9, 1, 2]], [1], FinetuneConfig(), "cpu"))[2]
    assert all_mask.tolist() == [[1, 1]]


def test_divergence_names_the_step(tiny_gpt):
    seqs, answers = _demos(tiny_gpt, k=3)
    with pytest.raises(TrainingDivergedError, match=r"at step [0-9]+"):
        finetune(tiny_gpt, seqs, answers, FinetuneConfig(lr=1e30, params="all"), progress=False)


def test_bad_finetune_configs():
    with pytest.raises(ConfigError, match="unknown parameter group"):
        FinetuneConfig(params="kvx")
    with pytest.raises(ConfigError, match="lr must be"):
        FinetuneConfig(lr=float("nan"))


def _layer_grads(model, layer, seqs, answers, layer_causal: bool):
    model.zero_grad(set_to_none=True)
    params = select_trainable(model, "kv")
    tokens, attn, mask = next(demo_batches(seqs, answers, FinetuneConfig(batch_size=len(seqs)), "cpu"))
    if layer_causal:
        layer_causal_losses(model, tokens, attn, mask, backward=True)
    else:
        _reference_loss(model(tokens, attention_mask=attn), tokens, mask).backward()
    return {n: p.grad.clone() for n, p in params.items() if n.startswith(f"blocks.{layer}.")}


def _perturb_above(model, layer):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("blocks.") and int(name.split(".")[1]) > layer:
                p.add_(0.5 * torch.randn_like(p))


@pytest.mark.parametrize("layer", [0, 1])
def test_lcgd_gradient_is_causal(tiny_llama, layer):
    """LCGD: layer l's gradient ignores every layer above l, and equals ∂loss_l/∂θ_l alone."""
    seqs, answers = _demos(tiny_llama, k=2)
    model = copy.deepcopy(tiny_llama)
    grads = _layer_grads(model, layer, seqs, answers, layer_causal=True)
    perturbed = copy.deepcopy(tiny_llama)
    _perturb_above(perturbed, layer)
    grads_perturbed = _layer_grads(perturbed, layer, seqs, answers, layer_causal=True)
    for name in grads:
        assert torch.allclose(grads[name], grads_perturbed[name], atol=1e-6), name
    # gradient of layer l's own loss alone
    own = copy.deepcopy(tiny_llama)
    own.zero_grad(set_to_none=True)
    params = select_trainable(own, "kv")
    tokens, attn, mask = next(demo_batches(seqs, answers, FinetuneConfig(batch_size=len(seqs)), "cpu"))
    (loss_l,) = layer_causal_losses(own, tokens, attn, mask, n_layers=layer + 1, only_last=True)
    loss_l.backward()
    for name in grads:
        assert torch.allclose(grads[name], params[name].grad, atol=1e-6), name


def test_lcgd_layer_grouping_does_not_change_losses_or_gradients(tiny_llama, monkeypatch):
    """Unembedding all layers in one matrix product == one layer at a time (LOGIT_BUDGET)."""
    import icl_lens.training.lcgd as lcgd

    seqs, answers = _demos(tiny_llama, k=2)
    tokens, attn, mask = next(demo_batches(seqs, answers, FinetuneConfig(batch_size=2), "cpu"))
    runs = []
    for budget in (2**26, 1):  # all layers in one group; one layer per group
        monkeypatch.setattr(lcgd, "LOGIT_BUDGET", budget)
        model = copy.deepcopy(tiny_llama)
        params = select_trainable(model, "kv")
        losses = layer_causal_losses(model, tokens, attn, mask, backward=True)
        runs.append((torch.stack(losses), {n: p.grad.clone() for n, p in params.items()}))
    (losses_a, grads_a), (losses_b, grads_b) = runs
    assert losses_a.shape == (tiny_llama.cfg.n_layers,)
    assert torch.allclose(losses_a, losses_b, atol=1e-6)
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-6), name


def test_lcgd_layer_groups_are_the_fewest_balanced_groups_under_the_budget(monkeypatch):
    import icl_lens.training.lcgd as lcgd

    monkeypatch.setattr(lcgd, "LOGIT_BUDGET", 2**27)
    # Gemma-3-270M's 18 layers, 35 counted rows, 262144-token vocabulary: 14 layers fit, so 2 groups of 9
    groups = lcgd.layer_groups(range(18), 35, 262144)
    assert groups == [list(range(9)), list(range(9, 18))]
    assert lcgd.layer_groups(range(18), 600, 262144) == [[layer] for layer in range(18)]  # not even one fits
    assert lcgd.layer_groups(range(4), 1, 10) == [[0, 1, 2, 3]]
    assert lcgd.layer_groups([5, 6, 7], 2**26, 2) == [[5], [6], [7]]  # each layer alone is at the budget
    assert lcgd.layer_groups(range(7), 2**24, 2) == [[0, 1, 2, 3], [4, 5, 6]]  # 4 fit: 2 groups, sizes 4 and 3
    assert lcgd.layer_groups([], 10, 10) == []


def test_plain_gd_gradient_is_not_causal(tiny_llama):
    seqs, answers = _demos(tiny_llama, k=2)
    grads = _layer_grads(copy.deepcopy(tiny_llama), 0, seqs, answers, layer_causal=False)
    perturbed = copy.deepcopy(tiny_llama)
    _perturb_above(perturbed, 0)
    grads_perturbed = _layer_grads(perturbed, 0, seqs, answers, layer_causal=False)
    assert any(not torch.allclose(grads[n], grads_perturbed[n], atol=1e-4) for n in grads)


def test_gradient_clipping_bounds_each_layer(tiny_gpt):
    seqs, answers = _demos(tiny_gpt, k=2)
    lr = 1.0
    tuned, trace = finetune(tiny_gpt, seqs[:1], answers[:1], FinetuneConfig(lr=lr, clip_value=1e-3), progress=False)
    for name, p in tuned.named_parameters():
        delta = (p - dict(tiny_gpt.named_parameters())[name]).abs().max()
        assert delta <= lr * 1e-3 + 1e-7
    tuned, _ = finetune(tiny_gpt, seqs[:1], answers[:1], FinetuneConfig(lr=lr, clip_norm=1e-2), progress=False)
    for layer in range(tiny_gpt.cfg.n_layers):
        sq = sum(float((p - dict(tiny_gpt.named_parameters())[n]).pow(2).sum())
                 for n, p in tuned.named_parameters() if n.startswith(f"blocks.{layer}."))
        assert sq ** 0.5 <= lr * 1e-2 + 1e-6


def _kv_gradients(model, seqs, answers):
    """float32 gradients of the mean-per-token loss (one demonstration) for each W_K/W_V/b_K/b_V."""
    model = copy.deepcopy(model)
    params = select_trainable(model, "kv")
    tokens, attn, mask = next(demo_batches(seqs, answers, FinetuneConfig(), "cpu"))
    _reference_loss(model(tokens, attention_mask=attn), tokens, mask).backward()
    return {n: p.grad.clone() for n, p in params.items()}


@pytest.mark.parametrize("trainer", ["gd", "lcgd"])
def test_global_norm_clip_scales_all_layers_together(tiny_llama, trainer):
    """Deutch et al.'s reference clip: one ℓ2 norm over every layer, so the step is the gradient times
    clip / ‖g‖ — layer-norm ratios unchanged, global norm of the step = lr · clip."""
    seqs, answers = _demos(tiny_llama, k=1)
    lr = 0.5
    train = finetune if trainer == "gd" else layer_causal_finetune
    _, trace = train(tiny_llama, seqs, answers, FinetuneConfig(lr=lr), progress=False)
    global_norm = sum(v * v for v in trace.grad_norms[0]) ** 0.5
    clip = global_norm / 4
    tuned, clipped_trace = train(tiny_llama, seqs, answers, FinetuneConfig(lr=lr, clip_global_norm=clip), progress=False)
    assert clipped_trace.grad_norms == trace.grad_norms  # the trace keeps the norms before clipping
    original = dict(tiny_llama.named_parameters())
    steps = {n: (original[n] - p) / lr for n, p in tuned.named_parameters() if not torch.equal(p, original[n])}
    layer_norms = [sum(float(g.pow(2).sum()) for n, g in steps.items() if n.startswith(f"blocks.{layer}.")) ** 0.5
                   for layer in range(tiny_llama.cfg.n_layers)]
    assert abs(sum(v * v for v in layer_norms) ** 0.5 - clip) <= 1e-4 * clip
    for clipped, unclipped in zip(layer_norms, trace.grad_norms[0]):
        assert abs(clipped / clip - unclipped / global_norm) <= 1e-4
    if trainer == "gd":
        expected = _kv_gradients(tiny_llama, seqs, answers)
        for name, step in steps.items():
            assert torch.allclose(step, expected[name] * clip / global_norm, atol=1e-5), name


def test_global_norm_clip_above_the_norm_changes_nothing(tiny_gpt):
    seqs, answers = _demos(tiny_gpt, k=2)
    plain, _ = finetune(tiny_gpt, seqs, answers, FinetuneConfig(lr=0.1), progress=False)
    loose, _ = finetune(tiny_gpt, seqs, answers, FinetuneConfig(lr=0.1, clip_global_norm=1e6), progress=False)
    for (name, p), q in zip(plain.named_parameters(), loose.parameters()):
        assert torch.equal(p, q), name


def test_new_finetune_field_at_its_default_keeps_cell_digests():
    """clip_global_norm is written only when set, so cells finished before it existed keep their name."""
    from icl_lens.cell.experiment import ExperimentConfig

    assert "clip_global_norm" not in FinetuneConfig().to_dict()
    assert FinetuneConfig(clip_global_norm=12.0).to_dict()["clip_global_norm"] == 12.0
    cfg = ExperimentConfig(task="sst2", finetune=FinetuneConfig(clip_global_norm=12.0))
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.cell_name() != ExperimentConfig(task="sst2").cell_name()
    old = ExperimentConfig(task="sst2").to_dict()
    assert set(old["finetune"]) == {"params", "optimizer", "lr", "momentum", "weight_decay", "epochs", "batch_size",
                                    "loss_on", "clip_value", "clip_norm"}
    with pytest.raises(ConfigError, match="clip_global_norm"):
        FinetuneConfig(clip_global_norm=0.0)
    with pytest.raises(ConfigError, match="clip_global_norm"):
        FinetuneConfig(clip_global_norm=float("nan"))
