"""Recipes: typed parsing, unknown keys rejected, --set overrides, every shipped recipe loads."""
from pathlib import Path

import pytest

from infoard_deploy.errors import UserError
from infoard_deploy.recipe import apply_overrides, dump_recipe, load_recipe, recipe_from_dict

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").rglob("*.toml")), ids=lambda p: p.name)
def test_shipped_recipes_load(path):
    r = load_recipe(path)
    assert r.name and r.stages
    # resolved dump parses back to the same recipe
    assert recipe_from_dict(__import__("tomllib").loads(dump_recipe(r))) == r


def test_unknown_key_suggests():
    with pytest.raises(UserError, match="did you mean 'epochs'"):
        recipe_from_dict({"distill": {"epocs": 3}})
    with pytest.raises(UserError, match="unknown key 'bogus'"):
        recipe_from_dict({"bogus": 1})


def test_types_checked():
    with pytest.raises(UserError, match="integer"):
        recipe_from_dict({"distill": {"epochs": "many"}})
    with pytest.raises(UserError, match="true or false"):
        recipe_from_dict({"data": {"download": "yes"}})
    with pytest.raises(UserError, match=r"\(0, 1\]"):
        recipe_from_dict({"eps": "2"})
    with pytest.raises(UserError, match="stage"):
        recipe_from_dict({"stages": ["teacher", "deploy"]})


def test_overrides():
    t = apply_overrides({"distill": {"epochs": 3}}, ["distill.epochs=7", "verify.attacks=[\"pgd20\"]",
                                                     "eps=8/255", "distill.method=rslad"])
    r = recipe_from_dict(t)
    assert r.distill.epochs == 7 and r.verify.attacks == ["pgd20"] and r.eps == "8/255"
    assert r.distill.method == "rslad"
    assert abs(r.eps_value(None) - 8 / 255) < 1e-12
    with pytest.raises(UserError):
        apply_overrides({}, ["noequals"])


def test_run_rejects_bad_recipe_one_line(cli, tmp_path):
    p = tmp_path / "r.toml"
    p.write_text("[distill]\nepocs = 3\n")
    code, _, err = cli("run", str(p))
    assert code == 2 and "did you mean" in err and len(err.strip().splitlines()) == 1
    p.write_text("not = [toml")
    code, _, err = cli("run", str(p))
    assert code == 2 and "not valid TOML" in err
