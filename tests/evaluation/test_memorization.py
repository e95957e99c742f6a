"""The memorization audit: images against the held-out threshold (sharp or decoded), labels by liver overlap."""

import numpy as np
import pytest

from foscu.evaluation.memorization import joined, label_audit, memorization_audit
from foscu.labels import LIVER


def _smooth_volume(seed, shape=(32, 32, 16)):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    v = ndimage.gaussian_filter(rng.random(shape), 2.0)
    return ((v - v.min()) / (v.max() - v.min())).astype(np.float32)


def test_memorization_flags_a_near_copy_only():
    real = {f"r{i}": _smooth_volume(i) for i in range(5)}
    held_out = {f"h{i}": _smooth_volume(50 + i) for i in range(20)}
    rng = np.random.default_rng(9)
    copy = real["r3"] + rng.normal(0, 0.01, real["r3"].shape).astype(np.float32)
    synthetic = {"leak": copy, "novel": _smooth_volume(100)}
    audit = memorization_audit(synthetic, real, held_out)
    assert audit["samples"]["leak"]["nearest_real_case"] == "r3"
    assert audit["samples"]["leak"]["near_copy"] is True
    assert audit["samples"]["novel"]["near_copy"] is False
    assert audit["near_copies"] == 1
    assert audit["percentile"] == 99.0 and "99th percentile of held-out" in audit["method"]


def test_memorization_threshold_is_a_held_out_percentile_worked_by_hand():
    """Threshold = 99th percentile (linear) of each held-out case's nearest-training correlation."""
    a, b, c = _smooth_volume(0), _smooth_volume(1), _smooth_volume(2)
    real = {"a": a, "b": b}
    held_out = {"near_a": a + 0.3 * c, "c": c, "b_like": b + 0.5 * c}
    from foscu.evaluation.memorization import _standardise

    def corr(x, y):
        return float(_standardise(x, 2) @ _standardise(y, 2))

    nn = sorted(max(corr(h, a), corr(h, b)) for h in held_out.values())
    expected = nn[1] + 0.98 * (nn[2] - nn[1])  # numpy's linear rule: rank 0.99 * (3 - 1) = 1.98
    audit = memorization_audit({}, real, held_out)
    assert audit["threshold"] == pytest.approx(expected)
    assert audit["held_out_nearest_training"]["max"] == pytest.approx(nn[2])
    assert memorization_audit({}, real, held_out, percentile=100)["threshold"] == pytest.approx(nn[2])


def test_one_near_duplicate_pair_of_patients_does_not_disable_the_audit():
    """Two training scans of one patient correlate ~1; the old max-of-real rule then flagged nothing."""
    real = {f"r{i}": _smooth_volume(i) for i in range(6)}
    rng = np.random.default_rng(1)
    real["r0_rescan"] = real["r0"] + rng.normal(0, 0.002, real["r0"].shape).astype(np.float32)
    held_out = {f"h{i}": _smooth_volume(200 + i) for i in range(20)}
    leak = real["r3"] + rng.normal(0, 0.05, real["r3"].shape).astype(np.float32)
    audit = memorization_audit({"leak": leak, "novel": _smooth_volume(300)}, real, held_out)
    assert audit["samples"]["leak"]["correlation"] < 0.999  # less close than the rescan pair ...
    assert audit["samples"]["leak"]["near_copy"] is True  # ... and still flagged
    assert audit["samples"]["novel"]["near_copy"] is False


def test_memorization_needs_training_and_held_out_cases():
    with pytest.raises(ValueError, match="held-out"):
        memorization_audit({"s": _smooth_volume(0)}, {"r": _smooth_volume(1)}, {})
    with pytest.raises(ValueError, match="training"):
        memorization_audit({"s": _smooth_volume(0)}, {}, {"h": _smooth_volume(1)})
    with pytest.raises(ValueError, match="percentile"):
        memorization_audit({}, {"r": _smooth_volume(1)}, {"h": _smooth_volume(2)}, percentile=0)


