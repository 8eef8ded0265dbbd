"""Export is all-or-nothing per artifact: a failure (or a kill) between writing an ONNX file and writing its
card never leaves a final-named artifact, staging files of a killed run are cleaned up, and a failed
``--force`` re-export leaves the previous artifacts exactly as they were.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from infoard_deploy.card import ModelCard, load_card
from infoard_deploy.checkpoint import save_model
from infoard_deploy.exporting import pipeline
from infoard_deploy.exporting.pipeline import export_artifacts, staging_path
from infoard_deploy.exporting.profiles import load_profile
from infoard_deploy.models import build_model
from infoard_deploy.utils import sha256_file

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """An (untrained) cnn-small for 8x8 digits with its card: parity needs no accuracy."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("src")
    card = ModelCard("cnn-small", 10, [1, 8, 8], [0.3], [0.4], dataset="digits")
    return save_model(build_model("cnn-small", 10, 1, 8, [0.3], [0.4]), d / "student.pt", card)


def _export(src, out, *profiles, **kw):
    return export_artifacts(src, [load_profile(p) for p in profiles or ("ort-cpu-fp32",)], out, check_n=32,
                            calib_data="digits", **kw)


def _files(folder: Path):
    return {p.name: sha256_file(p) for p in folder.iterdir()} if folder.exists() else {}


class Boom(RuntimeError):
    pass


def _boom(*a, **k):
    raise Boom("simulated crash")


@pytest.mark.parametrize("where", ["parity", "card"])
def test_failure_after_the_onnx_is_written_leaves_no_final_artifact(src, tmp_path, monkeypatch, where):
    written = []
    real_export = pipeline.export_onnx

    def spy(model, path, *a, **k):  # record that the ONNX really was written before the failure
        r = real_export(model, path, *a, **k)
        written.append(Path(path))
        assert Path(path).is_file()
        return r

    monkeypatch.setattr(pipeline, "export_onnx", spy)
    if where == "parity":  # after the ONNX ran on ONNX Runtime, before the gate / card
        monkeypatch.setattr(pipeline, "compare_logits", _boom)
    else:  # the card cannot be written (disk full, ...)
        monkeypatch.setattr(ModelCard, "save", _boom)
    out = tmp_path / "out"
    with pytest.raises(Boom):
        _export(src, out)
    assert written and written[0].name == ".student.fp32.onnx.partial"  # staged under a hidden name
    assert _files(out) == {}  # no artifact, no card, no staging file, no lock file
    assert not out.exists()  # the folder the export created is removed again when it stays empty


def test_leftovers_of_a_killed_export_are_removed_and_user_files_kept(src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    stale = [".student.fp32.onnx.partial", "..student.fp32.onnx.partial.a1b2c3d4.onnx",
             ".student.fp32.card.json.partial", ".student.fp32.onnx.x9y8z7w6.onnx"]
    for n in stale:
        (out / n).write_bytes(b"half an onnx file")
    (out / ".student.fp32.onnx.bak").write_text("the user's own backup")
    (out / "README").write_text("mine")
    res = _export(src, out)
    assert res["passed"]
    assert sorted(os.listdir(out)) == [".student.fp32.onnx.bak", "README", "student.fp32.card.json",
                                       "student.fp32.onnx"]
    card = load_card(out / "student.fp32.onnx")
    assert card.provenance["artifact_sha256"] == sha256_file(out / "student.fp32.onnx")
    assert card.metrics["gate"]["passed"]


def test_every_artifact_is_staged_then_published_with_its_card_last(src, tmp_path, monkeypatch):
    events = []
    real_replace = os.replace

    def spy(a, b):
        events.append((Path(a).name, Path(b).name))
        return real_replace(a, b)

    monkeypatch.setattr(pipeline.os, "replace", spy)
    out = tmp_path / "out"
    res = _export(src, out, "ort-cpu-fp32", "ort-cpu-int8")
    assert res["passed"], res["failures"]
    published = [e for e in events if e[0].endswith(".partial")]
    assert published == [(".student.fp32.onnx.partial", "student.fp32.onnx"),
                         (".student.fp32.card.json.partial", "student.fp32.card.json"),
                         (".student.int8.onnx.partial", "student.int8.onnx"),
                         (".student.int8.card.json.partial", "student.int8.card.json")]
    assert sorted(os.listdir(out)) == ["student.fp32.card.json", "student.fp32.onnx", "student.int8.card.json",
                                       "student.int8.onnx"]


def test_failed_force_reexport_keeps_the_previous_artifacts(src, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert _export(src, out)["passed"]
    before = _files(out)
    monkeypatch.setattr(pipeline, "compare_logits", _boom)
    with pytest.raises(Boom):
        _export(src, out, force=True)
    assert _files(out) == before  # nothing the user had is lost, nothing half-written appears
    assert not staging_path(out / "student.fp32.onnx").exists()


def test_bad_out_is_refused_before_any_work(src, tmp_path, monkeypatch):
    from infoard_deploy.errors import UserError

    monkeypatch.setattr(pipeline, "_reference_model", _boom)  # must not even be reached
    (tmp_path / "f").write_text("x")
    for out, msg in ((tmp_path / "f", "is an existing file"), (tmp_path / "f" / "sub", "is a file"),
                     (Path("/proc/nope/x"), "cannot create files in /proc")):
        with pytest.raises(UserError, match=msg):
            _export(src, out)


def test_a_folder_named_like_an_artifact_is_never_replaced(src, tmp_path):
    from infoard_deploy.errors import UserError

    keep = tmp_path / "out" / "student.fp32.onnx" / "keep.txt"
    keep.parent.mkdir(parents=True)
    keep.write_text("mine")
    with pytest.raises(UserError, match="is a folder where the export would write a file"):
        _export(src, tmp_path / "out", force=True)
    assert keep.read_text() == "mine" and sorted(os.listdir(tmp_path / "out")) == ["student.fp32.onnx"]
