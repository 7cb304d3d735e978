"""Attention maps of the query part (recording, files), notebook views and offline HTML."""

from __future__ import annotations

import json
import re

import pytest
import torch

from report_fixtures import TINY_TEXTS, ScriptParser, make_results_dir, parse_html, write_tiny_task  # noqa: F401

from icl_lens.errors import ResultsError
from icl_lens.evaluation import evaluate
from icl_lens.prompts import PromptFormat, encode_prompts
from icl_lens.tasks import get_task, sample_demonstrations, sample_queries
from icl_lens.viz import (
    PanelGroup,
    attention_difference_view,
    attention_view,
    compare_settings,
    load_attention_maps,
    record_attention_maps,
    save_attention_maps,
)
from icl_lens.viz.html import BUNDLE_MARKER, Panel, circuitsvis_bundle, panels_page
from icl_lens.viz.maps import MAPS_FILE, TOKENS_FILE, token_strings

def _prompts(model, k=2, n=3):
    t = get_task("sst2")
    return encode_prompts(model.tokenizer, t, sample_demonstrations(t, k, 0), sample_queries(t, n), PromptFormat(),
                          model.cfg.n_ctx)


@pytest.fixture(scope="module")
def recorded(tiny_llama):
    p = _prompts(tiny_llama)
    answer = p.labels[0]
    zsl = record_attention_maps(tiny_llama, p.zsl_prefix, p.queries, answer, n_start=p.n_start)
    icl = record_attention_maps(tiny_llama, p.icl_prefix, p.queries, answer, n_start=p.n_start)
    tokens = [token_strings(tiny_llama.tokenizer, q + answer) for q in p.queries]
    return p, {"zsl": zsl, "icl": icl}, tokens


def test_maps_cover_the_query_part_and_align_across_settings(any_tiny):
    model = any_tiny
    p = _prompts(model)
    answer = p.labels[0]
    zsl = record_attention_maps(model, p.zsl_prefix, p.queries, answer, n_start=p.n_start)
    icl = record_attention_maps(model, p.icl_prefix, p.queries, answer, n_start=p.n_start)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    assert len(zsl) == len(icl) == len(p.queries)
    for query, z, i in zip(p.queries, zsl, icl):
        q = len(query) + len(answer)
        for key in ("pattern", "scores"):
            assert z[key].shape == i[key].shape == (L, H, q, q)
        for key in ("demo_mass", "start_mass"):
            assert z[key].shape == i[key].shape == (L, H, q)
        upper = torch.ones(q, q, dtype=torch.bool).triu(1)
        assert (z["pattern"][..., upper] == 0).all() and (z["scores"][..., upper] == 0).all()
        assert torch.isfinite(i["scores"]).all()


def test_zsl_rows_sum_to_one_minus_start_mass(recorded):
    p, maps, _ = recorded
    assert len(p.zsl_prefix) == p.n_start == 1
    for z, i in zip(maps["zsl"], maps["icl"]):
        assert torch.allclose(z["pattern"].sum(-1), 1 - z["start_mass"], atol=1e-5)
        assert (z["demo_mass"] == 0).all()
        # ICL: part of every row's mass went to the demonstrations
        assert torch.allclose(i["pattern"].sum(-1) + i["demo_mass"] + i["start_mass"],
                              torch.ones_like(i["demo_mass"]), atol=1e-5)
        assert (i["demo_mass"][:, :, 0] > 0).all()
        assert (i["pattern"].sum(-1) < z["pattern"].sum(-1) + 1e-6).float().mean() > 0.5


def test_maps_equal_a_full_forward_pass_and_the_evaluation_rows(tiny_llama, recorded):
    p, maps, _ = recorded
    model = tiny_llama
    P = len(p.icl_prefix)
    answer = p.labels[0]
    run = evaluate(model, p.icl_prefix, p.queries, p.labels, n_start=p.n_start, progress=False)
    for n, (query, m) in enumerate(zip(p.queries, maps["icl"])):
        _, cache = model.run_with_cache(torch.tensor([p.icl_prefix + query + answer]))
        q = len(query) + len(answer)
        lower = torch.ones(q, q, dtype=torch.bool).tril()
        for layer in range(model.cfg.n_layers):
            pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0]
            scores = cache[f"blocks.{layer}.attn.hook_attn_scores"][0]
            assert torch.allclose(m["pattern"][layer], pattern[:, P:, P:], atol=1e-6)
            assert torch.allclose(m["scores"][layer][:, lower], scores[:, P:, P:][:, lower], atol=1e-5)
            assert torch.allclose(m["demo_mass"][layer], pattern[:, P:, 1:P].sum(-1), atol=1e-5)
            # the evaluation's recorded row ("answer" position) is the maps' last row
            recorded_row = run.activations[f"blocks.{layer}.attn.hook_pattern"][n, :, :q]
            assert torch.allclose(m["pattern"][layer, :, -1], recorded_row, atol=1e-5)
            assert torch.allclose(m["demo_mass"][layer, :, -1], run.demo_attention_mass[n, layer], atol=1e-5)


