"""Classification tasks: data + template + label words (Dai et al. 2023; Deutch et al. 2024).

A :class:`Task` says where its rows come from (bundled JSONL, the user's JSONL/CSV files, or a
`datasets` hub name), how a row becomes a prompt (``template``, a ``str.format`` string over the
row's fields) and which word answers each label id. The six reference tasks ship inside the package
(``icl_lens/data``, see its README for sources and licences), so nothing reads ``../shared``.

Users add a task without code: a JSON or TOML file with the :class:`Task` fields (see
:func:`load_task_file`), or the CLI flags of ``icl-lens run``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import re
import string
import sys
from dataclasses import asdict, dataclass, field, fields
from importlib.resources import files
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, as a package
    import tomli as tomllib

from icl_lens._validation import validate_fields
from icl_lens.errors import DataFormatError, TaskError

logger = logging.getLogger(__name__)

BUNDLED_DATA_DIR = Path(str(files("icl_lens").joinpath("data")))
_DIGITS = re.compile(r"-?[0-9]{1,9}")
"""An integer label id written as a string (ASCII digits only; longer numbers are no id)."""


@dataclass(frozen=True)
class Task:
    """A classification task.

    Args:
        name: short identifier, used in result file names.
        template: ``str.format`` template of one input, e.g. ``"Sentence: {text} Label:"``;
            its placeholders name the row fields it reads.
        label_words: the answer word of each label id, in id order (scored after ``" "``).
        train_split: split the demonstrations are drawn from.
        eval_split: split the queries are drawn from.
        data_files: split name -> local ``.jsonl``/``.json``/``.csv`` file (relative paths are
            resolved against ``base_dir``). Exclusive with ``hf_dataset``.
        hf_dataset: a ``datasets`` hub name (online use), with optional ``hf_config``.
        label_field: the row field holding the label (an int id, or a string among ``label_names``).
        label_names: human-readable name of each label id (defaults to ``label_words``).
        base_dir: where relative ``data_files`` live.
        description: one line for ``icl-lens tasks``.
    """

    name: str
    template: str
    label_words: tuple[str, ...]
    train_split: str = "train"
    eval_split: str = "test"
    data_files: dict[str, str] = field(default_factory=dict)
    hf_dataset: str | None = None
    hf_config: str | None = None
    label_field: str = "label"
    label_names: tuple[str, ...] = ()
    base_dir: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.data_files, str):
            raise TaskError(
                f"task {self.name!r}: data_files must map each split to its file, e.g. "
                f'{{"train": "train.jsonl", "test": "test.jsonl"}}; got the string {self.data_files!r}'
            )
        validate_fields(self, error=TaskError)
        object.__setattr__(self, "label_words", tuple(self.label_words))
        object.__setattr__(self, "label_names", tuple(self.label_names) or tuple(self.label_words))
        object.__setattr__(self, "data_files", dict(self.data_files))
        if not self.name or not self.name.replace("-", "_").replace(".", "_").isidentifier():
            raise TaskError(f"task name {self.name!r} must be a non-empty identifier-like string")
        if len(self.label_words) < 2:
            raise TaskError(f"task {self.name!r}: needs at least 2 label words, got {list(self.label_words)}")
        for i, word in enumerate(self.label_words):
            if not isinstance(word, str) or not word.strip():
                raise TaskError(f"task {self.name!r}: label word {i} is empty ({word!r})")
        if len(set(self.label_words)) != len(self.label_words):
            raise TaskError(f"task {self.name!r}: label words repeat: {list(self.label_words)}")
        if len(self.label_names) != len(self.label_words):
            raise TaskError(
                f"task {self.name!r}: {len(self.label_names)} label names for {len(self.label_words)} label words"
            )
        if len(set(self.label_names)) != len(self.label_names):
            raise TaskError(f"task {self.name!r}: label names repeat: {list(self.label_names)}")
        for i, label_name in enumerate(self.label_names):
            # A row label "1" could mean the name "1" or the id 1: refuse names that are another id.
            if _DIGITS.fullmatch(label_name.strip()) and int(label_name) != i and 0 <= int(label_name) < self.n_classes:
                raise TaskError(
                    f"task {self.name!r}: label name {label_name!r} is the id of label {int(label_name)} but names "
                    f"label {i}; a row labelled {label_name!r} would be ambiguous. Order the labels so that "
                    f"digit names equal their ids, or use non-digit names"
                )
        self._check_template()
        if bool(self.data_files) == bool(self.hf_dataset):
            raise TaskError(f"task {self.name!r}: give exactly one of data_files or hf_dataset")
        for split, file in self.data_files.items():
            if not split or not file:
                raise TaskError(f"task {self.name!r}: data_files has an empty split name or file: {split!r}: {file!r}")
        for split in (self.train_split, self.eval_split):
            if self.data_files and split not in self.data_files:
                raise TaskError(
                    f"task {self.name!r}: split {split!r} has no data file (have {sorted(self.data_files)})"
                )

    @property
    def template_fields(self) -> tuple[str, ...]:
        """Row fields the template reads, in order of appearance."""
        try:
            parsed = list(string.Formatter().parse(self.template))
        except ValueError as exc:
            raise TaskError(
                f"task {self.name!r}: template {self.template!r} is not a valid format string: {exc}"
            ) from None
        return tuple(dict.fromkeys(name for _, name, _, _ in parsed if name))

    def _check_template(self) -> None:
        """Every placeholder names a row field (``{text}``); positional ``{}``/``{0}``, attribute or
        index access, and specs that cannot format a string are refused here, not mid-run."""
        try:
            parsed = list(string.Formatter().parse(self.template))
        except ValueError as exc:
            raise TaskError(
                f"task {self.name!r}: template {self.template!r} is not a valid format string: {exc}"
            ) from None
        names = [name for _, name, _, _ in parsed if name is not None]
        if not names:
            raise TaskError(f"task {self.name!r}: template {self.template!r} has no {{field}} placeholder")
        for name in names:
            if not name.isidentifier():
                kind = "a positional field" if name == "" or name.isdigit() else "not a plain field name"
                raise TaskError(
                    f"task {self.name!r}: template placeholder {{{name}}} is {kind}; name the row field, e.g. {{text}}"
                )
        try:
            self.template.format(**{name: "x" for name in names})
        except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
            raise TaskError(f"task {self.name!r}: template {self.template!r} cannot be filled: {exc!r}") from None

    @property
    def n_classes(self) -> int:
        return len(self.label_words)

    def format_input(self, row: dict[str, Any]) -> str:
        """The template filled with one row's fields."""
        return self.template.format(**{name: row[name] for name in self.template_fields})

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any], base_dir: str | Path = "") -> Task:
        """Build from a config mapping; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise TaskError(f"task config has unknown keys {unknown}; known keys: {sorted(known)}")
        missing = [k for k in ("name", "template", "label_words") if k not in raw]
        if missing:
            raise TaskError(f"task config is missing required keys {missing}")
        values = dict(raw)
        values.setdefault("base_dir", str(base_dir))
        return cls(**values)

    def with_overrides(self, **changes: Any) -> Task:
        """A copy with some fields replaced (e.g. another template or label words)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update({k: v for k, v in changes.items() if v is not None})
        return Task(**values)


