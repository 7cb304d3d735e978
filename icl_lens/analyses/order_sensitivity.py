"""Order sensitivity of ICL and of GD (Shen et al. 2023).

The same k demonstrations are put in P random orders. For each order:

* **ICL**: the demonstrations, in that order, form the prompt prefix;
* **GD**: a copy of the model is finetuned on the demonstrations in that order (SGD and Adam,
  at each batch size), then queried zero-shot.

Every setting gives, per permutation p and query i, the full next-token distribution
p_p,i ∈ Δ^{d_vocab} at the prediction position (the final residual read through the model's own
final norm and unembedding, :func:`icl_lens.lens.logit_lens`, inside
:func:`icl_lens.evaluation.evaluate`) and an accuracy acc_p. Reported per setting:

    OS  = (1/N) Σ_i Σ_v std_p( p_p,i(v) )      (:func:`icl_lens.metrics.order_sensitivity`)
    σ_acc = std_p( acc_p )                      (:func:`icl_lens.metrics.accuracy_std`)

Memory: the distributions are kept as one float32 tensor [P, N, d_vocab] per setting, so N is
limited (``limit``, default 50) and a budget (``max_memory_gb``) is checked before running.

GD with one batch holding every demonstration (batch size ≥ k) is order-invariant by
construction (the loss is a mean over the batch), so its OS is 0 up to float noise: a sanity
check, not a finding.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, cast

import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from icl_lens import metrics
from icl_lens.errors import ConfigError, PromptError
from icl_lens.evaluation import RecordSpec, SettingRun, evaluate
from icl_lens.models.backends import Model
from icl_lens.prompts import (
    EncodedPrompts,
    PromptFormat,
    encode_prompts,
    sample_prompts,
)
from icl_lens.tasks import (
    Task,
    get_task,
)
from icl_lens.training.finetune import FinetuneConfig, finetune

logger = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class OrderSensitivityConfig:
    """What the order-sensitivity analysis runs.

    Args:
        k: demonstrations (sampled once with ``seed``; only their order varies).
        n_permutations: P, random orders of the same demonstrations (reference 10, *unverified*).
        permutation_seed: seed of the orders. Orders are distinct whenever k! ≥ P.
        seed: demonstration sampling seed.
        limit: queries N (the [P, N, d_vocab] distributions are kept in memory).
        eval_seed: seed of the evaluation-set shuffle.
        lr: GD learning rate for SGD (default 1e-3; recorded).
        adam_lr: Adam learning rate (None: the same as ``lr``).
        optimizers: GD optimizers to run, among ``sgd``, ``adam``.
        batch_sizes: GD batch sizes (demonstrations per step).
        include_icl: run the ICL setting.
        finetune: the rest of the GD configuration (trainable group, epochs, loss, clipping);
            its optimizer, lr and batch size are replaced by the values above.
        prompt: prompt layout.
        eval_batch_size: queries per forward pass.
        unbiased: sample std (÷ (P−1)) instead of population std (÷ P, default).
        max_memory_gb: refuse to run when the kept distributions would exceed this.
    """

    k: int = 16
    n_permutations: int = 10
    permutation_seed: int = 0
    seed: int = 0
    limit: int = 50
    eval_seed: int = 1
    lr: float = 1e-3
    adam_lr: float | None = None
    optimizers: tuple[str, ...] = OPTIMIZERS
    batch_sizes: tuple[int, ...] = (1, 2, 4)
    include_icl: bool = True
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    prompt: PromptFormat = field(default_factory=PromptFormat)
    eval_batch_size: int = 16
    unbiased: bool = False
    max_memory_gb: float = 4.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "optimizers", tuple(self.optimizers))
        object.__setattr__(self, "batch_sizes", tuple(int(b) for b in self.batch_sizes))
        if self.k < 1:
            raise ConfigError(f"k must be >= 1, got {self.k}")
        if self.n_permutations < 1:
            raise ConfigError(f"n_permutations must be >= 1, got {self.n_permutations}")
        if self.unbiased and self.n_permutations < 2:
            raise ConfigError("the unbiased std needs n_permutations >= 2")
        if self.limit < 1:
            raise ConfigError(f"limit must be >= 1, got {self.limit}")
        for name in ("lr", "adam_lr"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a positive finite number, got {value}")
        unknown = [o for o in self.optimizers if o not in OPTIMIZERS]
        if unknown:
            raise ConfigError(f"unknown optimizers {unknown}; choose from {list(OPTIMIZERS)}")
        if any(b < 1 for b in self.batch_sizes):
            raise ConfigError(f"batch sizes must be >= 1, got {list(self.batch_sizes)}")
        if self.optimizers and not self.batch_sizes:
            raise ConfigError("GD optimizers given but no batch sizes")
        if not self.include_icl and not self.optimizers:
            raise ConfigError("nothing to run: include_icl is False and no GD optimizer is given")
        if self.eval_batch_size < 1:
            raise ConfigError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if not self.max_memory_gb > 0:
            raise ConfigError(f"max_memory_gb must be > 0, got {self.max_memory_gb}")

    def gd_settings(self) -> list[tuple[str, str, int, float]]:
        """(name, optimizer, batch size, lr) of every GD setting, e.g. ``("sgd_bs2", "sgd", 2, 1e-3)``."""
        out = []
        for optimizer in self.optimizers:
            lr = self.adam_lr if optimizer == "adam" and self.adam_lr is not None else self.lr
            for batch_size in self.batch_sizes:
                out.append((f"{optimizer}_bs{batch_size}", optimizer, batch_size, lr))
        return out

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["optimizers"] = list(self.optimizers)
        out["batch_sizes"] = list(self.batch_sizes)
        return out


def demo_permutations(k: int, n_permutations: int, seed: int) -> list[tuple[int, ...]]:
    """``n_permutations`` seeded random orders of ``range(k)``, distinct whenever k! ≥ P.

    The first is a random order too (not the identity), so every order is drawn the same way.
    """
    if k < 1 or n_permutations < 1:
        raise ConfigError(f"need k >= 1 and n_permutations >= 1, got {k}, {n_permutations}")
    rng = random.Random(seed)
    distinct_possible = math.factorial(k) >= n_permutations if k <= 12 else True
    if not distinct_possible:
        logger.warning("only %d distinct orders of %d demonstrations exist; orders will repeat", math.factorial(k), k)
    if k <= 8 and distinct_possible:
        # few enough orders to draw without replacement from all of them
        return [tuple(p) for p in rng.sample(list(itertools.permutations(range(k))), n_permutations)]
    seen: set[tuple[int, ...]] = set()
    out: list[tuple[int, ...]] = []
    while len(out) < n_permutations:
        order = list(range(k))
        rng.shuffle(order)
        perm = tuple(order)
        if perm in seen and distinct_possible:
            continue
        seen.add(perm)
        out.append(perm)
    return out


@dataclass
class SettingSensitivity:
    """One setting's spread across demonstration orders.

    Args:
        setting: ``icl`` or ``{optimizer}_bs{batch_size}``.
        output_std: OS = mean_i Σ_v std_p p_p,i(v).
        accuracy_std: std_p acc_p.
        accuracies: acc_p per permutation (fractions).
        per_example_output_std: Σ_v std_p p_p,i(v) per query i.
        final_losses: GD only: the last step's training loss per permutation.
    """

    setting: str
    method: str
    optimizer: str | None
    batch_size: int | None
    lr: float | None
    output_std: float
    accuracy_std: float
    accuracies: list[float]
    per_example_output_std: list[float]
    final_losses: list[float] = field(default_factory=list)

    @property
    def mean_accuracy(self) -> float:
        return float(sum(self.accuracies) / len(self.accuracies))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean_accuracy"] = self.mean_accuracy
        return out


@dataclass
class OrderSensitivityResult:
    """Order sensitivity of every setting on one task."""

    task: str
    model: str
    k: int
    k_requested: int
    n_queries: int
    permutations: list[list[int]]
    demonstrations: list[dict[str, int]]
    settings: list[SettingSensitivity]
    config: dict[str, Any]

    def setting(self, name: str) -> SettingSensitivity:
        for s in self.settings:
            if s.setting == name:
                return s
        raise KeyError(f"no setting {name!r}; have {[s.setting for s in self.settings]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "analysis": "order_sensitivity",
            "task": self.task,
            "model": self.model,
            "k": self.k,
            "k_requested": self.k_requested,
            "n_queries": self.n_queries,
            "n_permutations": len(self.permutations),
            "permutations": self.permutations,
            "demonstrations": self.demonstrations,
            "settings": [s.to_dict() for s in self.settings],
            "config": self.config,
        }


def resolve_task(task: Task | str) -> Task:
    return get_task(task) if isinstance(task, str) else task


def dense_distribution(run: SettingRun, d_vocab: int) -> Float[torch.Tensor, "n_examples d_vocab"]:
    """The full next-token distribution of a run recorded with ``top_k = d_vocab``."""
    ids: Int[torch.Tensor, "n k"] = run.next_token_ids
    if ids.shape[1] != d_vocab:
        raise ConfigError(f"run kept {ids.shape[1]} next tokens, not the full vocabulary of {d_vocab}")
    return torch.zeros(ids.shape[0], d_vocab).scatter_(1, ids, run.next_token_probs)


def _sensitivity(
    name: str,
    distributions: Float[torch.Tensor, "n_perm n d_vocab"],
    accuracies: Sequence[float],
    unbiased: bool,
    **extra: Any,
) -> SettingSensitivity:
    # per example (float64 copies of [P, 1, d_vocab] only); the mean is metrics.order_sensitivity
    per_example = [
        metrics.order_sensitivity(distributions[:, i : i + 1], unbiased=unbiased) for i in range(distributions.shape[1])
    ]
    return SettingSensitivity(
        setting=name,
        output_std=float(sum(per_example) / len(per_example)),
        accuracy_std=metrics.accuracy_std(list(accuracies), unbiased=unbiased),
        accuracies=[float(a) for a in accuracies],
        per_example_output_std=per_example,
        **extra,
    )


def _sample_prompts(model: Model, task: Task, cfg: OrderSensitivityConfig):
    base, demos, queries = sample_prompts(
        model.tokenizer, task, cfg.prompt, model.cfg.n_ctx, cfg.k, cfg.seed, cfg.limit, cfg.eval_seed
    )
    if base.k < len(demos):
        logger.warning("task %s: permuting the %d of %d demonstrations that fit", task.name, base.k, len(demos))
    return demos[: base.k], queries


def run_order_sensitivity(
    model: Model,
    task: Task | str,
    cfg: OrderSensitivityConfig = OrderSensitivityConfig(),
    progress: bool = True,
) -> OrderSensitivityResult:
    """ICL and GD (SGD / Adam × batch sizes) over P orders of the same demonstrations: OS and σ_acc."""
    task = resolve_task(task)
    demos, queries = _sample_prompts(model, task, cfg)
    k = len(demos)
    n, d_vocab = len(queries), model.cfg.d_vocab_out
    gd = cfg.gd_settings()
    names = (["icl"] if cfg.include_icl else []) + [g[0] for g in gd]
    gigabytes = len(names) * cfg.n_permutations * n * d_vocab * 4 / 2**30
    if gigabytes > cfg.max_memory_gb:
        raise ConfigError(
            f"keeping {len(names)} settings × P={cfg.n_permutations} × N={n} × d_vocab={d_vocab} float32 "
            f"distributions needs {gigabytes:.1f} GB > max_memory_gb={cfg.max_memory_gb}; lower limit or P"
        )
    perms = demo_permutations(k, cfg.n_permutations, cfg.permutation_seed)
    labels = torch.tensor([q["label"] for q in queries])
    record = RecordSpec(top_k=d_vocab)
    dists = {name: torch.zeros(cfg.n_permutations, n, d_vocab) for name in names}
    accs: dict[str, list[float]] = {name: [] for name in names}
    losses: dict[str, list[float]] = {name: [] for name in names}

    def score(setting_model, prompts: EncodedPrompts, prefix, name: str, p: int) -> None:
        run = evaluate(
            setting_model,
            prefix,
            prompts.queries,
            prompts.labels,
            setting=name,
            n_start=prompts.n_start,
            record=record,
            batch_size=cfg.eval_batch_size,
            progress=False,
        )
        dists[name][p] = dense_distribution(run, d_vocab)
        accs[name].append(metrics.accuracy(run.predictions, labels))

    total = cfg.n_permutations * len(names)
    bar = tqdm(total=total, desc=f"order sensitivity {task.name}", disable=not progress, leave=False)
    for p, perm in enumerate(perms):
        prompts = encode_prompts(model.tokenizer, task, [demos[i] for i in perm], queries, cfg.prompt, model.cfg.n_ctx)
        if prompts.k != k:  # same demonstrations, same total length: cannot happen
            raise PromptError(f"permutation {p} kept {prompts.k} of {k} demonstrations")
        if cfg.include_icl:
            score(model, prompts, prompts.icl_prefix, "icl", p)
            bar.update(1)
        for name, optimizer, batch_size, lr in gd:
            # one of OPTIMIZERS: __post_init__ checked it (and FinetuneConfig checks it again)
            ft_cfg = replace(
                cfg.finetune, optimizer=cast(Literal["sgd", "adam"], optimizer), batch_size=batch_size, lr=lr
            )
            tuned, trace = finetune(model, prompts.demo_sequences, prompts.demo_answer_lengths, ft_cfg, progress=False)
            losses[name].append(trace.losses[-1])
            score(tuned, prompts, prompts.zsl_prefix, name, p)
            del tuned
            bar.update(1)
    bar.close()

    settings = []
    if cfg.include_icl:
        settings.append(
            _sensitivity(
                "icl", dists["icl"], accs["icl"], cfg.unbiased, method="icl", optimizer=None, batch_size=None, lr=None
            )
        )
    for name, optimizer, batch_size, lr in gd:
        settings.append(
            _sensitivity(
                name,
                dists[name],
                accs[name],
                cfg.unbiased,
                method="gd",
                optimizer=optimizer,
                batch_size=batch_size,
                lr=lr,
                final_losses=losses[name],
            )
        )
        if batch_size >= k:
            logger.info("%s: one batch holds all %d demonstrations, so GD is order-invariant (OS ≈ 0)", name, k)
    for s in settings:
        logger.info(
            "%s %s: OS=%.4g σ_acc=%.4g mean acc=%.3f",
            task.name,
            s.setting,
            s.output_std,
            s.accuracy_std,
            s.mean_accuracy,
        )
    return OrderSensitivityResult(
        task=task.name,
        model=model.cfg.model_name,
        k=k,
        k_requested=cfg.k,
        n_queries=n,
        permutations=[list(p) for p in perms],
        demonstrations=[{"row_index": d["row_index"], "label": d["label"]} for d in demos],
        settings=settings,
        config=cfg.to_dict(),
    )
