"""Model cards are untrusted input: every field is type- and range-checked with one line naming file and field."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from infoard_deploy.card import MAX_INPUT_ELEMENTS, ModelCard, load_card
from infoard_deploy.errors import UserError

GOOD = {"architecture": "cnn-small", "num_classes": 10, "input_shape": [1, 8, 8], "mean": [0.3], "std": [0.4]}


def _write(tmp_path, **changes):
    d = {**GOOD, **changes}
    for k in [k for k, v in changes.items() if v is _DROP]:
        del d[k]
    p = tmp_path / "m.card.json"
    p.write_text(json.dumps(d))  # json writes NaN / Infinity literally, as a hostile file may
    return p


_DROP = object()


@pytest.mark.parametrize("changes,match", [
    ({"mean": [float("nan")]}, "mean value must be a finite number"),
    ({"std": [float("inf")]}, "std value must be a finite number"),
    ({"std": [0.0]}, "std values must be positive"),
    ({"std": [-0.4]}, "std values must be positive"),
    ({"mean": ["0.3"]}, "mean value must be a number"),
    ({"mean": 0.3}, "mean must be a list"),
    ({"mean": [0.3, 0.3]}, "mean has 2 values for 1 input channels"),
    ({"eps": 2}, r"eps must lie in \[0, 1\]"),
    ({"eps": float("nan")}, "eps must be a finite number"),
    ({"eps": "8/255"}, "eps must be a number"),
    ({"num_classes": "10"}, "num_classes must be an integer"),
    ({"num_classes": 10.5}, "num_classes must be an integer"),
    ({"num_classes": True}, "num_classes must be an integer"),
    ({"num_classes": 1}, r"num_classes must lie in 2\.\.100000"),
    ({"num_classes": 10_000_000}, r"num_classes must lie in 2\.\.100000"),
    ({"input_shape": ["a", 8, 8]}, "input_shape C must be an integer, got 'a'"),
    ({"input_shape": [1, 8.5, 8]}, "input_shape H must be an integer"),
    ({"input_shape": [1, 8]}, r"input_shape must be \[C, H, W\]"),
    ({"input_shape": "1,8,8"}, "input_shape must be a list"),
    ({"input_shape": [0, 8, 8]}, r"input_shape C must lie in 1\.\.64"),
    ({"input_shape": [65, 8, 8]}, r"input_shape C must lie in 1\.\.64"),
    ({"input_shape": [1, 100000, 100000]}, r"H and W must lie in 1\.\.4096"),
    ({"input_shape": [64, 4096, 4096]}, "too large"),
    ({"architecture": ""}, "architecture must be a non-empty string"),
    ({"architecture": 5}, "architecture must be a non-empty string"),
    ({"classes": ["a", "b"]}, "classes lists 2 names but num_classes is 10"),
    ({"classes": "abc"}, "classes must be a list"),
    ({"provenance": [1, 2]}, "provenance must be a JSON object"),
    ({"metrics": "good"}, "metrics must be a JSON object"),
    ({"dataset": 3}, "dataset must be a string"),
    ({"std": _DROP, "mean": _DROP}, "missing mean, std"),
])
def test_bad_field_is_one_line_naming_file_and_field(tmp_path, changes, match):
    p = _write(tmp_path, **changes)
    with pytest.raises(UserError, match=match) as e:
        load_card(p)
    msg = str(e.value)
    assert "m.card.json" in msg and "\n" not in msg


def test_constructor_validates_and_normalises():
    c = ModelCard("cnn-small", np.int64(10), (np.int32(3), 32, 32), np.array([0.5, 0.4, 0.3], np.float32),
                  [np.float64(0.2)] * 3, classes=list(range(10)), eps=np.float32(8 / 255))
    d = json.loads(json.dumps(c.to_dict()))  # plain JSON types only
    assert d["num_classes"] == 10 and d["input_shape"] == [3, 32, 32] and d["classes"][3] == "3"
    assert type(c.mean[0]) is float and math.isclose(c.eps, 8 / 255, rel_tol=1e-6)
    assert c.provenance == {} and c.metrics == {}
    with pytest.raises(UserError, match="model card: mean value must be a finite number"):
        ModelCard("cnn-small", 10, [1, 8, 8], [float("nan")], [0.4])
    biggest = ModelCard("cnn-small", 10, [3, 4096, 4096], [0.5] * 3, [0.2] * 3)
    assert math.prod(biggest.input_shape) == MAX_INPUT_ELEMENTS


def test_card_that_is_not_a_readable_file(tmp_path):
    (tmp_path / "m.card.json").mkdir()
    with pytest.raises(UserError, match="is not a file"):
        load_card(tmp_path / "m.pt")
    (tmp_path / "n.card.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(UserError, match="not valid JSON"):
        load_card(tmp_path / "n.pt")
    (tmp_path / "o.card.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(UserError, match="model card"):
        load_card(tmp_path / "o.pt")


def test_null_optional_fields_are_accepted(tmp_path):
    p = _write(tmp_path, eps=None, dataset=None, classes=None, provenance=None, metrics=None)
    c = load_card(p)
    assert c.eps is None and c.classes == [] and c.provenance == {} and c.metrics == {}
