"""Run a small sweep on a tiny random model in its own process (for the interruption test).

    python sweep_worker.py OUT_DIR [SLEEP_AFTER_EACH_CELL]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from helpers import tiny_model  # noqa: E402

from icl_lens.experiment import ExperimentConfig  # noqa: E402
from icl_lens.models.untrained import reinitialize_untrained  # noqa: E402
from icl_lens.sweep import RuntimeOptions, run_cells  # noqa: E402


def cells() -> list[ExperimentConfig]:
    return [ExperimentConfig(task=task, model="tiny", k=2, limit=4, seed=seed, lr=1e-2, batch_size=4)
            for task in ("sst2", "subj") for seed in (0, 1)]


def loader(name, **kwargs):
    model = tiny_model(gqa=True, n_layers=2, name=name)
    return reinitialize_untrained(model, kwargs.get("seed", 0)) if kwargs.get("untrained") else model


if __name__ == "__main__":
    pause = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    run_cells(cells(), sys.argv[1], RuntimeOptions(progress=False), model_loader=loader,
              on_result=lambda cfg, res: time.sleep(pause))
