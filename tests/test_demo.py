"""foscu demo: phantom, prepare, every stage, the experiment and the report, end to end at the tiny size."""

from __future__ import annotations

import json


def test_demo_runs_end_to_end_on_a_tiny_phantom(tmp_path):
    from foscu.demo import run_demo

    report = run_demo(
        tmp_path / "demo",
        "tiny",
        ["segmentation.archs=[unet]", "sample.n=2", "experiment.ablation=false"],
        cases=6,
        shape=(32, 32, 16),
        spacing=(7.5, 7.5, 12.0),
        roi=(32, 32, 16),
        progress=False,
    )
    assert report == tmp_path / "demo" / "run" / "report.html" and report.is_file()
    timings = json.loads((tmp_path / "demo" / "run" / "experiment.json").read_text())["timings"]
    assert {"phantom", "prepare", "train label-vae", "report"} <= set(timings)
