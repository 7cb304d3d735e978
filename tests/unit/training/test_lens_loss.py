"""The logit lens read as a next-token loss (icl_lens.lens.lens_token_losses): the chunked loss
against the plain logits' cross-entropy, its gradients, its soft cap, and where it falls back."""

import copy
import math

import pytest
import torch

import icl_lens.lens as lens
from icl_lens.errors import MetricInputError
from icl_lens.lens import lens_loss_floats_per_row, lens_token_losses, logit_lens
from icl_lens.models.loading import store_unembedding_transposed


def _frozen(model, vocab_rows: bool = False):
    """A copy with every parameter frozen, as GD's student has its unembedding (the chunked path);
    ``vocab_rows``: W_U stored [d_vocab, d_model]-contiguous, as load_model lays it out."""
    model = copy.deepcopy(model)
    for param in model.parameters():
        param.requires_grad_(False)
    if vocab_rows:
        assert store_unembedding_transposed(model)
    return model


def _plain_losses(model, residual, targets):
    return torch.nn.functional.cross_entropy(logit_lens(model, residual[None])[0].float(), targets, reduction="none")


def _rows(model, n=11, seed=1):
    g = torch.Generator().manual_seed(seed)
    residual = torch.randn(n, model.cfg.d_model, generator=g) * 3
    targets = torch.randint(0, model.cfg.d_vocab, (n,), generator=g)
    return residual, targets


@pytest.mark.parametrize("vocab_rows", [False, True], ids=["W_U d_model-major", "W_U vocab-major"])
@pytest.mark.parametrize("chunk", [7, 64, 2048])  # several chunks (one ragged), one chunk
def test_chunked_losses_and_gradients_equal_the_plain_logits(any_tiny, chunk, vocab_rows, monkeypatch):
    monkeypatch.setattr(lens, "LENS_LOSS_CHUNK", chunk)
    any_tiny = _frozen(any_tiny, vocab_rows)
    assert lens_loss_floats_per_row(any_tiny) == chunk  # the chunked path runs
    residual, targets = _rows(any_tiny)
    weights = torch.rand(len(targets)) + 0.5  # a different incoming gradient per row
    got_in = residual.clone().requires_grad_(True)
    got = lens_token_losses(any_tiny, got_in, targets)
    (got * weights).sum().backward()
    want_in = residual.clone().requires_grad_(True)
    want = _plain_losses(any_tiny, want_in, targets)
    (want * weights).sum().backward()
    assert got.dtype == torch.float32 and got.shape == (len(targets),)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    assert torch.allclose(got_in.grad, want_in.grad, rtol=1e-4, atol=1e-6)


def test_gradient_reaches_the_block_parameters_as_with_the_plain_logits(tiny_llama, monkeypatch):
    """Through the final norm and the blocks: GD's parameter gradient is the plain logits' one."""
    monkeypatch.setattr(lens, "LENS_LOSS_CHUNK", 50)
    tokens = torch.tensor([[5, 17, 99, 3, 42, 7]])
    grads = []
    for loss_of in (lens_token_losses, _plain_losses):
        model = _frozen(tiny_llama)
        w_k = model.blocks[0].attn._W_K
        w_k.requires_grad_(True)
        resid = model(tokens, stop_at_layer=model.cfg.n_layers)[0, :-1]
        loss_of(model, resid, tokens[0, 1:]).mean().backward()
        grads.append(w_k.grad.clone())
    assert grads[0].abs().max() > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("vocab_rows", [False, True], ids=["W_U d_model-major", "W_U vocab-major"])
def test_a_zero_unembedding_gives_log_vocabulary(tiny_gpt, vocab_rows, monkeypatch):
    """All logits equal: every row's loss is log(d_vocab) exactly as a closed form, gradient zero."""
    monkeypatch.setattr(lens, "LENS_LOSS_CHUNK", 13)
    model = _frozen(tiny_gpt, vocab_rows)
    with torch.no_grad():
        model.unembed.W_U.zero_()
        model.unembed.b_U.zero_()
    residual, targets = _rows(model, n=4)
    residual.requires_grad_(True)
    losses = lens_token_losses(model, residual, targets)
    losses.sum().backward()
    assert torch.allclose(losses, torch.full((4,), math.log(model.cfg.d_vocab)), atol=1e-5)
    assert residual.grad.abs().max() < 1e-6


