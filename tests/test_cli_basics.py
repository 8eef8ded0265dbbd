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


def test_unknown_section_suggests(cli):
    code, _, err = cli("list", "architecturs")
    assert code == 2 and "did you mean" in err and "\n" not in err.strip()


def test_unknown_command_one_line(cli):
    code, _, err = cli("lst")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