def _bundled(name: str, template: str, label_words: list[str], eval_split: str, description: str) -> Task:
    folder = BUNDLED_DATA_DIR / name
    label_names = tuple(json.loads((folder / "labels.json").read_text()))
    splits = {p.stem: str(p) for p in sorted(folder.glob("*.jsonl"))}
    return Task(
        name=name,
        template=template,
        label_words=tuple(label_words),
        train_split="train",
        eval_split=eval_split,
        data_files=splits,
        label_names=label_names,
        description=description,
    )


def builtin_tasks() -> dict[str, Task]:
    """The six reference tasks with their template-0 prompts and label words (Dai et al. 2023; Deutch et al. 2024)."""
    return {
        "sst2": _bundled(
            "sst2",
            "Sentence: {text} Label:",
            ["Negative", "Positive"],
            "validation",
            "SST-2 binary sentiment (Socher et al. 2013)",
        ),
        "sst5": _bundled(
            "sst5",
            "Sentence: {text} Label:",
            ["terrible", "bad", "neutral", "good", "great"],
            "validation",
            "SST-5 fine-grained sentiment",
        ),
        "mr": _bundled(
            "mr",
            "Review: {text} Sentiment:",
            ["Negative", "Positive"],
            "validation",
            "Movie Review polarity (Pang & Lee 2005)",
        ),
        "subj": _bundled(
            "subj", "Input: {text} Type:", ["objective", "subjective"], "test", "Subjectivity (Pang & Lee 2004)"
        ),
        "agnews": _bundled(
            "agnews",
            "Classify the news articles into the categories of World, Sports, Business, and Technology. "
            "Article: {text} Answer:",
            ["World", "Sports", "Business", "Technology"],
            "test",
            "AG's News topic (Zhang et al. 2015)",
        ),
        "cb": _bundled(
            "cb",
            "{premise} Question: {hypothesis}. True, False, or Neither? Answer:",
            ["True", "False", "Neither"],
            "test",
            "CommitmentBank, SuperGLUE (de Marneffe et al. 2019)",
        ),
    }