@pytest.mark.parametrize("vocab_rows", [False, True], ids=["W_U d_model-major", "W_U vocab-major"])
def test_the_soft_cap_is_applied_and_differentiated(tiny_llama, vocab_rows, monkeypatch):
    monkeypatch.setattr(lens, "LENS_LOSS_CHUNK", 9)
    model = _frozen(tiny_llama, vocab_rows)
    model.cfg.output_logits_soft_cap = 0.5  # small enough to bend every logit
    residual, targets = _rows(model)
    got_in, want_in = residual.clone().requires_grad_(True), residual.clone().requires_grad_(True)
    got, want = lens_token_losses(model, got_in, targets), _plain_losses(model, want_in, targets)
    got.sum().backward()
    want.sum().backward()
    uncapped = _plain_losses(tiny_llama, residual, targets)
    assert (got - uncapped).abs().max() > 0.1  # the cap matters here
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    assert torch.allclose(got_in.grad, want_in.grad, rtol=1e-4, atol=1e-6)


def test_a_trained_or_half_precision_unembedding_keeps_the_plain_logits(tiny_gpt, monkeypatch):
    monkeypatch.setattr(lens, "LENS_LOSS_CHUNK", 7)
    model = _frozen(tiny_gpt)
    model.unembed.W_U.requires_grad_(True)
    assert lens_loss_floats_per_row(model) == model.cfg.d_vocab  # the plain path holds every logit
    residual, targets = _rows(model)
    lens_token_losses(model, residual, targets).sum().backward()
    assert model.unembed.W_U.grad is not None and model.unembed.W_U.grad.abs().max() > 0
    model.unembed.W_U.requires_grad_(False)
    assert lens_loss_floats_per_row(model) == 7
    half = _frozen(tiny_gpt).to(torch.bfloat16)
    assert lens_loss_floats_per_row(half) == half.cfg.d_vocab
    got = lens_token_losses(half, residual.bfloat16(), targets)
    assert got.dtype == torch.float32
    assert torch.equal(got, _plain_losses(half, residual.bfloat16(), targets))


def test_without_gradient_the_losses_are_the_same(tiny_llama, monkeypatch):
    monkeypatch.setattr(lens, "LENS_LOSS_CHUNK", 7)
    model = _frozen(tiny_llama)
    residual, targets = _rows(model)
    with torch.no_grad():
        got = lens_token_losses(model, residual, targets)
    assert torch.allclose(got, _plain_losses(model, residual, targets), rtol=1e-5, atol=1e-5)


def test_mismatched_rows_and_targets_are_refused(tiny_gpt):
    residual, targets = _rows(tiny_gpt, n=5)
    with pytest.raises(MetricInputError, match="rows"):
        lens_token_losses(tiny_gpt, residual, targets[:3])
    with pytest.raises(MetricInputError, match="rows"):
        lens_token_losses(tiny_gpt, residual[None], targets)


def test_a_confident_row_keeps_its_small_gradient_accurate(tiny_llama, monkeypatch):
    """Where the target is the likely token, d loss/dx is small: it is formed without cancelling two
    near-equal vectors, so it matches a float64 computation to float32 precision."""
    monkeypatch.setattr(lens, "LENS_LOSS_CHUNK", 16)
    model = _frozen(tiny_llama, vocab_rows=True)
    residual, _ = _rows(model, n=6)
    residual = residual * 20
    with torch.no_grad():
        targets = logit_lens(model, residual[None])[0].argmax(-1)  # the model's own top token
    got_in = residual.clone().requires_grad_(True)
    lens_token_losses(model, got_in, targets).sum().backward()
    want_model = copy.deepcopy(model).double()
    want_in = residual.double().requires_grad_(True)
    _plain_losses(want_model, want_in, targets).sum().backward()
    assert want_in.grad.norm() < 0.1 * residual.norm() / 20  # confident rows: a small gradient
    error = (got_in.grad.double() - want_in.grad).norm(dim=1) / want_in.grad.norm(dim=1)
    assert float(error.max()) < 1e-4
