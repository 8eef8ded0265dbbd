"""Peer-saved checkpoints (no card, no --arch) through every command that takes a model: inspect, evaluate,
card -> export -> bench -> verify, and distill as a teacher. Predictions must equal the peer model's own."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from datafiles import write_cifar  # noqa: E402

from infoard_deploy.models import MODELS  # noqa: E402


def _peer(arch, seed=0):
    torch.manual_seed(seed)
    net = MODELS.get(arch)(num_classes=10, in_channels=3)
    for m in net.modules():  # non-trivial BN statistics so a wrong layout shows in the logits
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


LAYOUTS = {
    # RobustBench's default WideResNet (no sub_block1), saved as {'state_dict': DataParallel}
    "robustbench-wrn-nosub": ("wrn-16-4-nosub", "model.pt",
                              lambda sd, p: torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, p)),
    # ARD / RSLAD style: {'net': ...} under an epoch=N.t7 name
    "ard-t7": ("resnet18", "epoch=3.t7", lambda sd, p: torch.save({"net": sd, "epoch": 3}, p)),
    # DeepMind-style WRN as safetensors
    "dm-wrn-safetensors": ("dm-wrn-16-4", "dm.safetensors", None),
}


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    d = tmp_path_factory.mktemp("cifar")
    path, arrays = write_cifar(d, "cifar10", per_batch=4, n_test=8)
    return path, arrays


@pytest.mark.slow
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_peer_file_in_every_command(layout, cifar, tmp_path, cli):
    arch, name, save = LAYOUTS[layout]
    data_dir, arrays = cifar
    net = _peer(arch)
    sd = net.state_dict()
    path = tmp_path / name
    if save is None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        save(sd, path)
    x = torch.from_numpy(arrays["test_x"]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        want = net(x).argmax(1).tolist()  # the peer's own model, raw [0,1] inputs (its convention)
    dd = ["--data", "cifar10", "--data-dir", data_dir]

    code, out, err = cli("--device", "cpu", "inspect", path, "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["architecture_source"] == "inferred" and rep["normalisation"]["source"] in ("assumed", "architecture")

    code, out, err = cli("--device", "cpu", "evaluate", "--model", path, *dd, "--attacks", "clean", "--json",
                         "--no-progress")
    assert code == 0, err
    ev = json.loads(out)
    y = arrays["test_y"]
    assert ev["clean_acc"] == pytest.approx(100 * np.mean(np.array(want) == y))
    assert ev["model_loading"]["architecture"] == rep["card"]["architecture"]

    code, _, err = cli("card", path, "--dataset", "cifar10", "--eps", "8/255")
    assert code == 0, err
    code, out, err = cli("--device", "cpu", "export", "--model", path, "--fp32", "--out", tmp_path / "x",
                         "--calib-data", "cifar10", "--data-dir", data_dir, "--check-n", "8", "--json")
    assert code == 0, err
    onnx = json.loads(out)["artifacts"][0]["path"]
    code, out, err = cli("--device", "cpu", "bench", "--reference", path, "--artifact", onnx, "--batch-sizes", "1",
                         "--warmup", "1", "--iters", "2", "--json")
    assert code == 0, err
    code, out, err = cli("--device", "cpu", "verify", "--reference", path, "--artifact", onnx, *dd, "--n", "8",
                         "--attacks", "pgd20", "--square-queries", "5", "--eps-sweep", "none", "--own-graph-steps", "2",
                         "--out", tmp_path / "v", "--json")
    assert code in (0, 1), err
    v = json.loads(out)
    assert [g for g in v["gates"] if g["gate"] == "provenance"][0]["passed"]
    assert v["artifacts"][0]["clean_acc"] == pytest.approx(ev["clean_acc"])
