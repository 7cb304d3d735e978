import json

import pytest

from icl_lens.errors import ResultsError
from icl_lens.cell.results import checksum, is_complete, read_results, write_results


def test_roundtrip_with_checksum_and_nan_as_null(tmp_path):
    path = write_results(tmp_path / "c" / "results.json", {"a": 1.5, "b": [float("nan"), 2], "meta": {"t": 1}})
    loaded = read_results(path)
    assert loaded["a"] == 1.5 and loaded["b"] == [None, 2] and loaded["checksum"] == checksum(loaded)
    assert is_complete(path)
    assert not list(path.parent.glob("*.tmp"))


def test_volatile_keys_do_not_change_the_checksum():
    assert checksum({"x": 1, "meta": {"t": 1}}) == checksum({"x": 1, "meta": {"t": 2}, "timing_seconds": {}})
    assert checksum({"x": 1}) != checksum({"x": 2})


def test_partial_file_is_detected(tmp_path):
    path = write_results(tmp_path / "results.json", {"a": list(range(100))})
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(ResultsError, match="damaged or partial"):
        read_results(path)
    assert not is_complete(path)


def test_edited_file_fails_its_checksum(tmp_path):
    path = write_results(tmp_path / "results.json", {"accuracy": {"icl": 0.5}})
    data = json.loads(path.read_text())
    data["accuracy"]["icl"] = 0.9
    path.write_text(json.dumps(data))
    with pytest.raises(ResultsError, match="fails its checksum"):
        read_results(path)


def test_file_without_checksum_is_rejected(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"accuracy": 1}))
    with pytest.raises(ResultsError, match="no checksum"):
        read_results(path)
    assert not is_complete(tmp_path / "missing.json")
