"""Shared by the viz and browser tests: a finished cell with attention maps, and an HTML script parser."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

from icl_lens.tasks import get_task

TINY_TEXTS = [
    ("good film", 1), ("bad plot", 0), ("loved it", 1), ("so dull", 0), ("great cast", 1), ("awful", 0),
    ("fun ride", 1), ("a mess", 0), ("nice", 1), ("boring", 0),
]


def write_tiny_task(root: Path) -> Path:
    """A task file with very short texts, so that maps (and the pages showing them) stay small."""
    root.mkdir(parents=True, exist_ok=True)
    rows = "\n".join(json.dumps({"text": t, "label": y}) for t, y in TINY_TEXTS) + "\n"
    (root / "train.jsonl").write_text(rows)
    (root / "test.jsonl").write_text(rows)
    task = {"name": "tiny", "template": "{text} =", "label_words": ["no", "yes"],
            "data_files": {"train": "train.jsonl", "test": "test.jsonl"}, "eval_split": "test"}
    path = root / "tiny_task.json"
    path.write_text(json.dumps(task))
    return path


def make_results_dir(root: Path, model, n_maps: int = 2) -> Path:
    """One finished cell (results.json + attention maps), built the way a sweep would."""
    from icl_lens.cell.experiment import ExperimentConfig, run_experiment
    from icl_lens.cell.results import write_results
    from icl_lens.viz import save_experiment_attention_maps

    task_file = write_tiny_task(root / "task")
    cfg = ExperimentConfig(task=str(task_file), model="tiny", k=3, limit=6, lr=1e-2, batch_size=4)
    output = run_experiment(model, get_task(cfg.task), cfg, progress=False, keep_models=True)
    results_dir = root / "results"
    cell = results_dir / cfg.cell_name()
    write_results(cell / "results.json", output.results)
    save_experiment_attention_maps(cell, output, model, n_examples=n_maps)
    return results_dir


class ScriptParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.scripts: list[dict] = []
        self.tags: list[tuple[str, dict]] = []
        self._current = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._current = {"attrs": dict(attrs), "text": ""}
            self.scripts.append(self._current)

    def handle_data(self, data):
        if self._current is not None:
            self._current["text"] += data

    def handle_endtag(self, tag):
        if tag == "script":
            self._current = None


def parse_html(text: str) -> ScriptParser:
    parser = ScriptParser()
    parser.feed(text)
    return parser
