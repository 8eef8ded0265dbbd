"""`compare`: config parsing, paired statistics, the resumable grid (fake API), and one tiny real grid."""
import json
from dataclasses import replace

import numpy as np
import pytest

from infoard_deploy.comparison import Comparison, parse_config
from infoard_deploy.errors import UserError
from infoard_deploy.recipe import recipe_from_dict
from infoard_deploy.stats import mcnemar_exact, paired_difference


def test_parse_config():
    assert parse_config("rslad+asa") == ("rslad", True, None)
    assert parse_config("infoard-asa-mim") == ("infoard", False, False)
    assert parse_config("iad") == ("iad", None, None)
    with pytest.raises(UserError):
        parse_config("infoard+foo")


def test_mcnemar_and_paired_difference():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(10, 10) == 1.0
    assert mcnemar_exact(12, 0) < 0.001  # 2 * 0.5**12
    a = [np.array([1, 1, 1, 0, 1, 0], bool), np.array([1, 1, 0, 0, 1, 1], bool)]
    b = [np.array([1, 0, 1, 0, 1, 0], bool), np.array([1, 0, 0, 0, 1, 1], bool)]
    d = paired_difference(a, b, reps=2000)
    assert d["diff"] == pytest.approx(100 * 2 / 12, abs=1e-3)
    assert d["a_only"] == [1, 1] and d["b_only"] == [0, 0] and d["pairs"] == 12
    assert d["ci95"][0] <= d["diff"] <= d["ci95"][1]
    with pytest.raises(ValueError):
        paired_difference([np.ones(3, bool)], [np.ones(4, bool)])
    # a decisive difference keeps a tiny but non-zero p (a rounded 0 would read as impossible)
    big = paired_difference([np.ones(232, bool)], [np.r_[np.ones(25, bool), np.zeros(207, bool)]], reps=200)
    assert 0 < big["mcnemar_p"] < 1e-30


def _ev(bits_wc, bits_clean, aa=None):
    wc, cl = "".join(map(str, bits_wc)), "".join(map(str, bits_clean))
    out = {"clean_acc": 100 * np.mean(bits_clean), "worst_case_acc": 100 * np.mean(bits_wc),
           "robust_acc": {"apgd-ce": 100 * np.mean(bits_wc)},
           "per_sample": {"worst_case": wc, "robust": {"clean": cl, "apgd-ce": wc}}}
    if aa is not None:
        out = {**out, "AA": 100 * np.mean(aa), "per_sample": {**out["per_sample"],
                                                              "robust": {"clean": cl, "aa": "".join(map(str, aa))}}}
    return out