def test_save_load_roundtrip(tmp_path, recorded):
    p, maps, tokens = recorded
    examples = [{"row_index": 10 + i, "label": i % 2, "text": "".join(t)} for i, t in enumerate(tokens)]
    path = save_attention_maps(tmp_path / "cell", maps, tokens, examples)
    assert path == tmp_path / "cell" / MAPS_FILE
    assert sorted(x.name for x in (tmp_path / "cell").iterdir()) == sorted([MAPS_FILE, TOKENS_FILE])  # no temp files
    from safetensors import safe_open

    with safe_open(path, "pt") as handle:
        keys = set(handle.keys())
        assert handle.get_tensor("icl/0/pattern").dtype == torch.float16
    assert {"zsl/0/pattern", "zsl/0/scores", "zsl/0/demo_mass", "icl/2/start_mass"} <= keys
    index = json.loads((tmp_path / "cell" / TOKENS_FILE).read_text())
    assert index["settings"] == ["zsl", "icl"]
    assert index["examples"][1]["row_index"] == 11 and index["examples"][1]["tokens"] == tokens[1]

    loaded_maps, loaded_tokens, loaded_examples = load_attention_maps(tmp_path / "cell")
    assert loaded_tokens == tokens
    assert loaded_examples == examples
    assert list(loaded_maps) == ["zsl", "icl"]
    for setting in maps:
        for original, loaded in zip(maps[setting], loaded_maps[setting]):
            assert set(loaded) == set(original)
            for key, value in original.items():
                assert loaded[key].dtype == torch.float32 and loaded[key].shape == value.shape
                assert torch.allclose(loaded[key], value, atol=2e-3, rtol=2e-3), key


