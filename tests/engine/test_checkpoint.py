"""Weight files and training state: safe loading (a hostile pickle is refused and never runs), metadata round
trip, and a mismatched network refused."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import pytest
import torch

from foscu.engine.checkpoint import load_weights, save_weights
from foscu.engine.loop import fit
from foscu.errors import InputError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # engine_toy.py lives at the tests/ root
from engine_toy import build, cfg, recipe  # noqa: E402


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {_Payload.marker}",))


def test_hostile_pickles_are_refused_and_never_run(tmp_path):
    _Payload.marker = tmp_path / "pwned"
    fit(tmp_path / "run", recipe(), cfg(steps=3), progress=False)
    with open(tmp_path / "run" / "train_state.pt", "wb") as handle:
        pickle.dump({"step": _Payload()}, handle)
    with pytest.raises(InputError, match="refused"):
        fit(tmp_path / "run", recipe(), cfg(steps=6), progress=False, resume=True)
    torch.save({"net.0.weight": _Payload()}, tmp_path / "model.safetensors")  # a pickle under a safe name
    with pytest.raises(InputError, match="safetensors"):
        load_weights(tmp_path / "model.safetensors", build())
    assert not _Payload.marker.exists()


def test_weights_round_trip_with_metadata_and_mismatch_is_refused(tmp_path):
    nets = build()
    save_weights(tmp_path / "w.safetensors", nets, {"scale_factor": 0.25})
    fresh = {"net": torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))}
    assert load_weights(tmp_path / "w.safetensors", fresh) == {"scale_factor": 0.25}
    torch.testing.assert_close(fresh["net"][0].weight, nets["net"][0].weight)
    wrong = {"net": torch.nn.Sequential(torch.nn.Linear(3, 9), torch.nn.Tanh(), torch.nn.Linear(9, 1))}
    with pytest.raises(InputError, match="do not fit"):
        load_weights(tmp_path / "w.safetensors", wrong)