BUILTIN_TASK_NAMES: tuple[str, ...] = ("sst2", "sst5", "mr", "subj", "agnews", "cb")


def get_task(name_or_path: str) -> Task:
    """A built-in task by name, or a user task from a ``.json``/``.toml`` config file."""
    if name_or_path in BUILTIN_TASK_NAMES:
        return builtin_tasks()[name_or_path]
    path = Path(name_or_path)
    if path.suffix in (".json", ".toml") and path.exists():
        return load_task_file(path)
    raise TaskError(
        f"unknown task {name_or_path!r}: use one of {list(BUILTIN_TASK_NAMES)} or a task config file (.json/.toml)"
    )


def load_task_file(path: str | Path) -> Task:
    """A user task from a JSON or TOML file holding the :class:`Task` fields.

    Example (JSON)::

        {"name": "reviews", "template": "Review: {text} Verdict:", "label_words": ["bad", "good"],
         "data_files": {"train": "train.jsonl", "test": "test.jsonl"}, "eval_split": "test"}
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise TaskError(f"cannot read task file {path}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise TaskError(f"task file {path} is not UTF-8: {exc}") from None
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, RecursionError) as exc:
        raise TaskError(f"task file {path} is not valid {path.suffix[1:].upper()}: {exc}") from None
    if not isinstance(raw, dict):
        raise TaskError(f"task file {path} must hold a mapping of task fields")
    return Task.from_dict(raw, base_dir=path.parent.resolve())


# ---------------------------------------------------------------------------------------------
# Loading rows (through the `datasets` library)
# ---------------------------------------------------------------------------------------------


def resolve_data_file(task: Task, file: str) -> Path:
    """The path of one of a task's data files: relative paths are read from the task file's folder."""
    path = Path(file)
    if not path.is_absolute() and task.base_dir:
        path = Path(task.base_dir) / path
    return path


def _read_jsonl_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file (or a JSON list); a bad line is an error naming file and line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DataFormatError(f"cannot read data file {path}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"data file {path} is not UTF-8: {exc}") from None
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from None
        except RecursionError:
            raise DataFormatError(f"{path}: JSON nested too deeply") from None
        if not all(isinstance(r, dict) for r in rows):
            raise DataFormatError(f"{path}: a JSON list of objects is expected")
        return rows
    rows = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}: line {line_no}: invalid JSON ({exc.msg})") from None
        except RecursionError:
            raise DataFormatError(f"{path}: line {line_no}: JSON nested too deeply") from None
        if not isinstance(row, dict):
            raise DataFormatError(f"{path}: line {line_no}: expected a JSON object, got {type(row).__name__}")
        row["__line__"] = line_no
        rows.append(row)
    return rows


def _read_csv_rows(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = []
            for row in reader:
                if None in row:
                    raise DataFormatError(f"{path}: line {reader.line_num}: more cells than header columns")
                row = dict(row)
                row["__line__"] = reader.line_num
                rows.append(row)
    except csv.Error as exc:
        raise DataFormatError(f"{path}: invalid CSV: {exc}") from None
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"data file {path} is not UTF-8: {exc}") from None
    except OSError as exc:
        raise DataFormatError(f"cannot read data file {path}: {exc}") from None
    return rows


def _normalise_label(task: Task, value: Any, where: str) -> int:
    """A row's label as an id: a string is looked up among the label names first, then read as an
    integer id (ASCII digits); an int is an id. (Digit names that are another label's id are
    refused when the task is made, so the two readings never disagree.)"""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped in task.label_names:
            return task.label_names.index(stripped)
        if _DIGITS.fullmatch(stripped):
            value = int(stripped)
        else:
            raise DataFormatError(
                f"{where}: label {value!r} is neither an id nor one of the label names {list(task.label_names)}"
            )
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataFormatError(f"{where}: label {value!r} must be an integer id or a label name")
    if not 0 <= value < task.n_classes:
        raise DataFormatError(f"{where}: label id {value} is out of range 0..{task.n_classes - 1}")
    return value


def _validate_rows(task: Task, rows: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    needed = (*task.template_fields, task.label_field)
    clean = []
    for index, row in enumerate(rows):
        where = f"{source}: line {row.get('__line__', index + 1)}"
        for name in needed:
            if name not in row or row[name] is None:
                raise DataFormatError(
                    f"{where}: missing field {name!r} (have {sorted(k for k in row if k != '__line__')})"
                )
        out: dict[str, Any] = {}
        for name in task.template_fields:
            value = row[name]
            if (
                isinstance(value, bool)
                or not isinstance(value, (str, int, float))
                or (isinstance(value, float) and not math.isfinite(value))
            ):
                raise DataFormatError(f"{where}: field {name!r} must be text, got {type(value).__name__} {value!r:.60}")
            text = str(value)
            if not text.strip():
                raise DataFormatError(f"{where}: field {name!r} is empty")
            out[name] = text
        out["label"] = _normalise_label(task, row[task.label_field], where)
        clean.append(out)
    if not clean:
        raise DataFormatError(f"{source}: no rows")
    return clean


def load_split(task: Task, split: str):
    """One split as a ``datasets.Dataset`` with the template's fields and an int ``label`` column.

    Local files are parsed and checked row by row first (so a bad row is reported with its
    line number), then handed to ``datasets``; a hub name goes to ``datasets.load_dataset``.
    """
    import datasets

    if task.hf_dataset:
        try:
            dataset = datasets.load_dataset(task.hf_dataset, task.hf_config, split=split)
        except Exception as exc:  # the hub raises many types; report one clear error
            raise TaskError(f"task {task.name!r}: cannot load {task.hf_dataset!r} split {split!r}: {exc}") from None
        rows = _validate_rows(task, list(dataset), f"{task.hf_dataset}[{split}]")
        return datasets.Dataset.from_list(rows)
    if split not in task.data_files:
        raise TaskError(f"task {task.name!r} has no split {split!r} (have {sorted(task.data_files)})")
    path = resolve_data_file(task, task.data_files[split])
    if not path.exists():
        raise DataFormatError(f"task {task.name!r}: data file {path} does not exist")
    if path.suffix in (".jsonl", ".json"):
        raw_rows = _read_jsonl_rows(path)
    elif path.suffix == ".csv":
        raw_rows = _read_csv_rows(path)
    else:
        raise DataFormatError(f"{path}: unsupported data file type {path.suffix!r} (use .jsonl, .json or .csv)")
    return datasets.Dataset.from_list(_validate_rows(task, raw_rows, str(path)))


def shuffled_indices(n: int, seed: int) -> list[int]:
    """A seeded permutation of range(n), identical on every platform (Python's Mersenne Twister)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def sample_demonstrations(task: Task, k: int, seed: int, train=None, sampling: str = "random") -> list[dict[str, Any]]:
    """k demonstrations from the train split shuffled with ``seed``.

    ``random`` (reference): the first k rows of the shuffle. ``balanced``: the same
    shuffle, taken round-robin over the labels (in a seeded label order), so every label appears
    ⌊k/C⌋ or ⌈k/C⌉ times and no label ends the prompt twice in a row — small models copy the
    majority and the most recent demonstration label.
    """
    train = load_split(task, task.train_split) if train is None else train
    if k > len(train):
        raise TaskError(f"task {task.name!r}: k={k} demonstrations requested but the train split has {len(train)} rows")
    order = shuffled_indices(len(train), seed)
    if sampling == "random":
        chosen = order[:k]
    elif sampling == "balanced":
        labels = train["label"]
        queues: dict[int, list[int]] = {}
        for i in order:
            queues.setdefault(labels[i], []).append(i)
        label_order = sorted(queues)
        random.Random(seed).shuffle(label_order)
        chosen = []
        while len(chosen) < k:
            for label in label_order:
                if queues[label] and len(chosen) < k:
                    chosen.append(queues[label].pop(0))
    else:
        raise TaskError(f"demonstration sampling must be 'random' or 'balanced', got {sampling!r}")
    return [dict(train[i], row_index=i) for i in chosen]


def sample_queries(task: Task, limit: int | None, eval_seed: int = 1, dataset=None) -> list[dict[str, Any]]:
    """At most ``limit`` rows of the eval split, shuffled with the fixed ``eval_seed`` (Dai et al. 2023;
    Deutch et al. 2024)."""
    dataset = load_split(task, task.eval_split) if dataset is None else dataset
    order = shuffled_indices(len(dataset), eval_seed)
    if limit is not None:
        order = order[:limit]
    return [dict(dataset[i], row_index=i) for i in order]