def test_save_rejects_misaligned_inputs_and_load_reports_damage(tmp_path, recorded):
    _, maps, tokens = recorded
    examples = [{"row_index": i, "label": 0} for i in range(len(tokens))]
    with pytest.raises(ValueError, match="positions"):
        save_attention_maps(tmp_path / "a", maps, [t[:-1] for t in tokens], examples)
    with pytest.raises(ValueError, match="examples"):
        save_attention_maps(tmp_path / "a", maps, tokens, examples[:1])
    save_attention_maps(tmp_path / "b", maps, tokens, examples)
    (tmp_path / "b" / MAPS_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(ResultsError):
        load_attention_maps(tmp_path / "b")
    with pytest.raises(ResultsError):
        load_attention_maps(tmp_path / "missing")


def assert_offline_single_bundle(text: str, n_render_calls: int | None = None) -> ScriptParser:
    """One inlined circuitsvis bundle, no external script/link/img source, no CDN import."""
    parsed = parse_html(text)
    with_bundle = [s for s in parsed.scripts if BUNDLE_MARKER in s["text"]]
    assert len(with_bundle) == 1
    assert text.count(BUNDLE_MARKER) == 1
    assert text.count("var CircuitsVis=") == 1
    assert not any("src" in s["attrs"] for s in parsed.scripts)
    for tag, attrs in parsed.tags:
        for attr in ("src", "href"):
            value = attrs.get(attr) or ""
            assert not re.match(r"(https?:)?//", value), (tag, attr, value)
    assert "unpkg.com" not in text and "sourceMappingURL" not in text
    if n_render_calls is not None:
        others = "".join(s["text"] for s in parsed.scripts if BUNDLE_MARKER not in s["text"])
        assert others.count("CircuitsVis.render(") == n_render_calls
    return parsed


@pytest.mark.parametrize("n_panels", [1, 5])
def test_page_inlines_the_bundle_once_for_any_number_of_panels(n_panels):
    tokens = ["a", "b", "c"]
    panels = [Panel("AttentionPattern", {"tokens": tokens, "attention": torch.rand(3, 3).tril()}, title=f"p{i}")
              for i in range(n_panels)]
    text = panels_page(panels, title="t")
    assert_offline_single_bundle(text, n_render_calls=n_panels)
    assert len({p.element_id for p in panels}) == n_panels
    for p in panels:
        assert f'id="{p.element_id}"' in text
    assert "</script" not in circuitsvis_bundle()


def test_notebook_views(recorded):
    from circuitsvis.utils.render import RenderedHTML

    _, maps, tokens = recorded
    view = attention_view(maps, tokens, layer=1, setting="icl", example=2)
    assert isinstance(view, RenderedHTML) and "AttentionHeads" in view.local_src
    one_head = attention_view(maps["zsl"][0], tokens[0], layer=0, head=3, kind="scores")
    assert "AttentionPattern" in one_head.local_src
    diff = attention_difference_view(maps["icl"][0], maps["zsl"][0], tokens[0], layer=1, setting_a="icl",
                                     setting_b="zsl")
    assert isinstance(diff, RenderedHTML)

    group = compare_settings(maps, tokens, layer=1, example=1)
    assert isinstance(group, PanelGroup)
    assert [p.title.split(" ·")[0] for p in group] == ["ZSL", "ICL", "ICL − ZSL"]
    pattern_panel, diff_panel = group.panels[1], group.panels[2]
    assert (pattern_panel.props["minValue"], pattern_panel.props["maxValue"]) == (0.0, 1.0)
    values = torch.tensor(diff_panel.props["attention"])
    assert values.min() < 0 < values.max()  # signed differences, not clipped
    assert diff_panel.props["minValue"] == -diff_panel.props["maxValue"]
    assert values.abs().max() <= diff_panel.props["maxValue"] + 1e-6
    expected = maps["icl"][1]["pattern"][1] - maps["zsl"][1]["pattern"][1]
    assert torch.allclose(values, expected, atol=1e-4)
    assert_offline_single_bundle(group._repr_html_(), n_render_calls=3)
    with pytest.raises(ValueError, match="setting"):
        attention_view(maps, tokens, layer=0)


def test_static_report(tmp_path, tiny_gpt):
    """The report's files and HTML (the browser test checks what the page does)."""
    from icl_lens.reporting.report import build_report

    results_dir = make_results_dir(tmp_path, tiny_gpt)
    paths = build_report(results_dir)
    assert len(paths) == 1
    cell = paths[0].parent
    text = paths[0].read_text()
    parsed = assert_offline_single_bundle(text)
    images = [attrs["src"] for tag, attrs in parsed.tags if tag == "img"]
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
    assert {"report_simaou.png", "report_simam_delta.png", "report_grad_norms.png"} <= {p.name for p in cell.iterdir()}
    for needle in ("Accuracy", "Rec2FTP", "Jaccard", "SimAM_Δ LCGD", "sel-example", "sel-layer", "sel-head"):
        assert needle in text
    data = json.loads(next(s["text"] for s in parsed.scripts if s["attrs"].get("id") == "icl-attention-data"))
    assert data["settings"] == ["zsl", "icl", "ft", "lcgd"] and len(data["examples"]) == 2
    index = (results_dir / "index.html").read_text()
    assert f'href="{cell.name}/report.html"' in index and "CircuitsVis" not in index


def test_report_command(tmp_path, tiny_gpt, capsys):
    from icl_lens.cli import make_parser
    from icl_lens.cli import report as report_command

    parser = make_parser()
    with pytest.raises(ResultsError, match="no finished cell"):
        report_command.main(parser.parse_args(["report", str(tmp_path)]))
    results_dir = make_results_dir(tmp_path, tiny_gpt)
    args = parser.parse_args(["report", str(results_dir), "--max-mb", "0.0001", "--kinds", "pattern"])
    assert args.func is report_command.main
    assert report_command.main(args) == 0
    assert "index.html" in capsys.readouterr().out
    [report] = results_dir.glob("*/report.html")
    text = report.read_text()
    assert "1 more saved example(s) left out" in text
    data = json.loads(next(s["text"] for s in parse_html(text).scripts if s["attrs"].get("id") == "icl-attention-data"))
    assert len(data["examples"]) == 1 and data["n_saved"] == 2 and data["kinds"] == ["pattern"]
    assert set(data["examples"][0]["maps"]["icl"]) == {"pattern", "demo_mass", "start_mass"}


def test_report_of_a_cell_without_finetuning_or_maps(tmp_path, tiny_gpt):
    from icl_lens.cell.experiment import ExperimentConfig, run_experiment
    from icl_lens.reporting.report import build_report
    from icl_lens.cell.results import write_results

    cfg = ExperimentConfig(task=str(write_tiny_task(tmp_path / "task")), model="tiny", k=2, limit=3,
                           settings=("zsl", "icl"))
    output = run_experiment(tiny_gpt, get_task(cfg.task), cfg, progress=False)
    write_results(tmp_path / "results" / cfg.cell_name() / "results.json", output.results)
    (tmp_path / "results" / "broken").mkdir()
    (tmp_path / "results" / "broken" / "results.json").write_text("{")  # skipped with a warning
    [report] = build_report(tmp_path / "results")
    text = report.read_text()
    assert "No attention maps were saved" in text and "No finetuned setting" in text
    assert BUNDLE_MARKER not in text and "<script" not in text
    assert "SimAM ZSL" in text and "α" in text
    assert "broken" not in (tmp_path / "results" / "index.html").read_text()
