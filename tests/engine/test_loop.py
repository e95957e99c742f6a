"""The one training engine's loop: checkpoints, exact resume (also after SIGKILL), EMA, early stopping,
and 2-process torchrun on CPU."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from foscu.engine.checkpoint import load_state, read_weights
from foscu.engine.loop import StepBatches, fit
from foscu.errors import InputError

TESTS = Path(__file__).resolve().parents[1]  # engine_toy.py lives at the tests/ root
sys.path.insert(0, str(TESTS))
from engine_toy import ToySet, build, cfg, recipe, toy_loss  # noqa: E402


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return read_weights(path)[0]


def test_fit_learns_and_writes_its_files(tmp_path):
    result = fit(tmp_path, recipe(), cfg(steps=60, ema_decay=None), progress=False)
    assert result.steps == 60
    names = {p.name for p in tmp_path.iterdir()}
    assert {"model.safetensors", "train_state.pt", "metrics.jsonl", "metrics.json"} <= names
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(3, 61, 3))
    assert lines[-1]["loss"] < lines[0]["loss"] / 3  # it learns
    assert len(list(tmp_path.glob("checkpoint-*.safetensors"))) == 1  # old checkpoints are removed


def test_batches_are_a_pure_function_of_the_step():
    a = StepBatches(10, 4, seed=1, rank=0, world=1, start=0, total=9)
    b = StepBatches(10, 4, seed=1, rank=0, world=1, start=5, total=9)
    assert list(a)[5:] == list(b)
    r0 = StepBatches(10, 2, seed=1, rank=0, world=2, start=0, total=1).batch(0)
    r1 = StepBatches(10, 2, seed=1, rank=1, world=2, start=0, total=1).batch(0)
    assert not {i for i, _ in r0} & {i for i, _ in r1}  # ranks see disjoint cases


def test_resume_after_a_crash_ends_exactly_where_an_uninterrupted_run_ends(tmp_path):
    fit(tmp_path / "straight", recipe(), cfg(), progress=False)

    calls = {"n": 0}

    def crashing(nets, batch):
        calls["n"] += 1
        if calls["n"] == 8:  # after the checkpoint at step 6
            raise RuntimeError("power cut")
        return toy_loss(nets, batch)

    with pytest.raises(RuntimeError, match="power cut"):
        fit(tmp_path / "cut", recipe(crashing), cfg(), progress=False)
    assert load_state(tmp_path / "cut" / "train_state.pt")["step"] == 6
    with pytest.raises(InputError, match="--resume"):
        fit(tmp_path / "cut", recipe(), cfg(), progress=False)
    fit(tmp_path / "cut", recipe(), cfg(), progress=False, resume=True)
    a, b = (
        _weights(tmp_path / "straight" / "model.safetensors"),
        _weights(tmp_path / "cut" / "model.safetensors"),
    )
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    steps = [json.loads(x)["step"] for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 6, 9, 12]  # one uninterrupted log


def test_resume_without_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(InputError, match="nothing to resume"):
        fit(tmp_path, recipe(), cfg(), progress=False, resume=True)


def test_sigkill_mid_training_resumes_from_the_last_checkpoint(tmp_path):
    folder = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    proc = subprocess.Popen(
        [sys.executable, str(TESTS / "engine_toy.py"), str(folder), "200", "slow"], env=env
    )
    deadline = time.time() + 60
    while time.time() < deadline and not (folder / "train_state.pt").is_file():
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = load_state(folder / "train_state.pt")["step"]
    assert 3 <= step < 200
    # a kill leaves at most .tmp-* leftovers (runs.atomic_path); every other name is one the engine writes,
    # and every weight or state file under a real name is whole
    real = [p.name for p in folder.iterdir() if not p.name.startswith(".tmp-")]
    known = re.compile(r"checkpoint-\d{7}\.safetensors|train_state\.pt|metrics\.jsonl|tensorboard")
    assert real and all(known.fullmatch(name) for name in real), real
    for path in folder.glob("checkpoint-*.safetensors"):
        read_weights(path)
    assert load_state(folder / "train_state.pt")["checkpoint"] in real
    subprocess.run(
        [sys.executable, str(TESTS / "engine_toy.py"), str(folder), "200", "resume"], env=env, check=True
    )
    assert json.loads((folder / "metrics.json").read_text())["steps"] == 200


@pytest.mark.parametrize("cases, stop", [(12, 8), (24, 10)])
def test_early_stopping_counts_epochs_and_keeps_the_best_weights(tmp_path, cases, stop):
    # patience 1 epoch, best score at step 4, validation every 2 steps: 12 cases in batches of 4 are 3 steps
    # an epoch (stop at the first validation >= step 7), 24 cases 6 steps (>= step 10) -- so a real +
    # synthetic arm gets as many epochs without improvement as the real one, whatever val_every says
    scores = iter([0.5, 0.7] + [0.6] * 30)

    def validate(nets):
        return {"val_dice": next(scores)}

    toy = recipe(n=cases, validate=validate, monitor="val_dice", mode="max")
    result = fit(tmp_path, toy, cfg(steps=60, val_every=2, patience=1), progress=False)
    assert result.stopped_early and result.steps == stop and result.best == {"val_dice": 0.7}
    assert read_weights(tmp_path / "model.safetensors")[1]["step"] == 4
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["best_step"] == 4 and summary["stopped_early"] is True


def test_train_step_is_the_step_fit_takes(tmp_path):
    # benchmarks/run.py times TrainStep: the same step from the same weights gives fit's weights exactly
    from torch.utils.data import default_collate

    from foscu.engine.loop import TrainStep, _mix

    fit(tmp_path, recipe(), cfg(steps=3, ema_decay=None), progress=False)
    nets = build()
    step = TrainStep(nets, toy_loss, cfg(), torch.device("cpu"), ["net"])
    batches = StepBatches(12, 4, seed=0, rank=0, world=1, start=0, total=3)
    for s, keys in enumerate(batches):
        torch.manual_seed(_mix(0, s, 0, 7))
        step(default_collate([ToySet()[k] for k in keys]), s)
    trained = _weights(tmp_path / "model.safetensors")
    for name, value in nets["net"].state_dict().items():
        torch.testing.assert_close(value, trained[f"net.{name}"], rtol=0, atol=0)


@pytest.mark.slow
def test_two_process_torchrun_on_cpu(tmp_path):
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not on PATH")
    env = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}
    cmd = [
        torchrun,
        "--nproc_per_node=2",
        "--master_port=29517",
        str(TESTS / "engine_toy.py"),
        str(tmp_path),
        "6",
    ]
    subprocess.run(cmd, env=env, check=True, timeout=180)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [3, 6]  # one writer, not two
    assert "net.0.weight" in _weights(tmp_path / "model.safetensors")


def test_epochs_count_passes_over_the_training_set(tmp_path):
    # 12 cases, batch 4: 3 steps an epoch; 2 epochs = 6 steps whatever `steps` says
    result = fit(tmp_path, recipe(), cfg(steps=100, epochs=2), progress=False)
    assert result.steps == 6


def test_recipe_metadata_goes_into_the_weight_files(tmp_path):
    fit(tmp_path, recipe(metadata={"scale_factor": 0.25}), cfg(steps=3), progress=False)
    assert read_weights(tmp_path / "model.safetensors")[1] == {"scale_factor": 0.25, "step": 3}
    (checkpoint,) = tmp_path.glob("checkpoint-*.safetensors")
    assert read_weights(checkpoint)[1] == {"scale_factor": 0.25}