def _toy_case(seed, common, shape=(32, 32, 16)):
    """A patient: shared anatomy + its own smooth structure + scanner texture no decoder keeps."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    structure = ndimage.gaussian_filter(rng.random(shape), 2.0) * 6
    return (common + structure + rng.normal(0, 0.3, shape)).astype(np.float32)


def _decode(volume):
    from scipy import ndimage

    return ndimage.gaussian_filter(volume, 1.5).astype(np.float32)  # a decoder's smoothness


def test_decoded_samples_are_judged_against_decoded_held_out_images_not_sharp_ones():
    """Smooth novel samples pass the sharp images' threshold (flagged) but not the decoded ones'; a copy
    fails both."""
    from scipy import ndimage

    common = ndimage.gaussian_filter(np.random.default_rng(0).random((32, 32, 16)), 4.0) * 8
    train = {f"r{i}": _toy_case(i, common) for i in range(6)}
    held = {f"h{i}": _toy_case(100 + i, common) for i in range(12)}
    synthetic = {f"novel{i}": _decode(_toy_case(200 + i, common)) for i in range(6)}
    synthetic["copy"] = _decode(train["r2"])
    decoded = {k: _decode(v) for k, v in held.items()}
    audit = memorization_audit(synthetic, train, held, held_out_decoded=decoded)
    assert audit["calibration"] == "image-VAE reconstructions of the held-out cases"
    assert audit["threshold"] > audit["sharp"]["threshold"]  # decodes correlate more with their neighbours
    assert audit["sharp"]["near_copies"] >= 3  # the sharp bar flags novel smooth samples ...
    assert audit["near_copies"] == 1 and audit["samples"]["copy"]["near_copy"]  # ... the decoded one the copy
    assert audit["samples"]["copy"]["nearest_real_case"] == "r2"
    sharp_only = memorization_audit(synthetic, train, held)
    assert sharp_only["threshold"] == pytest.approx(audit["sharp"]["threshold"])
    assert sharp_only["calibration"] == "held-out real images" and "sharp" not in sharp_only


def _liver(rows, cols):
    label = np.zeros((8, 8, 2), np.uint8)
    label[rows, cols] = LIVER
    return label


def test_the_label_check_flags_a_copied_liver_and_counts_agreement_with_the_image_audit():
    training = {"a": _liver(slice(0, 4), slice(0, 8)), "b": _liver(slice(4, 8), slice(0, 4))}
    # held-out best Dice: 2 x 24 / (32 + 24) = 0.857 (rows 0-2 against a) and 2 x 12 / (16 + 12) = 0.857
    held = {"h1": _liver(slice(0, 3), slice(0, 8)), "h2": _liver(slice(4, 7), slice(0, 4))}
    synthetic = {"copy": training["b"].copy(), "novel": _liver(slice(2, 6), slice(4, 8))}
    labels = label_audit(synthetic, training, held)
    assert labels["threshold"] == pytest.approx(6 / 7)
    assert labels["samples"]["copy"] == {
        "label_nearest_case": "b",
        "liver_dice": 1.0,
        "label_near_copy": True,
    }
    assert not labels["samples"]["novel"]["label_near_copy"] and labels["near_copies"] == 1
    image = {"samples": {"copy": {"near_copy": False}, "novel": {"near_copy": False}}}
    both = joined(image, labels)
    assert both["agreement"] == {"both": 0, "image_only": 0, "label_only": 1, "neither": 1}
    assert both["samples"]["copy"]["liver_dice"] == 1.0 and both["labels"]["near_copies"] == 1
    assert "samples" not in both["labels"]


def test_the_experiment_audit_calibrates_on_reconstructions_and_checks_labels(
    tiny_run, tiny_prepared, tmp_path
):
    """Evidence's audit step on the tiny run: the threshold from the image VAE's held-out reconstructions,
    the sharp one beside it, and every sample's label overlap."""
    import json
    import shutil

    from foscu.config import load_config
    from foscu.data.prepare import read_prepared
    from foscu.evaluation.fid import read_volumes
    from foscu.evidence import Evidence
    from foscu.generative.generate import generate
    from foscu.runs import RunFolder

    run = RunFolder(tmp_path / "run")
    shutil.copytree(tiny_run, run.root)
    generate(run.root, 3, run.samples, "ddim", 2, seed=1, progress=False)
    prepared = read_prepared(tiny_prepared)
    evidence = Evidence(load_config("tiny"), tiny_prepared, prepared, run, progress=False)
    evidence._memorization(read_volumes(run.samples))
    audit = json.loads(run.evidence("memorization").read_text())
    held = [*prepared.datalist["validation"], *prepared.datalist["test"]]
    assert audit["calibration"] == "image-VAE reconstructions of the held-out cases"
    assert (
        audit["held_out_nearest_training"]["n"] == len(held) == audit["labels"]["held_out_best_training"]["n"]
    )
    assert audit["threshold"] != audit["sharp"]["threshold"]
    assert set(audit["samples"]) == {"synth_0000", "synth_0001", "synth_0002"}
    for row in audit["samples"].values():
        assert {"near_copy", "near_copy_sharp", "label_near_copy", "liver_dice", "label_nearest_case"} <= set(
            row
        )
    assert sum(audit["agreement"].values()) == 3
