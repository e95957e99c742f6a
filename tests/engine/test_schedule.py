"""The learning-rate schedule: rates at given steps worked out by hand, the rates fit really uses, and exact
resume under warm-up + cosine."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from foscu.config import TrainConfig
from foscu.engine.checkpoint import read_weights
from foscu.engine.loop import fit
from foscu.engine.schedule import lr_factor, set_lr
from foscu.errors import InputError

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
from engine_toy import cfg, recipe, toy_loss  # noqa: E402


def test_the_default_is_the_constant_rate_of_before():
    train = TrainConfig(lr=2e-3, steps=10)
    assert [lr_factor(s, 10, train) for s in range(10)] == [1.0] * 10


def test_warm_up_then_cosine_by_hand():
    # lr 1, 2 warm-up steps, 7 steps in all: warm-up 1/2, 1; then steps 2..6 are cosine progress 0, 1/4,
    # 1/2, 3/4, 1 from 1 down to the floor 0.1: 0.1 + 0.9 * (1 + cos(pi p)) / 2
    train = TrainConfig(lr=1.0, steps=7, warmup_steps=2, lr_schedule="cosine", min_lr_ratio=0.1)
    expected = [
        0.5,
        1.0,
        1.0,
        0.1 + 0.45 * (1 + math.sqrt(0.5)),
        0.55,
        0.1 + 0.45 * (1 - math.sqrt(0.5)),
        0.1,
    ]
    assert [lr_factor(s, 7, train) for s in range(7)] == pytest.approx(expected)
    # warm-up then constant: 1/4, 2/4, 3/4, 1, 1, ...
    flat = TrainConfig(lr=1.0, steps=6, warmup_steps=4)
    assert [lr_factor(s, 6, flat) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1])
    # past the planned end (a resume that trains on) the rate stays at the floor
    assert lr_factor(20, 7, train) == pytest.approx(0.1)


def test_set_lr_sets_every_group():
    a, b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    opt = torch.optim.AdamW([{"params": [a]}, {"params": [b]}], lr=1.0)
    train = TrainConfig(lr=4e-3, steps=8, warmup_steps=4)
    assert set_lr(opt, 0, 8, train) == pytest.approx(1e-3)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 1e-3])


@pytest.mark.parametrize(
    "settings, needle",
    [
        ({"min_lr_ratio": 0.1}, "min_lr_ratio"),  # a constant schedule would ignore it
        ({"warmup_steps": 12}, "warmup_steps"),  # no step left after the warm-up
        ({"lr_schedule": "linear"}, "lr_schedule"),
        ({"min_lr_ratio": 1.5, "lr_schedule": "cosine"}, "min_lr_ratio"),
    ],
)
def test_schedule_settings_that_would_be_ignored_are_refused(settings, needle):
    with pytest.raises(ValueError, match=needle):
        TrainConfig(steps=12, **settings)


def test_fit_trains_at_the_scheduled_rates(tmp_path):
    # the rate of the last step before each validation, as metrics.jsonl records it
    schedule = {"warmup_steps": 3, "lr_schedule": "cosine", "min_lr_ratio": 0.0}
    train = cfg(**schedule)
    fit(tmp_path, recipe(), train, progress=False)
    logged = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in logged] == pytest.approx(
        [train.lr * lr_factor(s - 1, 12, train) for s in (3, 6, 9, 12)]
    )
    assert logged[-1]["lr"] == 0.0 and logged[0]["lr"] == train.lr


def test_resume_under_a_schedule_ends_exactly_where_an_uninterrupted_run_ends(tmp_path):
    schedule = {"warmup_steps": 4, "lr_schedule": "cosine", "min_lr_ratio": 0.05}
    fit(tmp_path / "straight", recipe(), cfg(**schedule), progress=False)
    fit(tmp_path / "constant", recipe(), cfg(), progress=False)
    calls = {"n": 0}

    def crashing(nets, batch):
        calls["n"] += 1
        if calls["n"] == 8:  # after the checkpoint at step 6, mid-decay
            raise RuntimeError("power cut")
        return toy_loss(nets, batch)

    with pytest.raises(RuntimeError, match="power cut"):
        fit(tmp_path / "cut", recipe(crashing), cfg(**schedule), progress=False)
    with pytest.raises(InputError, match="--resume"):
        fit(tmp_path / "cut", recipe(), cfg(**schedule), progress=False)
    fit(tmp_path / "cut", recipe(), cfg(**schedule), progress=False, resume=True)
    a, b, flat = (
        read_weights(tmp_path / f / "model.safetensors")[0] for f in ("straight", "cut", "constant")
    )
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert any(not torch.equal(a[key], flat[key]) for key in a)  # the schedule did change the training
