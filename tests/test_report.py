import base64
import json
import shutil
import subprocess

import numpy as np
import pytest

from foscu.report import build_report, table_markdown


def _fake_run(tmp_path, tiny_phantom):
    """A run folder as the experiment leaves it, with numbers written by this test."""
    run = tmp_path / "run"
    ev = run / "evaluation"
    ev.mkdir(parents=True)
    (ev / "table1.json").write_text(
        json.dumps(
            {
                "note": "2.5D Fréchet Radiomics Distance",
                "rows": [
                    {"method": "Duo-Diffusion", "axial": 1.5, "sagittal": 2.0, "coronal": 2.5, "mean": 2.0}
                ],
            }
        )
    )
    (ev / "table2.json").write_text(
        json.dumps(
            {
                "rows": [
                    {
                        "arch": "unet",
                        "task": "binary",
                        "class": "liver",
                        "real": 0.91,
                        "real+synthetic": 0.93,
                        "improvement": 0.02,
                    }
                ],
            }
        )
    )
    (run / "label-vae").mkdir()
    (run / "label-vae" / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 6)) + "\n{broken"
    )
    shutil.copytree(tiny_phantom, run / "samples")
    (run / "experiment.json").write_text(
        json.dumps({"config": "tiny", "data": str(tiny_phantom), "timings": {"phantom": 1.0}})
    )
    return run


def test_report_is_self_contained_with_tables_and_figures(tmp_path, tiny_phantom):
    run = _fake_run(tmp_path, tiny_phantom)
    html_path, md_path = build_report(run)
    page = html_path.read_text()
    assert "Table I" in page and "Duo-Diffusion" in page and "0.930" in page
    assert "http://" not in page and "https://" not in page  # no network needed
    images = page.count("data:image/png;base64,")
    assert images >= 3  # curves, synthetic views, real vs synthetic
    md = md_path.read_text()
    assert "| unet | binary | liver |" in md and "report_files/figure_00.png" in md
    assert "not computed in this run" in md  # missing sections say so, no placeholder
    first = page.split("data:image/png;base64,")[1].split("'")[0]
    assert base64.b64decode(first)[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_table_formats_missing_values():
    assert "| a | – |" in table_markdown([{"x": "a", "y": None}])


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path, tiny_phantom):
    from PIL import Image

    run = _fake_run(tmp_path, tiny_phantom)
    html_path, _ = build_report(run)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            "--window-size=1200,1600",
            html_path.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10  # not blank
    assert (pixels < 100).mean() > 0.01  # text, tables and images drawn


def test_the_summary_says_when_samples_are_near_copies(tmp_path, tiny_phantom):
    from foscu.report import evidence_summary

    run = _fake_run(tmp_path, tiny_phantom)
    audit = {
        "threshold": 0.945,
        "percentile": 99.0,
        "near_copies": 2,
        "samples": {f"synth_000{i}": {"near_copy": i < 2} for i in range(5)},
    }
    (run / "evaluation" / "memorization.json").write_text(json.dumps(audit))
    assert "2 of 5 samples are near copies of a training image" in " ".join(evidence_summary(run, {}))
    audit["near_copies"] = 0
    (run / "evaluation" / "memorization.json").write_text(json.dumps(audit))
    assert "near copies" not in " ".join(evidence_summary(run, {}))


def test_the_training_curves_show_every_validation_key(tmp_path, monkeypatch):
    import foscu.figures_run as report

    logs = {
        "image-vae": {"loss": 0.1, "val_l1": 0.05, "val_contrast_portal_vein": 0.4, "val_l1_tumor": 0.2},
        "seg/unet-multiclass-real": {"loss": 0.5, "val_dice": 0.6, "val_dice_liver": 0.9, "lr": 1e-3},
        "label-ldm": {"loss": 0.3, "val_loss": 0.4},
    }
    for stage, record in logs.items():
        (tmp_path / stage).mkdir(parents=True)
        lines = [json.dumps({"step": s, **record}) for s in (1, 2)]
        (tmp_path / stage / "metrics.jsonl").write_text("\n".join(lines))
    shown: set[str] = set()

    def legends(fig):
        for ax in fig.axes:
            if ax.get_legend() is not None:
                shown.update(t.get_text() for t in ax.get_legend().get_texts())
        return b"png"

    monkeypatch.setattr(report, "png_bytes", legends)
    assert report.figure_training_curves(tmp_path) == b"png"
    expected = {k for record in logs.values() for k in record if k.startswith("val_") or k == "loss"}
    assert shown == expected  # every val_* key and the training loss; lr and the rest stay off


def test_report_lists_what_each_table2_cell_trained_on(tmp_path, tiny_phantom):
    run = _fake_run(tmp_path, tiny_phantom)
    table = json.loads((run / "evaluation" / "table2.json").read_text())
    cell = {"arch": "unet", "task": "multiclass", "data": "real+synthetic", "protocol": "class-masked"}
    cell |= {"seed": 1, "real_cases": 42, "synthetic_cases": 36, "steps": 1486, "best_step": 1300}
    table["cells"] = [cell | {"stopped_early": False, "val_dice": 0.61}]
    (run / "evaluation" / "table2.json").write_text(json.dumps(table))
    _, md_path = build_report(run)
    md = md_path.read_text()
    assert "Table II: what each cell trained on" in md
    assert "| unet | class-masked | 1 | 42 | 36 | 1486 | 1300 |" in md
