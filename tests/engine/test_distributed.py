"""torchrun support outside torchrun: one process on the CPU, no process group, and the collective helpers
as identities. (Two processes under torchrun: tests/engine/test_loop.py and tests/system/test_end_to_end.py.)"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from foscu.engine import distributed


@pytest.fixture
def one_process(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_without_torchrun_a_run_is_rank_0_of_1_on_the_cpu(one_process):
    run = distributed.setup()
    assert run == distributed.Dist(0, 1, 0, torch.device("cpu")) and run.is_main
    assert not dist.is_initialized()  # no process group for one process
    assert distributed.current() == run
    assert not distributed.Dist(2, 4, 0, torch.device("cpu")).is_main  # first on the second node: not rank 0


def test_the_collective_helpers_are_identities_in_one_process(one_process):
    values = {"val_dice": 0.75, "loss": 0.125}
    assert distributed.all_mean(values, torch.device("cpu")) == values
    assert distributed.all_mean({}, torch.device("cpu")) == {}
    payload = {"cases": ["a", "b"]}
    assert distributed.broadcast_object(payload) is payload
    distributed.barrier()  # returns at once


def test_the_local_rank_picks_the_gpu(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert distributed.current() == distributed.Dist(0, 1, 3, torch.device("cuda", 3))
