"""The run-folder lock: two processes never write one folder; a killed holder never leaves it stuck.

Holders and contenders are real processes (``subprocess``): ``flock`` is per open file, and the lock is
deliberately re-entrant inside one process, so only other processes show the exclusion.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from infoard_deploy.errors import UserError
from infoard_deploy.runlock import LOCK_NAME, holder_of, run_lock

ROOT = Path(__file__).resolve().parents[1]

# Takes the lock, says so, then holds it for HOLD seconds (or until killed). Exit 2 with the message
# on stdout when the folder is taken, like the CLI's UserError.
_HOLDER = textwrap.dedent("""
    import sys, time
    from infoard_deploy.errors import UserError
    from infoard_deploy.runlock import run_lock
    folder, hold = sys.argv[1], float(sys.argv[2])
    try:
        with run_lock(folder, what="test-holder"):
            print("locked", flush=True)
            time.sleep(hold)
    except UserError as e:
        print(e, flush=True)
        sys.exit(2)
""")


def _spawn(folder: Path, hold: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder), str(hold)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


@pytest.fixture
def holder(tmp_path):
    """A process holding ``tmp_path/run``'s lock until killed; yields (folder, process)."""
    folder = tmp_path / "run"
    p = _spawn(folder, 600)
    assert p.stdout.readline().strip() == "locked", p.stderr.read()
    yield folder, p
    if p.poll() is None:
        p.kill()
    p.wait(timeout=30)


def test_second_process_is_refused_with_the_holder_named(holder):
    folder, p = holder
    c = _spawn(folder, 0)
    out, _ = c.communicate(timeout=60)
    assert c.returncode == 2
    msg = out.strip()
    assert msg.startswith(f"{folder} is in use by another infoard-deploy process (pid {p.pid}")
    assert "test-holder" in msg and "wait for it or use another --out" in msg and "\n" not in msg
    # the library call in this process is refused the same way (one line, UserError -> exit 2 in the CLI)
    with pytest.raises(UserError, match=rf"in use by another infoard-deploy process \(pid {p.pid}"):
        with run_lock(folder):
            pass
    assert holder_of(folder).startswith(f"pid {p.pid}")


def test_two_processes_started_together_exactly_one_wins(tmp_path):
    folder = tmp_path / "race"
    procs = [_spawn(folder, 120) for _ in range(2)]  # the winner holds until killed below
    try:
        deadline = time.monotonic() + 120
        while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        loser = next(p for p in procs if p.poll() is not None)
        winner = next(p for p in procs if p is not loser)
        assert loser.returncode == 2 and "is in use by another infoard-deploy process" in loser.stdout.read()
        assert winner.poll() is None and winner.stdout.readline().strip() == "locked"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)


def test_sigkilled_holder_does_not_leave_the_folder_stuck(holder):
    folder, p = holder
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    assert (folder / LOCK_NAME).exists()  # the stale file stays behind, but the kernel dropped the lock
    assert holder_of(folder) is None
    with run_lock(folder, what="after-crash"):
        assert "after-crash" in (folder / LOCK_NAME).read_text()
    assert not (folder / LOCK_NAME).exists()  # a clean release removes the lock file


def test_reentrant_in_process_and_cleans_up(tmp_path):
    fresh = tmp_path / "a" / "b"
    with run_lock(fresh, what="outer"):
        with run_lock(fresh, what="inner"):  # a recipe holding its folder may export into it
            assert (fresh / LOCK_NAME).exists()
        assert (fresh / LOCK_NAME).exists()  # still held by the outer block
    assert not fresh.exists()  # created by the lock and left empty: removed again
    kept = tmp_path / "kept"
    with run_lock(kept):
        (kept / "student.pt").write_bytes(b"x")
    assert sorted(os.listdir(kept)) == ["student.pt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        with run_lock(tmp_path / "file"):
            pass


def test_training_and_export_refuse_a_locked_folder(holder, tiny_bundle, tmp_path):
    """The trainer and the exporter take the lock before touching the folder: nothing is written."""
    from infoard_deploy.card import ModelCard
    from infoard_deploy.checkpoint import save_model
    from infoard_deploy.exporting.pipeline import export_artifacts
    from infoard_deploy.exporting.profiles import load_profile
    from infoard_deploy.models import build_model
    from infoard_deploy.train import TrainConfig, build_teacher_method, train

    folder, p = holder
    (folder / "notes.txt").write_text("mine")
    before = sorted(os.listdir(folder))
    m = build_model("cnn-small", 10, 1, 8, [0.3], [0.4])
    cfg = TrainConfig(epochs=1, batch_size=64, train_limit=64, val_n=32, out_dir=str(folder), model_name="t",
                      progress=False, device="cpu")
    with pytest.raises(UserError, match=f"in use by another infoard-deploy process \\(pid {p.pid}"):
        train(m, build_teacher_method("pgd-at", steps=1), tiny_bundle, cfg, card_base={"architecture": "cnn-small"})
    src = save_model(m, tmp_path / "src" / "student.pt", ModelCard("cnn-small", 10, [1, 8, 8], [0.3], [0.4]))
    with pytest.raises(UserError, match="in use by another infoard-deploy process"):
        export_artifacts(src, [load_profile("ort-cpu-fp32")], folder, check_n=16)
    assert sorted(os.listdir(folder)) == before
    # once the holder is gone (killed), the same export goes through
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    res = export_artifacts(src, [load_profile("ort-cpu-fp32")], folder, check_n=16)
    assert res["passed"] and (folder / "student.fp32.onnx").exists() and not (folder / LOCK_NAME).exists()


def test_cli_export_into_a_locked_folder_is_one_line_exit_2(holder, cli, tmp_path):
    from infoard_deploy.card import ModelCard
    from infoard_deploy.checkpoint import save_model
    from infoard_deploy.models import build_model

    folder, p = holder
    src = save_model(build_model("cnn-small", 10, 1, 8, [0.3], [0.4]), tmp_path / "student.pt",
                     ModelCard("cnn-small", 10, [1, 8, 8], [0.3], [0.4]))
    t0 = time.monotonic()
    code, _, err = cli("export", "--model", src, "--fp32", "--out", folder, "--check-n", "16")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"is in use by another infoard-deploy process (pid {p.pid}" in err
    assert time.monotonic() - t0 < 60
