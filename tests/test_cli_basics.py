from infoard_deploy import __version__


def test_version(cli):
    code, out, _ = cli("--version")
    assert code == 0 and __version__ in out


def test_list_shows_registries(cli):
    code, out, _ = cli("list", "--json")
    assert code == 0
    import json

    data = json.loads(out)
    assert "mobilenetv2" in {r["name"] for r in data["architectures"]}
    assert "fashion-mnist" in {r["name"] for r in data["datasets"]}
    assert data["teacher-formats"]
    # what `distill --opt key=value` accepts, per method, with InfoARD's own defaults over its base's
    opts = {r["name"]: r["about"].split() for r in data["method-options"]}
    assert {"ard", "rslad", "iad", "adaad", "infoard"} <= set(opts)
    assert "kl_reduction=batchmean" in opts["infoard"] and "kl_reduction=mean" in opts["rslad"]
    assert "teacher_fix=none" in opts["iad"] and "asa_eps_max=1" in opts["infoard"]


def test_unknown_section_suggests(cli):
    code, _, err = cli("list", "architecturs")
    assert code == 2 and "did you mean" in err and "\n" not in err.strip()


def test_unknown_command_one_line(cli):
    code, _, err = cli("lst")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
