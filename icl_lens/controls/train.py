"""Training a control on fresh regression tasks, cached and checksummed.

von Oswald et al. 2023 train with Adam (β = 0.9, 0.98), learning rate 1e-3, a batch of fresh tasks
every step and the loss ½·mean (ŷ − y_q)². A trained control is cached under the offline models'
cache root (``$ICL_LENS_CACHE`` or ``~/.cache/icl_lens``)::

    controls/<name>-<config digest>/weights.safetensors   the trained weights
    controls/<name>-<config digest>/control.json          config, training time, losses, SHA-256 of the weights

The digest is a hash of the whole :class:`TrainConfig`, so another budget or seed is another entry;
the weights' SHA-256 is checked on every load, and a damaged entry is retrained.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from icl_lens._validation import AT_LEAST_ONE, POSITIVE, SEED, validate_fields
from icl_lens.controls.models import ControlConfig, ControlTransformer
from icl_lens.controls.tasks import RegressionConfig, sample_tasks
from icl_lens.errors import ConfigError, ModelLoadError, TrainingDivergedError
from icl_lens.models.offline import default_cache_dir, sha256_file

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.safetensors"
META_FILE = "control.json"

#: The named controls: architecture of each (von Oswald et al. 2023 and its known mismatches).
CONTROLS: dict[str, ControlConfig] = {
    "lsa-1": ControlConfig(attention="lsa", n_layers=1, n_heads=1),
    "softmax-1h": ControlConfig(attention="softmax", n_layers=1, n_heads=1),
    "softmax-2h": ControlConfig(attention="softmax", n_layers=1, n_heads=2),
    "lsa-3": ControlConfig(attention="lsa", n_layers=3, n_heads=1),
}


@dataclass(frozen=True)
class TrainConfig:
    """How a control is trained (reference: 5000 steps, batch 2048, Adam 1e-3, β 0.9/0.98).

    Args:
        name: which control (a key of ``CONTROLS``).
        steps: Adam steps.
        batch_size: fresh tasks per step.
        lr: Adam learning rate.
        beta1: Adam β1.
        beta2: Adam β2.
        seed: seeds the initial weights and the task stream.
        task: the task family trained on.
    """

    name: str = "lsa-1"
    steps: int = 1500
    batch_size: int = 2048
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.98
    seed: int = 0
    task: RegressionConfig = field(default_factory=RegressionConfig)

    def __post_init__(self) -> None:
        validate_fields(
            self,
            {"steps": AT_LEAST_ONE, "batch_size": AT_LEAST_ONE, "lr": POSITIVE, "seed": SEED},
        )
        if self.name not in CONTROLS:
            raise ConfigError(f"unknown control {self.name!r}; choose from {sorted(CONTROLS)}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError(f"Adam betas must lie in [0, 1), got {self.beta1}, {self.beta2}")

    @property
    def model(self) -> ControlConfig:
        return CONTROLS[self.name]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["model"] = self.model.to_dict()
        return out

    @property
    def digest(self) -> str:
        """Hash of everything that determines the trained weights (the cache key)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class TrainedControl:
    """A trained control and how it was made."""

    model: ControlTransformer
    config: TrainConfig
    seconds: float
    final_loss: float
    losses: list[float]
    weights_sha256: str | None = None
    from_cache: bool = False

    def identity(self) -> dict[str, Any]:
        return {"name": self.config.name, "config_digest": self.config.digest, "weights_sha256": self.weights_sha256}


def untrained(cfg: TrainConfig) -> ControlTransformer:
    """The control's architecture at its seeded initialisation (the untrained model); the global
    random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return ControlTransformer(cfg.model)


def train_control(cfg: TrainConfig, progress: bool = False) -> TrainedControl:
    """Train the control from its seeded initialisation on ``steps`` batches of fresh tasks."""
    model = untrained(cfg)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    losses: list[float] = []
    start = time.perf_counter()
    for step in tqdm(range(cfg.steps), desc=f"train {cfg.name}", disable=not progress):
        batch = sample_tasks(cfg.task, cfg.batch_size, generator)
        loss = 0.5 * ((model.predict(batch.tokens()) - batch.y_query) ** 2).mean()
        if not torch.isfinite(loss):
            raise TrainingDivergedError(f"training {cfg.name}: loss {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    tail = losses[-max(1, len(losses) // 20) :]
    logger.info("trained %s in %.1f s: final loss %.4f", cfg.name, seconds, sum(tail) / len(tail))
    return TrainedControl(model, cfg, seconds, sum(tail) / len(tail), losses[:: max(1, cfg.steps // 100)])


def cache_dir_for(cfg: TrainConfig, cache_dir: str | Path | None = None) -> Path:
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "controls" / f"{cfg.name}-{cfg.digest}"


def load_or_train(
    cfg: TrainConfig, cache_dir: str | Path | None = None, progress: bool = False, retrain: bool = False
) -> TrainedControl:
    """The trained control from the cache (SHA-256 checked), else trained now and cached."""
    from safetensors.torch import load_file, save_file

    entry = cache_dir_for(cfg, cache_dir)
    if not retrain and (entry / META_FILE).is_file():
        try:
            return _load_entry(entry, cfg, load_file)
        except ModelLoadError as exc:
            logger.warning("%s; training again", exc)
    trained = train_control(cfg, progress=progress)
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        state = {name: p.detach().contiguous() for name, p in trained.model.state_dict().items()}
        save_file(state, str(staging / WEIGHTS_FILE))
        trained.weights_sha256 = sha256_file(staging / WEIGHTS_FILE)
        meta = {
            "config": cfg.to_dict(),
            "config_digest": cfg.digest,
            "weights_sha256": trained.weights_sha256,
            "seconds": trained.seconds,
            "final_loss": trained.final_loss,
            "losses": trained.losses,
        }
        (staging / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        if entry.exists():
            shutil.rmtree(entry)
        staging.rename(entry)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("cached %s in %s", cfg.name, entry)
    return trained


def _load_entry(entry: Path, cfg: TrainConfig, load_file: Any) -> TrainedControl:
    try:
        meta = json.loads((entry / META_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"control cache entry {entry} is unreadable: {exc}") from exc
    weights = entry / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelLoadError(f"control cache entry {entry} has no {WEIGHTS_FILE}")
    actual = sha256_file(weights)
    if actual != meta.get("weights_sha256") or meta.get("config_digest") != cfg.digest:
        raise ModelLoadError(
            f"control cache entry {entry} is damaged: weights SHA-256 {actual}, recorded {meta.get('weights_sha256')}"
        )
    model = ControlTransformer(cfg.model)
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return TrainedControl(
        model, cfg, float(meta["seconds"]), float(meta["final_loss"]), list(meta["losses"]), actual, from_cache=True
    )
