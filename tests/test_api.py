"""The public Python API: names importable from the package, a tiny teacher -> distill -> evaluate -> export ->
verify chain through it (the README's example, shrunk), typed results whose to_dict() is the CLI's JSON,
UserError on bad input, and nothing printed to stdout."""
import json

import pytest

import infoard_deploy as ia
from infoard_deploy.errors import UserError

API = ["load_model", "train_teacher", "distill", "evaluate", "export", "verify", "bench", "run", "compare",
       "write_card", "inspect_model"]


def test_public_names_are_functions_even_after_internal_imports():
    """No internal module shadows an API name: importing a submodule sets it as a package attribute."""
    import importlib
    import pkgutil

    for info in pkgutil.walk_packages(ia.__path__, "infoard_deploy."):
        if "tensorrt" not in info.name and not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    from infoard_deploy import bench, distill, evaluate, export, load_model, run, train_teacher, verify

    for fn in (load_model, train_teacher, distill, evaluate, export, verify, bench, run):
        assert callable(fn) and fn.__doc__, fn
    for name in API:
        assert callable(getattr(ia, name)), name


def test_api_modules_never_import_the_cli():
    """Imports flow one way: CLI and pipeline -> API -> components."""
    import ast
    from pathlib import Path

    root = Path(ia.__file__).parent
    for f in sorted((root / "api").glob("*.py")):
        tree = ast.parse(f.read_text())
        mods = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [m for m in mods if m in ("cli", "pipeline", "pipeline_report") or m.startswith("commands")], f


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    out = tmp_path_factory.mktemp("api")
    common = dict(data="digits", eps=0.1, epochs=1, batch_size=64, train_limit=400, val_n=64, device="cpu",
                  progress=False)
    t = ia.train_teacher(arch="cnn-small", method="pgd-at", out=str(out / "teacher"), **common)
    s = ia.distill(teacher=t.model_path, student="cnn-small", method="ard", out=str(out / "student"), **common)
    return out, t, s


def test_chain_through_the_api(chain, capsys):
    out, t, s = chain
    assert t.model_path.exists() and s.model_path.exists() and s["kind"] == "student"
    assert s["command"].startswith("infoard-deploy") and "distill" in s["command"]
    json.dumps(s.to_dict())  # the CLI's --json
    card = json.loads(s.model_path.with_name("student.card.json").read_text())
    assert card["extra"]["method"]["mim_levels"]["feature"] == "off"  # ARD: no MIM, and the card says so
    assert card["extra"]["method"]["settings"]["protocol"] == "official"
    prov = s["provenance"]
    assert prov["data"]["train"]["n"] == 400 and len(prov["data"]["train"]["sha256"]) == 64
    assert prov["software"]["torch"]
    e = ia.evaluate(s.model_path, attacks=["clean", "pgd20"], n=64, device="cpu")
    assert 0 <= e["clean_acc"] <= 100 and "pgd20" in e["robust_acc"]
    x = ia.export(s.model_path, ["ort-cpu-fp32"], calib_data="digits", out=str(out / "deploy"), check_n=64)
    assert x.passed and x.artifact_paths[0].exists()
    r = ia.verify(s.model_path, x.artifact_paths, "digits", n=64, attacks=["pgd20"], square_queries=20,
                  eps_sweep=[], out=str(out / "verify"), device="cpu")
    assert r["config"]["n"] == 64 and isinstance(r.passed, bool)
    b = ia.bench(x.artifact_paths, s.model_path, batch_sizes=[1], warmup=1, iters=2, device="cpu")
    assert len(b["results"]) == 2
    loaded = ia.load_model(s.model_path)
    assert loaded.card.architecture == "cnn-small" and loaded.normalisation_source == "card"
    assert capsys.readouterr().out == ""  # the library never prints to stdout


def test_bad_input_raises_user_error(chain, tmp_path):
    out, t, s = chain
    with pytest.raises(UserError):
        ia.evaluate(tmp_path / "missing.pt", data="digits")
    with pytest.raises(UserError, match="--n must be positive"):
        ia.evaluate(s.model_path, n=0)
    with pytest.raises(UserError, match="steps must be a positive integer"):
        ia.evaluate(s.model_path, attack_opts=["pgd20.steps=-1"])
    with pytest.raises(UserError, match="--iters"):
        ia.bench([], s.model_path, iters=0)
    with pytest.raises(UserError, match="unknown option"):
        ia.distill(teacher=str(t.model_path), epochz=3)


def test_card_command_for_a_foreign_file(chain, tmp_path, cli):
    """A bare state dict gets a card once; then every command reads it as stated, without flags."""
    import torch

    out, t, s = chain
    sd = torch.load(s.model_path, weights_only=True)
    bare = tmp_path / "foreign.pt"
    torch.save({"net": sd}, bare)  # as ARD / RSLAD save: no card, no normalisation inside
    code, _, err = cli("card", bare, "--input-shape", "1,8,8", "--mean", "0.3", "--std", "0.4", "--dataset", "digits",
                       "--eps", "0.1")
    assert code == 0, err
    card = json.loads((tmp_path / "foreign.card.json").read_text())
    assert card["architecture"] == "cnn-small" and card["mean"] == [0.3] and card["eps"] == 0.1
    loaded = ia.load_model(bare)
    assert loaded.normalisation_source == "card" and not loaded.warnings
    code, _, err = cli("card", bare, "--input-shape", "1,8,8")
    assert code == 2 and "exists" in err  # never replaced without --force
    code, o, err = cli("--device", "cpu", "export", "--model", bare, "--fp32", "--out", tmp_path / "x", "--json",
                       "--check-n", "32")
    assert code == 0, err
