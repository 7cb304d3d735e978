"""The gradient-norm heatmap says what it shows (ours differs from the reference's logged gradients)."""

from icl_lens.reporting.figures import grad_norms_caption, plot_grad_norms


def _results(params: str = "kv") -> dict:
    return {"task": {"name": "sst2"}, "config": {"model": "tiny", "finetune": {"params": params}},
            "training": {"ft": {"grad_norms": [[1.0, 0.1], [2.0, 0.2], [3.0, 0.3]]},
                         "lcgd": {"grad_norms": [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]}}}


def test_caption_names_our_quantity_and_the_reference_difference():
    caption = grad_norms_caption(_results())
    assert "mean-per-token loss" in caption and "W_K, W_V, b_K, b_V" in caption and "before clipping" in caption
    assert "token-summed fp16 gradients over all parameters of a layer" in caption
    assert "W_O, b_O" in grad_norms_caption(_results("kv+o"))


def test_heatmap_is_written_with_the_caption(tmp_path, monkeypatch):
    import matplotlib.figure

    titles = []
    original = matplotlib.figure.Figure.suptitle
    monkeypatch.setattr(matplotlib.figure.Figure, "suptitle",
                        lambda self, text, **kw: titles.append(text) or original(self, text, **kw))
    path = plot_grad_norms(_results(), tmp_path / "g.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert len(titles) == 1 and "sst2, tiny" in titles[0] and "fp16" in titles[0]
