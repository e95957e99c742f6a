"""benchmarks/compare_runs.py: two runs are the same when weights, evidence and samples are, whatever the
wall times and folders; one changed tensor makes them differ."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from foscu.data.layout import image_path, label_path
from foscu.data.nifti import write_nifti
from foscu.engine.checkpoint import save_weights

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _run(root: Path) -> Path:
    run = root / "run"
    torch.manual_seed(0)
    save_weights(run / "label-vae" / "model.safetensors", {"autoencoder": torch.nn.Linear(3, 2)})
    (run / "evaluation").mkdir(parents=True)
    record = {"rows": [{"dice": 0.9, "seconds": 12.0}], "images": str(root / "prepared")}
    (run / "evaluation" / "ladder.json").write_text(json.dumps(record))
    volume = np.random.default_rng(0).random((8, 8, 8), dtype=np.float32)
    write_nifti(image_path(run / "samples", "synth_0000"), volume, np.eye(4))
    write_nifti(
        label_path(run / "samples", "synth_0000"), (volume > 0.5).astype(np.uint8), np.eye(4), label=True
    )
    return run


def test_same_outputs_in_other_folders_with_other_times_compare_equal_and_a_changed_tensor_does_not(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("compare_runs", None)
    import compare_runs

    a = _run(tmp_path / "a")
    b = _run(tmp_path / "b")
    record = json.loads((b / "evaluation" / "ladder.json").read_text())
    record["rows"][0]["seconds"] = 99.0
    (b / "evaluation" / "ladder.json").write_text(json.dumps(record))
    assert compare_runs.main(a, b) == 0
    assert "DIFFERENT" not in capsys.readouterr().out
    record["rows"][0]["dice"] = 0.8
    (b / "evaluation" / "ladder.json").write_text(json.dumps(record))
    assert compare_runs.main(a, b) == 1
    assert "DIFFERENT evaluation/ladder.json" in capsys.readouterr().out
    shutil.rmtree(b / "label-vae")
    save_weights(b / "label-vae" / "model.safetensors", {"autoencoder": torch.nn.Linear(3, 2)})  # new init
    assert compare_runs.main(a, b) == 1
    assert "DIFFERENT weights label-vae" in capsys.readouterr().out