class FakeAPI(dict):
    def __init__(self):
        super().__init__(distill=self.distill, evaluate=self.evaluate)
        self.trained = []

    def distill(self, **kw):
        from pathlib import Path

        from infoard_deploy.api.training import TrainingResult

        self.trained.append((kw["method"], kw["asa"], kw["mim"], kw["seed"]))
        self.opts = getattr(self, "opts", []) + [dict(kw["opts"])]
        out = Path(kw["out"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "student.pt").write_bytes(b"x")
        return TrainingResult({"model": str(out / "student.pt"), "val_clean": 0.5, "val_robust": 0.3, "warnings": []})

    def evaluate(self, model, **kw):
        from infoard_deploy.api.common import Result

        self.evaluated = getattr(self, "evaluated", 0) + 1
        better = "infoard" in str(model) and "-asa" not in str(model)
        if "aa" in kw["attacks"]:
            return Result(_ev([1, 1, 0, 0], [1, 1, 1, 0], aa=[1, 1 if better else 0, 0, 0]))
        return Result(_ev([1, 1 if better else 0, 1, 0], [1, 1, 1, 0]))


def _recipe(**compare):
    return recipe_from_dict({"name": "c", "teacher": {"path": "teacher.pt"}, "data": {"name": "digits"},
                             "compare": {"configs": ["infoard", "infoard-asa", "iad"], "seeds": [0, 1],
                                         "n": 4, "aa_n": 4, **compare}})


def test_grid_runs_resumes_and_pairs(tmp_path):
    api = FakeAPI()
    res = Comparison(_recipe(), tmp_path, api=api).run().to_dict()
    assert sorted(map(str, api.trained)) == sorted(map(str, [("infoard", None, None, s) for s in (0, 1)]
                                                       + [("infoard", False, None, s) for s in (0, 1)]
                                                       + [("iad", None, None, s) for s in (0, 1)]))
    p = res["paired"]["infoard-asa"]
    assert p["worst_case"]["diff"] == pytest.approx(-25.0) and p["AA"]["diff"] == pytest.approx(-25.0)
    assert p["worst_case"]["b_only"] == [1, 1]
    assert res["summary"]["infoard"]["worst_case"]["mean"] == pytest.approx(75.0)
    assert (tmp_path / "compare" / "results.md").read_text().startswith("# compare")
    assert (tmp_path / "compare" / "robust.png").exists() and (tmp_path / "compare" / "paired.png").exists()
    api2 = FakeAPI()
    Comparison(_recipe(), tmp_path, api=api2).run()
    assert api2.trained == []  # every cell done: nothing retrained
    api3 = FakeAPI()
    Comparison(_recipe(n=3), tmp_path, api=api3).run()
    # a changed evaluation setting re-evaluates every cell, without training the students again
    assert api3.trained == [] and api3.evaluated == 12  # 6 cells x (main attacks + AutoAttack subset)
    api4 = FakeAPI()
    Comparison(_recipe(n=3, seeds=[0, 1]), tmp_path, api=api4, force=True).run()
    assert len(api4.trained) == 6  # --force trains again
    api5 = FakeAPI()
    rec = _recipe(n=3)
    Comparison(replace(rec, distill=replace(rec.distill, epochs=7)), tmp_path, api=api5).run()
    assert len(api5.trained) == 6  # a changed training setting trains again


def test_variants_carry_options_and_their_own_fingerprint(tmp_path):
    """A [compare.variants] name trains its config with its options over distill.options; changing a variant's
    options re-runs only that variant's cells; a bad option fails before any cell runs."""
    var = {"t": {"config": "infoard-mim", "opts": {"asa_rule": "teacher", "asa_eps_max": 1.5}}}
    api = FakeAPI()
    rec = recipe_from_dict({"name": "c", "teacher": {"path": "teacher.pt"}, "data": {"name": "digits"},
                            "distill": {"options": {"steps": 3}},
                            "compare": {"configs": ["infoard", "t"], "seeds": [0], "n": 4, "aa_n": 0,
                                        "variants": var}})
    Comparison(rec, tmp_path, api=api).run()
    assert api.trained == [("infoard", None, None, 0), ("infoard", None, False, 0)]
    assert api.opts == [{"steps": 3}, {"steps": 3, "asa_rule": "teacher", "asa_eps_max": 1.5}]
    changed = {"t": {"config": "infoard-mim", "opts": {"asa_rule": "teacher", "asa_eps_max": 2.0}}}
    api2 = FakeAPI()
    Comparison(replace(rec, compare=replace(rec.compare, variants=changed)), tmp_path, api=api2).run()
    assert api2.trained == [("infoard", None, False, 0)]  # only the changed variant re-ran
    bad = {"t": {"config": "infoard", "opts": {"asa_eps_mx": 1.5}}}
    api3 = FakeAPI()
    with pytest.raises(UserError, match="compare config 't'.*asa_eps_mx"):
        Comparison(replace(rec, compare=replace(rec.compare, variants=bad)), tmp_path / "b", api=api3).run()
    assert api3.trained == [] and not (tmp_path / "b").exists()
    with pytest.raises(UserError, match="must be a table"):
        recipe_from_dict({"name": "c", "teacher": {"path": "t.pt"}, "compare": {
            "configs": ["infoard", "t"], "variants": {"t": {"cfg": "infoard"}}}})


def test_reference_must_be_in_the_grid():
    with pytest.raises(UserError, match="compare.reference"):
        _recipe(reference="ard")
    with pytest.raises(UserError, match="method"):
        _recipe(configs=["infoard", "nosuch"])


@pytest.mark.slow
def test_tiny_real_grid(tmp_path, cli):
    """The real trainer and evaluation through the CLI: 2 configs x 1 seed on digits, 1 epoch each."""
    import torch

    from infoard_deploy.data import load_data
    from infoard_deploy.models import build_model
    from infoard_deploy.train import TrainConfig, build_teacher_method, train

    b = load_data("digits")
    t = train(build_model("cnn-small", 10, 1, 8, b.mean, b.std), build_teacher_method("pgd-at", steps=3), b,
              TrainConfig(epochs=1, batch_size=64, lr=0.05, out_dir=str(tmp_path / "t"), model_name="teacher",
                          progress=False, val_n=32, device="cpu", train_limit=256), card_base={"architecture": "cnn-small"})
    recipe = tmp_path / "c.toml"
    recipe.write_text(f"""name = "c"\neps = "0.1"\n[data]\nname = "digits"\ntrain_limit = 256\n
[teacher]\npath = "{t.final_model_path}"\n[distill]\nstudent = "cnn-small"\nepochs = 1\nbatch_size = 64\n
[compare]\nconfigs = ["ard", "rslad"]\nseeds = [0]\nreference = "ard"\nn = 32\nattacks = ["clean", "pgd20"]\naa_n = 0\n""")
    torch.manual_seed(0)
    code, out, err = cli("--device", "cpu", "compare", str(recipe), "--out", str(tmp_path / "run"), "--json")
    assert code == 0, err
    res = json.loads(out)
    assert set(res["summary"]) == {"ard", "rslad"} and "rslad" in res["paired"]
    assert res["paired"]["rslad"]["worst_case"]["pairs"] == 32
