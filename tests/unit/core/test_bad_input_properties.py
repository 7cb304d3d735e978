"""Property-based bad input (issue 14, "Bad input, systematically").

Hypothesis generates malformed task files (JSON and TOML), data rows (JSONL, JSON, CSV: missing
fields, wrong types, bad labels, empty text, huge rows, latin-1 bytes), templates, label words,
token inputs of ``evaluate`` and CLI values. Every one must end in an :class:`IclLensError` (CLI:
exit code 2 and one ``icl-lens: error:`` line on stderr) — never another exception, never a result.
No model is loaded: the CLI's loader fails the test if it is ever reached, and prompts are encoded
with the tests' byte tokenizer. Each test first checks that its unmutated input is accepted, so the
properties cannot pass by rejecting everything. The counts of generated inputs and clear errors are
printed at the end of the module.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import icl_lens.models
from helpers import byte_tokenizer, tiny_model
from icl_lens.cli import main
from icl_lens.cli.common import LOG_LEVELS
from icl_lens.errors import IclLensError
from icl_lens.evaluation import evaluate
from icl_lens.cell.experiment import ExperimentConfig, apply_task_overrides
from icl_lens.prompts import PromptFormat, encode_prompts
from icl_lens.tasks import Task, get_task, load_split, sample_queries

settings.register_profile(
    "icl_lens_bad_input", max_examples=int(os.environ.get("ICL_LENS_BAD_INPUT_EXAMPLES", "60")), deadline=None, database=None, derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)
BAD_INPUT = settings.get_profile("icl_lens_bad_input")

COUNTS: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
"""test name -> [generated inputs run, inputs that ended in a clear IclLensError]."""


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request):
    yield
    ran = sum(c[0] for c in COUNTS.values())
    clear = sum(c[1] for c in COUNTS.values())
    lines = [f"bad-input properties: {clear} of {ran} generated inputs ended in a clear IclLensError"]
    lines += [f"  {name}: {c[1]}/{c[0]}" for name, c in sorted(COUNTS.items())]
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        sys.stderr.write("\n" + "\n".join(lines) + "\n")


def expect_clear_error(name: str, action) -> IclLensError:
    """Run ``action``; it must raise an IclLensError (any other exception propagates and fails)."""
    COUNTS[name][0] += 1
    try:
        result = action()
    except IclLensError as exc:
        COUNTS[name][1] += 1
        assert str(exc).strip(), "an error without a message"
        return exc
    pytest.fail(f"{name}: bad input was accepted and gave {result!r:.200}")


TOKENIZER = byte_tokenizer()
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
NON_STR = st.one_of(st.integers(), st.floats(), st.booleans(), st.lists(st.integers(), max_size=2),
                    st.dictionaries(st.sampled_from(["a", "b"]), st.integers(), max_size=2))
VALID_ROWS = [{"text": "good film", "label": 1}, {"text": "dull", "label": 0}, {"text": "fine", "label": "yes"},
              {"text": "awful", "label": "no"}]


def run_pipeline(task: Task, n_ctx: int = 1024):
    """Everything a run does before it needs a model: load both splits, sample every query and
    encode the prompts with a byte tokenizer."""
    load_split(task, task.train_split)
    queries = sample_queries(task, None)
    return encode_prompts(TOKENIZER, task, [], queries, PromptFormat(), n_ctx)


# --------------------------------------------------------------------------------------------
# Task files (JSON and TOML)
# --------------------------------------------------------------------------------------------


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def write_task(folder: Path, raw: dict, fmt: str) -> Path:
    path = folder / f"task.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(raw))
    else:
        path.write_text("".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in raw.items() if v is not None))
    return path


def base_task() -> dict:
    return {"name": "mine", "template": "Text: {text} Verdict:", "label_words": ["no", "yes"],
            "data_files": {"train": "d.jsonl", "test": "d.jsonl"}}


def write_rows(folder: Path, rows=VALID_ROWS, name="d.jsonl", ensure_ascii=True) -> None:
    (folder / name).write_text("".join(json.dumps(r, ensure_ascii=ensure_ascii) + "\n" for r in rows), encoding="utf-8")


BAD_TEMPLATES = st.one_of(
    st.sampled_from(["{}", "{0}", "{1} {text}", "{text.upper}", "{text[0]}", "{text", "text}", "{text:d}",
                     "{text!z}", "{text:{w}}", "{missing}", "{ text }", "{text}{", "}{text}", "no fields", ""]),
    st.tuples(TEXT.map(lambda s: s.replace("{", "").replace("}", "")),
              st.sampled_from(["{}", "{0}", "{text.x}", "{text", "{nope}", "{text:%}"])).map("".join),
)
BAD_LABEL_WORDS = st.one_of(
    st.lists(st.text(min_size=1, max_size=5).filter(str.strip), max_size=1),  # fewer than two
    st.text(min_size=1, max_size=5).filter(str.strip).map(lambda w: [w, w]),  # duplicates
    st.tuples(st.sampled_from(["", " ", "\n", "\t "]), st.just("yes")).map(list),  # empty word
    st.lists(NON_STR, min_size=2, max_size=3),  # not strings
    NON_STR, st.text(max_size=5),  # not a list
)

TASK_MUTATIONS = st.one_of(
    st.sampled_from(["name", "template", "label_words"]).map(lambda k: ("drop", k, None)),
    st.tuples(st.just("set"), st.sampled_from(["name", "template", "train_split", "eval_split", "label_field",
                                                "base_dir", "description"]), NON_STR),
    st.tuples(st.just("set"), st.just("template"), BAD_TEMPLATES),
    st.tuples(st.just("set"), st.just("label_words"), BAD_LABEL_WORDS),
    st.tuples(st.just("set"), st.just("data_files"), st.one_of(
        st.just("d.jsonl"), st.just({}), st.just({"train": "d.jsonl"}), st.just({"train": "d.jsonl", "test": "nope.jsonl"}),
        st.just({"train": "d.jsonl", "test": "d.txt"}), st.just({"train": "d.jsonl", "test": ""}),
        st.lists(st.just("d.jsonl"), max_size=2), st.dictionaries(st.sampled_from(["train", "test"]), NON_STR, min_size=1))),
    st.tuples(st.just("set"), st.just("label_names"), st.one_of(
        st.just(["1", "0"]), st.just(["x"]), st.just(["a", "a"]), st.lists(NON_STR, min_size=2, max_size=2),
        NON_STR.filter(lambda v: v != []))),  # [] is valid: the names default to the label words
    st.tuples(st.just("set"), st.just("hf_dataset"), st.one_of(st.just("glue"), NON_STR)),
    st.tuples(st.just("set"), st.sampled_from(["labelwords", "Template", "split", "data"]), st.integers()),
    st.tuples(st.just("name"), st.sampled_from(["", "has space", "a/b", "1+1", "ü-ok?"]), st.none()),
)


def test_base_task_file_is_accepted(tmp_path):
    write_rows(tmp_path)
    for fmt in ("json", "toml"):
        task = get_task(str(write_task(tmp_path, base_task(), fmt)))
        assert run_pipeline(task).queries


@BAD_INPUT
@given(mutation=TASK_MUTATIONS, fmt=st.sampled_from(["json", "toml"]))
def test_malformed_task_files_are_clear_errors(mutation, fmt):
    kind, key, value = mutation
    raw = base_task()
    if kind == "drop":
        del raw[key]
    elif kind == "name":
        raw["name"] = key
    else:
        raw[key] = value
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        write_rows(folder)
        path = write_task(folder, raw, fmt)
        expect_clear_error("task files", lambda: run_pipeline(get_task(str(path))))


@BAD_INPUT
@given(content=st.one_of(st.binary(max_size=200), TEXT.map(str.encode), st.just(b"\xef\xbb\xbf{"),
                         st.just(b"[" * 5000 + b"]" * 5000), st.just("name = 'caf\xe9'".encode("latin-1")),
                         st.just(b"[1, 2]"), st.just(b'"just a string"'), st.just(b"null")),
       fmt=st.sampled_from(["json", "toml"]))
def test_garbage_task_files_are_clear_errors(content, fmt):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"task.{fmt}"
        path.write_bytes(content)
        expect_clear_error("garbage task files", lambda: run_pipeline(get_task(str(path))))


# --------------------------------------------------------------------------------------------
# Data rows (JSONL, JSON list, CSV)
# --------------------------------------------------------------------------------------------

BAD_LABELS = st.one_of(
    st.integers(max_value=-1), st.integers(min_value=2), st.floats(), st.booleans(), st.none(),
    st.lists(st.integers(0, 1), max_size=2), st.dictionaries(st.just("id"), st.integers(0, 1), max_size=1),
    TEXT.filter(lambda s: s.strip() not in ("0", "1", "no", "yes")),
    st.sampled_from(["1.0", "+1", "0x1", "١", "²", "9" * 5000, "", " "]),
)
BAD_TEXT = st.one_of(st.sampled_from(["", " ", "\n\t"]), st.none(), st.booleans(), st.lists(TEXT, max_size=2),
                     st.dictionaries(st.just("t"), TEXT, max_size=1), st.just(math.nan), st.just(math.inf))
BAD_ROWS = st.one_of(
    st.builds(lambda label: {"text": "ok", "label": label}, BAD_LABELS),
    st.builds(lambda text: {"text": text, "label": 0}, BAD_TEXT),
    st.just({"label": 0}), st.just({"text": "ok"}), st.just({}), st.just({"txt": "ok", "label": 0}),
)


def _csv_cell(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return '"' + text.replace('"', '""') + '"'


def write_data(folder: Path, rows: list, fmt: str, ensure_ascii: bool = True) -> str:
    name = f"d.{fmt}"
    if fmt == "jsonl":
        write_rows(folder, rows, name, ensure_ascii)
    elif fmt == "json":
        (folder / name).write_text(json.dumps(rows, ensure_ascii=ensure_ascii), encoding="utf-8")
    else:  # csv: every cell is a string, a missing field is a missing column
        columns = sorted({k for r in rows for k in r} | {"text", "label"})
        missing_column = [c for c in ("text", "label") if any(c not in r for r in rows)]
        columns = [c for c in columns if c not in missing_column]
        lines = [",".join(columns)] + [",".join(_csv_cell(r.get(c, "")) if r.get(c) is not None else ""
                                                for c in columns) for r in rows]
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return name


def data_task(folder: Path, file: str) -> Task:
    return Task(name="rows", template="Text: {text} Verdict:", label_words=("no", "yes"),
                data_files={"train": file, "test": file}, base_dir=str(folder))


def test_valid_rows_are_accepted_in_every_format(tmp_path):
    for fmt in ("jsonl", "json", "csv"):
        prompts = run_pipeline(data_task(tmp_path, write_data(tmp_path, VALID_ROWS, fmt)))
        assert len(prompts.queries) == len(VALID_ROWS)


def _csv_still_bad(row) -> bool:
    """Whether a bad row stays bad once CSV turns every cell into a string (JSON-encoded)."""
    text, label = row.get("text"), row.get("label")
    if "text" not in row or "label" not in row or text is None or label is None:
        return True
    cell = text if isinstance(text, str) else json.dumps(text)
    label_cell = label if isinstance(label, str) else json.dumps(label)
    return not cell.strip() or label_cell.strip() not in ("0", "1", "no", "yes")


@BAD_INPUT
@given(bad=BAD_ROWS, position=st.integers(0, len(VALID_ROWS)), fmt=st.sampled_from(["jsonl", "json", "csv"]))
def test_bad_rows_are_clear_errors(bad, position, fmt):
    if fmt == "csv" and not _csv_still_bad(bad):
        fmt = "jsonl"  # e.g. the list [1] becomes the harmless text "[1]" in a CSV cell
    rows = VALID_ROWS[:position] + [bad] + VALID_ROWS[position:]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        task = data_task(folder, write_data(folder, rows, fmt))
        expect_clear_error("data rows", lambda: run_pipeline(task))


@BAD_INPUT
@given(fmt=st.sampled_from(["jsonl", "json", "csv"]), position=st.integers(0, len(VALID_ROWS)),
       high=st.characters(min_codepoint=0x80, max_codepoint=0xFF),
       text=st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=20))
def test_latin1_data_files_are_clear_errors(fmt, position, high, text):
    rows = VALID_ROWS[:position] + [{"text": f"{text}{high}x", "label": 0}] + VALID_ROWS[position:]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        path = folder / write_data(folder, rows, fmt, ensure_ascii=False)
        # the same file in latin-1: the byte of `high` (>= 0x80) before an ASCII byte is never UTF-8
        path.write_bytes(path.read_text(encoding="utf-8").encode("latin-1"))
        task = data_task(folder, path.name)
        expect_clear_error("latin-1 data", lambda: run_pipeline(task))


@BAD_INPUT
@given(size=st.integers(1100, 60_000), position=st.integers(0, len(VALID_ROWS)),
       fmt=st.sampled_from(["jsonl", "json", "csv"]), char=st.sampled_from(["a", "é", "字", " ab"]))
def test_huge_rows_are_clear_errors(size, position, fmt, char):
    rows = VALID_ROWS[:position] + [{"text": "x" + char * size, "label": 1}] + VALID_ROWS[position:]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        task = data_task(folder, write_data(folder, rows, fmt))
        expect_clear_error("huge rows", lambda: run_pipeline(task, n_ctx=1024))


# --------------------------------------------------------------------------------------------
# Templates and label words (Task and ExperimentConfig overrides)
# --------------------------------------------------------------------------------------------


@BAD_INPUT
@given(template=BAD_TEMPLATES)
def test_bad_templates_are_clear_errors(template):
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        write_rows(folder)
        base = data_task(folder, "d.jsonl")
        expect_clear_error("templates", lambda: run_pipeline(base.with_overrides(template=template)))


@BAD_INPUT
@given(words=BAD_LABEL_WORDS)
def test_bad_label_words_are_clear_errors(words):
    def build():
        cfg = ExperimentConfig(label_words=words)
        return apply_task_overrides(get_task("sst2"), cfg)

    expect_clear_error("label words", build)


# --------------------------------------------------------------------------------------------
# Token inputs of evaluate
# --------------------------------------------------------------------------------------------

MODEL = None
VOCAB = 259  # the byte tokenizer: 256 bytes + BOS, EOS, PAD


def _model():
    global MODEL
    if MODEL is None:
        MODEL = tiny_model(n_layers=1)
    return MODEL


BAD_TOKEN = st.one_of(st.integers(max_value=-1), st.integers(min_value=VOCAB), st.floats(), st.booleans(),
                      st.text(max_size=2), st.none())
GOOD_IDS = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=6)


@BAD_INPUT
@given(data=st.data(), what=st.sampled_from(["query", "label", "empty query", "empty label", "prefix",
                                              "no queries", "no labels", "query not a list"]))
def test_bad_token_inputs_of_evaluate_are_clear_errors(data, what):
    model = _model()
    assert model.cfg.d_vocab == VOCAB
    prefix = data.draw(st.lists(st.integers(0, VOCAB - 1), max_size=3))
    queries = data.draw(st.lists(GOOD_IDS, min_size=1, max_size=3))
    labels = data.draw(st.lists(GOOD_IDS, min_size=2, max_size=3))

    def corrupt(ids):
        ids = list(ids)
        ids.insert(data.draw(st.integers(0, len(ids))), data.draw(BAD_TOKEN))
        return ids

    if what == "query":
        queries[-1] = corrupt(queries[-1])
    elif what == "label":
        labels[0] = corrupt(labels[0])
    elif what == "prefix":
        prefix = corrupt(prefix)
    elif what == "empty query":
        queries.append([])
    elif what == "empty label":
        labels.append([])
    elif what == "no queries":
        queries = []
    elif what == "no labels":
        labels = []
    else:
        queries[0] = data.draw(st.one_of(st.text(max_size=3), st.integers(), st.none()))
    expect_clear_error("evaluate inputs", lambda: evaluate(model, prefix, queries, labels, n_start=0, progress=False))


# --------------------------------------------------------------------------------------------
# CLI values: exit 2, one line, no model loaded
# --------------------------------------------------------------------------------------------


class _ModelLoaded(Exception):
    """Raised by the test loader: reaching it means the bad value got through."""


def _float_or_none(text: str):
    try:
        return float(text)
    except ValueError:
        return None


GARBAGE = TEXT.filter(lambda s: _float_or_none(s) is None and s.strip().lower() not in ("", "none", "null"))
NON_FINITE = st.sampled_from(["nan", "inf", "-inf", "NaN", "+Infinity", "1e999"])
NON_POSITIVE = st.floats(max_value=0, allow_nan=False, allow_infinity=False).map(repr)
NEGATIVE = st.floats(max_value=-1e-12, allow_nan=False, allow_infinity=False).map(repr)
INT_BELOW_1 = st.integers(max_value=0).map(str)
NOT_INT = st.one_of(GARBAGE, st.floats(allow_nan=False).filter(lambda x: x != int(x) if math.isfinite(x) else True).map(repr))

CLI_CASES = st.one_of(
    st.tuples(st.sampled_from(["--lr", "--lcgd-lr", "--ft-lr", "--ft-clip-value", "--ft-clip-norm"]),
              st.one_of(GARBAGE, NON_FINITE, NON_POSITIVE)),
    st.tuples(st.sampled_from(["--ft-momentum", "--ft-weight-decay"]), st.one_of(GARBAGE, NON_FINITE, NEGATIVE)),
    st.tuples(st.sampled_from(["--limit", "--lr-dev-size", "--batch-size", "--ft-epochs", "--ft-batch-size",
                               "--record-top-k"]), st.one_of(INT_BELOW_1, NOT_INT)),
    st.tuples(st.sampled_from(["--eval-seed", "--random-seed", "--untrained-seed", "--seed"]),
              st.one_of(st.integers(max_value=-1).map(str), st.integers(min_value=2**63).map(str), NOT_INT)),
    st.tuples(st.just("--k"), st.one_of(st.integers(max_value=-1).map(str), NOT_INT)),
    st.tuples(st.just("--lr-grid"), st.tuples(st.lists(st.sampled_from(["1e-3", "0.01"]), max_size=2),
                                              st.one_of(NON_FINITE, NON_POSITIVE)).map(lambda t: ",".join([*t[0], t[1]]))),
    st.tuples(st.sampled_from(["--lr-mode", "--demo-sampling", "--attention-map", "--calibration", "--ft-optimizer",
                               "--ft-loss-on", "--record-position", "--lcgd-schedule", "--lr-criterion", "--dtype"]),
              TEXT.filter(lambda s: s not in ("sweep", "reference", "fixed", "random", "balanced", "scores", "pattern",
                                              "none", "content_free", "sgd", "adam", "all", "answer", "prompt_end",
                                              "simultaneous", "sequential", "dev", "demos", "float32", "bfloat16",
                                              "float16"))),
    st.tuples(st.just("--settings"), TEXT.filter(lambda s: not set(p.strip() for p in s.split(",") if p.strip())
                                                 <= {"zsl", "icl", "ft", "lcgd"} or not s.replace(",", "").strip())),
    st.tuples(st.just("--task"), TEXT.filter(lambda s: s.strip() and s not in ("sst2", "sst5", "mr", "subj", "agnews", "cb")
                                             and "," not in s)),
    st.tuples(st.just("--template"), BAD_TEMPLATES.filter(lambda t: t not in ("{missing}", ""))),  # "": default
    st.tuples(st.just("--ft-params"), TEXT.filter(lambda s: not set(s.split("+")) <= {"kv", "q", "o", "mlp", "all"})),
    st.tuples(st.just("--attention-examples"), st.one_of(st.integers(max_value=-1).map(str), NOT_INT)),
    st.tuples(st.just("--log-level"), TEXT.filter(lambda s: s.upper() not in LOG_LEVELS)),
)


def _cli(argv, monkeypatch):
    def loader(name, **kwargs):
        raise _ModelLoaded(name)

    monkeypatch.setattr(icl_lens.models, "load_model", loader)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, stderr.getvalue()


def test_base_cli_run_reaches_the_model_loader(tmp_path, monkeypatch):
    with pytest.raises(_ModelLoaded):
        _cli(["run", "--k", "2", "--limit", "2", "--out", str(tmp_path), "--no-progress"], monkeypatch)


@BAD_INPUT
@given(case=CLI_CASES)
def test_bad_cli_values_are_one_line_exit_2(case, monkeypatch):
    flag, value = case
    with tempfile.TemporaryDirectory() as folder:
        argv = ["run", "--k", "2", "--limit", "2", "--out", folder, "--no-progress", f"{flag}={value}"]
        if flag == "--log-level":
            argv = [f"{flag}={value}", "tasks"]
        COUNTS["cli values"][0] += 1
        code, err = _cli(argv, monkeypatch)
    lines = err.strip().splitlines()
    assert code == 2, (argv, err)
    assert len(lines) == 1 and lines[0].startswith("icl-lens: error:"), (argv, err)
    COUNTS["cli values"][1] += 1
