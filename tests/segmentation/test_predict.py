"""seg predict runs the network and the image on the run's device (a GPU when there is one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from foscu.config import load_config
from foscu.data.nifti import read_nifti, write_nifti
from foscu.engine import distributed
from foscu.engine.checkpoint import save_weights
from foscu.segmentation import predict
from foscu.segmentation.networks import build_segmenter

ROI, SPACING = (32, 32, 16), (7.5, 7.5, 12.0)


@pytest.fixture
def seg_run(tmp_path):
    """An untrained unet-binary run folder written the way seg train writes one (config + weights)."""
    seg = load_config("tiny").segmentation
    folder = tmp_path / "unet-binary-real"
    folder.mkdir()
    raw = {
        "stage": "seg/unet-binary-real",
        "arch": "unet",
        "task": "binary",
        "section": seg.model_dump(mode="json"),
    }
    raw.update(roi=list(ROI), spacing=list(SPACING))
    (folder / predict.CONFIG).write_text(yaml.safe_dump(raw))
    torch.manual_seed(0)
    save_weights(folder / predict.MODEL, {predict.NET: build_segmenter("unet", "binary", seg, ROI, SPACING)})
    image = tmp_path / "images" / "case_0000.nii.gz"
    image.parent.mkdir()
    write_nifti(image, np.random.default_rng(0).random(ROI, dtype=np.float32), np.diag([*SPACING, 1.0]))
    return folder, image


def _spy(monkeypatch, seen):
    def spy(net, image, patch, sw_batch_size):
        seen.append((next(net.parameters()).device.type, image.device.type))
        return torch.zeros(1, 1, *image.shape[2:])  # background everywhere, on the CPU

    monkeypatch.setattr(predict, "sliding_window_logits", spy)


def test_predict_runs_on_the_runs_device_by_default(seg_run, tmp_path, monkeypatch):
    folder, image = seg_run
    seen: list[tuple[str, str]] = []
    _spy(monkeypatch, seen)
    # "meta" stands in for the GPU that engine.distributed would report on a GPU machine
    monkeypatch.setattr(distributed, "current", lambda: distributed.Dist(0, 1, 0, torch.device("meta")))
    written = predict.predict_cases(folder, {"case": image}, tmp_path / "out", progress=False)
    assert seen == [("meta", "meta")]  # network and image both on the run's device
    assert read_nifti(written["case"], label=True).array.shape == ROI


def test_predict_on_an_explicit_device_and_for_real_on_the_cpu(seg_run, tmp_path, monkeypatch):
    folder, image = seg_run
    net = predict.load_segmenter(predict.read_run(folder), "meta")
    assert {p.device.type for p in net.parameters()} == {"meta"}
    written = predict.predict_folder(folder, image.parent, tmp_path / "cpu", progress=False, device="cpu")
    labels = read_nifti(written["case"], label=True).array
    assert labels.shape == ROI and set(np.unique(labels)) <= {0, 1}
