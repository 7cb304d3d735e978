"""Results files: JSON written atomically, with a checksum, so a damaged or partial file is detected.

Each finished cell is one ``results.json``: the payload plus ``"checksum"`` (sha256 of the payload's
canonical JSON). It is written to a temporary file in the same folder, flushed and fsynced, then
renamed over the target — a reader sees the old file or the whole new one, never half of one. On
load, a file that does not parse, lacks the checksum or fails it raises :class:`ResultsError`;
sweeps treat that as "not done" and recompute the cell.

Timestamps live under ``"meta"``, which the checksum and determinism checks leave out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from icl_lens.errors import ResultsError

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
VOLATILE_KEYS = ("meta", "timing_seconds", "checksum")

RESULTS_FORMAT_VERSION = 2
"""Version of what a cell's results file holds; part of every cell's identity (``"identity"``).

Bump it whenever a file written before the change would be wrong to reuse: a metric added, removed
or computed differently, a change in what runs (prompts, sampling, training, scoring), in the
payload's layout, or in the identity's own fields. A sweep recomputes every cell whose file carries
another version. History: 1 = files without an identity; 2 = identity recorded (task, data hashes,
dtype, device kind)."""

TEMP_SUFFIX = ".tmp"


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become None (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def stable_payload(results: dict[str, Any]) -> dict[str, Any]:
    """The results without volatile keys (timestamps, timings, checksum)."""
    return {k: v for k, v in results.items() if k not in VOLATILE_KEYS}


def checksum(results: dict[str, Any]) -> str:
    canonical = json.dumps(_clean(stable_payload(results)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` so that readers never see a partial file."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stray_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files :func:`atomic_write_bytes` leaves when a process is killed between
    creating and renaming one (``.<name>.<random>.tmp``); returns what was removed.

    Only for a folder no other process is writing into (one sweep per output folder at a time).
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for stray in folder.glob(f".*{TEMP_SUFFIX}"):
        if stray.is_file():
            stray.unlink(missing_ok=True)
            removed.append(stray)
            logger.info("removed %s, left by an interrupted write", stray)
    return removed


def write_results(path: str | Path, results: dict[str, Any]) -> Path:
    """Write a results dict (adds its checksum) atomically; returns the path."""
    payload = _clean(dict(results))
    payload["checksum"] = checksum(payload)
    atomic_write_text(path, json.dumps(payload, indent=1, sort_keys=False) + "\n")
    return Path(path)


def read_results(path: str | Path) -> dict[str, Any]:
    """Load and verify a results file; any damage is a :class:`ResultsError` naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ResultsError(f"cannot read results file {path}: {exc}") from None
    try:
        results = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsError(f"results file {path} is damaged or partial (invalid JSON at line {exc.lineno})") from None
    if not isinstance(results, dict) or "checksum" not in results:
        raise ResultsError(f"results file {path} has no checksum: partial or not written by icl_lens")
    if results["checksum"] != checksum(results):
        raise ResultsError(f"results file {path} fails its checksum: it was modified or damaged")
    return results


def is_complete(path: str | Path) -> bool:
    """True when ``path`` holds a verified results file; a damaged one is logged and reported False."""
    path = Path(path)
    if not path.exists():
        return False
    try:
        read_results(path)
    except ResultsError as exc:
        logger.warning("%s; it will be recomputed", exc)
        return False
    return True


def dig(mapping: Any, *path: str) -> Any:
    """``mapping[path[0]][path[1]]...`` of a results dict, or None where a key is missing."""
    for key in path:
        if not isinstance(mapping, dict) or key not in mapping:
            return None
        mapping = mapping[key]
    return mapping


def precision_of(results: dict[str, Any]) -> str:
    """``dtype/device kind`` a cell ran in (its identity, else its metadata; float32/cpu when neither)."""
    where = results.get("identity") or results.get("meta") or {}
    return f"{where.get('dtype', 'float32')}/{str(where.get('device', 'cpu')).split(':')[0]}"
