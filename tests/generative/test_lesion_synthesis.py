"""Lesion synthesis on real cases: the tumor pool, edited masks (inside the liver, real volumes, seeded), the
feathered paste and the known latent kept exactly, and ``foscu lesions`` end to end at the tiny preset."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from foscu.cli import app
from foscu.errors import InputError
from foscu.generative.inpainting import compose, feather_weight
from foscu.generative.lesion_masks import TumorPool, edit_mask, tumor_components, tumor_pool
from foscu.labels import HEPATIC_VEIN, LIVER, PORTAL_VEIN, TUMOR

runner = CliRunner()
CUBE = np.ones((3, 3, 3), dtype=bool)
SPACING = (2.0, 2.0, 2.5)  # 10 uL voxels: a volume of k voxels is k / 100 mL
VOXEL_ML = 0.01


def _liver_case() -> np.ndarray:
    """A 40^3 label by hand: an ellipsoidal liver crossed by a portal vein, a hepatic vein, one 27-voxel tumor."""
    x, y, z = np.meshgrid(*[np.arange(40)] * 3, indexing="ij")
    label = np.zeros((40, 40, 40), dtype=np.int16)
    label[((x - 20) / 16) ** 2 + ((y - 20) / 13) ** 2 + ((z - 20) / 11) ** 2 < 1] = LIVER
    label[18:21, 6:34, 20] = PORTAL_VEIN
    label[8:32, 26, 14:16] = HEPATIC_VEIN
    label[12:15, 12:15, 24:27] = TUMOR
    return label


def _new_tumors(before: np.ndarray, after: np.ndarray) -> list[np.ndarray]:
    components, n = tumor_components(np.where(before == TUMOR, 0, after))
    return [components == k for k in range(1, n + 1)]


def test_tumor_pool_holds_every_component_volume_and_count():
    a = np.zeros((20, 20, 20), dtype=np.int16)
    a[1:3, 1:3, 1:3] = TUMOR  # 8 voxels
    a[10:13, 10:13, 10:11] = TUMOR  # 9 voxels, not touching the first
    b = np.zeros_like(a)  # no tumor: adds neither a volume nor a count
    c = np.zeros_like(a)
    c[5, 5, 5] = TUMOR
    pool = tumor_pool([a, b, c], SPACING)
    assert sorted(pool.volumes_ml) == pytest.approx([0.01, 0.08, 0.09])
    assert sorted(pool.counts) == [1, 2]


def test_new_tumors_lie_inside_the_liver_away_from_vessels_with_real_volumes():
    label = _liver_case()
    pool = TumorPool(volumes_ml=(0.4, 1.2, 2.5), counts=(1, 2, 3))
    vessels = np.isin(label, [PORTAL_VEIN, HEPATIC_VEIN])
    seen_kinds = set()
    for seed in range(12):
        edited, edits = edit_mask(label, SPACING, pool, np.random.default_rng(seed))
        seen_kinds |= {e["kind"] for e in edits}
        placed = [e for e in edits if "volume_ml" in e]
        assert placed and not [e for e in edits if "skipped" in e]
        new_liver = label == LIVER
        new_liver[label == TUMOR] = True  # a moved tumor leaves liver behind
        for tumor in _new_tumors(label, edited):
            grown = ndimage.binary_dilation(tumor, structure=CUBE)
            assert new_liver[grown].all()  # inside the liver, not even touching its border
            assert not (grown & vessels).any()  # one voxel away from every vessel
        for component in _new_tumors(np.zeros_like(label), edited):
            assert round(component.sum() * VOXEL_ML, 4) in {0.4, 1.2, 2.5, 0.27}  # drawn, or the moved one
        assert np.array_equal(edited[vessels], label[vessels])  # vessels untouched
        assert {e["kind"] for e in edits} <= {"added", "moved", "resized"}
    assert seen_kinds == {"added", "moved", "resized"}


def test_moved_tumor_keeps_its_volume_and_leaves_liver_behind():
    label = _liver_case()
    pool = TumorPool(volumes_ml=(1.0,), counts=(1,))
    for seed in range(40):
        edited, edits = edit_mask(label, SPACING, pool, np.random.default_rng(seed))
        if edits[0]["kind"] == "moved":
            break
    assert edits[0]["kind"] == "moved" and edits[0]["volume_ml"] == pytest.approx(0.27)
    assert (edited == TUMOR).sum() == 27
    old = label == TUMOR
    assert (edited[old & (edited != TUMOR)] == LIVER).all() and (edited[old] != TUMOR).any()


def test_same_seed_same_edit():
    label = _liver_case()
    pool = TumorPool(volumes_ml=(0.4, 1.2, 2.5), counts=(1, 2, 3))
    a, edits_a = edit_mask(label, SPACING, pool, np.random.default_rng(3))
    b, edits_b = edit_mask(label, SPACING, pool, np.random.default_rng(3))
    c, _ = edit_mask(label, SPACING, pool, np.random.default_rng(4))
    assert np.array_equal(a, b) and edits_a == edits_b
    assert not np.array_equal(a, c)


def test_feathered_paste_is_the_real_image_beyond_the_margin():
    changed = np.zeros((20, 20, 20), dtype=bool)
    changed[8:11, 8:11, 8:11] = True
    weight = feather_weight(changed, 4)
    distance = ndimage.distance_transform_edt(~changed)
    assert (weight[distance <= 1] == 1).all() and (weight[distance >= 4] == 0).all()
    ramp = weight[(distance > 1) & (distance < 4)]
    assert ((ramp > 0) & (ramp < 1)).all()
    rng = np.random.default_rng(0)
    real, generated = rng.random((2, 20, 20, 20), dtype=np.float32)
    out = compose(real, generated, weight)
    assert np.array_equal(out[distance >= 4], real[distance >= 4])  # bit for bit
    assert np.array_equal(out[changed], generated[changed])


def test_decoder_bias_is_the_trusted_voxels_error_carried_into_the_core():
    from foscu.generative.inpainting import decoder_bias

    real = np.full((12, 12, 12), 0.8, dtype=np.float32)
    recon = real - 0.15  # a decoder that darkens everything by 0.15
    core = np.zeros(real.shape, dtype=bool)
    core[4:8, 4:8, 4:8] = True
    recon[core] = 0.2  # the old content of the edited core: its error must not leak
    bias = decoder_bias(real, recon, ~core)
    np.testing.assert_allclose(bias, 0.15, atol=1e-5)


def test_inpainting_keeps_the_known_latent_outside_its_mask(tiny_run):
    import torch

    from foscu.generative.inpainting import inpaint_latent
    from foscu.generative.sampling import load_pipeline

    pipe = load_pipeline(tiny_run)
    shape = pipe.image.latent_shape
    z_known = torch.randn((1, *shape), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros((1, 1, *shape[1:]))
    mask[..., 1:3, 1:3, 1:3] = 1
    cond = torch.zeros((1, len(pipe.labels), *pipe.roi))
    cond[:, 1] = 1
    z_0 = inpaint_latent(pipe.image, z_known, mask, 5, "ddim", 3, pipe.controlnet, cond)
    outside = (mask == 0).expand_as(z_0)
    assert torch.equal(z_0[outside], z_known[outside])
    assert (z_0[~outside] - z_known[~outside]).abs().max() > 1e-3  # drawn inside


def test_inpainting_with_nothing_known_is_the_plain_sample(tiny_run):
    import torch

    from foscu.generative.inpainting import inpaint_latent
    from foscu.generative.sampling import _sample_latent, load_pipeline

    pipe = load_pipeline(tiny_run)
    shape = pipe.image.latent_shape
    cond = torch.zeros((1, len(pipe.labels), *pipe.roi))
    cond[:, 1] = 1
    everywhere = torch.ones((1, 1, *shape[1:]))
    z_0 = inpaint_latent(
        pipe.image, torch.zeros((1, *shape)), everywhere, 5, "ddim", 3, pipe.controlnet, cond
    )
    plain = _sample_latent(pipe.image, [5], 1, "ddim", 3, pipe.controlnet, cond)  # the image stream
    assert torch.allclose(z_0, plain, atol=1e-6)  # same noise as generate_batch: blend and inpaint pair up


def test_known_latent_is_noised_to_the_timestep_reached():
    import torch

    from foscu.config import SchedulerConfig
    from foscu.generative.inpainting import _noiser
    from foscu.generative.schedulers import sampling_scheduler

    cfg = SchedulerConfig(num_train_timesteps=1000)
    z_0, eps = torch.full((1, 1, 2, 2, 2), 2.0), torch.full((1, 1, 2, 2, 2), -1.0)
    rflow = _noiser(sampling_scheduler(cfg, "rflow", "rflow"), "rflow")
    assert torch.allclose(rflow(z_0, eps, 250.0), torch.full_like(z_0, 0.75 * 2.0 + 0.25 * -1.0))
    ddim = sampling_scheduler(cfg, "epsilon", "ddim")
    abar = float(ddim.alphas_cumprod[600])
    expected = abar**0.5 * 2.0 - (1 - abar) ** 0.5
    assert torch.allclose(_noiser(ddim, "ddim")(z_0, eps, 600), torch.full_like(z_0, expected))


def _read(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


@pytest.mark.parametrize("method", ["inpaint", "blend"])
def test_lesions_command_edits_training_cases_only(tiny_run, tiny_prepared, tmp_path, method):
    from foscu.export.nnunet import synthetic_cases
    from foscu.labels import LABELS
    from foscu.segmentation.train import synthetic_items

    out = tmp_path / "lesions"
    args = ["lesions", "--run", tiny_run, "--data", tiny_prepared, "--out", out, "--n-per-case", 2]
    result = runner.invoke(app, [str(a) for a in [*args, "--steps", 2, "--method", method, "--seed", 1]])
    assert result.exit_code == 0, result.output
    datalist = json.loads((tiny_prepared / "datalist.json").read_text())
    training = {e["case_id"] for e in datalist["training"]}
    held_out = {e["case_id"] for s in ("validation", "test") for e in datalist[s]}
    record = json.loads((out / "samples.json").read_text())
    assert len(record["cases"]) == 2 * len(training) and record["method"] == method
    assert {c["source"] for c in record["cases"].values()} == training
    assert not {c["source"] for c in record["cases"].values()} & held_out
    # a synthetic set for Table II and for the nnU-Net export
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 2 * len(training)
    assert len(synthetic_items([out], (32, 32, 16))) == 2 * len(training)
    assert len(synthetic_cases([out], LABELS)) == 2 * len(training)
    assert (out / "before_after.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    placed = 0
    for case_id, case in record["cases"].items():
        real = _read(tiny_prepared / "imagesTr" / f"{case['source']}_0000.nii.gz")
        real_label = _read(tiny_prepared / "labelsTr" / f"{case['source']}.nii.gz")
        image = _read(out / "imagesTr" / f"{case_id}_0000.nii.gz")
        label = _read(out / "labelsTr" / f"{case_id}.nii.gz")
        changed = label != real_label
        far = ndimage.distance_transform_edt(~changed) >= record["margin"] if changed.any() else True
        assert np.array_equal(image[far], real[far])  # the real scan, bit for bit, beyond the margin
        placed += sum("volume_ml" in e for e in case["edits"])
        for tumor in _new_tumors(real_label, label):
            assert (np.isin(real_label[tumor], [LIVER, TUMOR])).all()
    assert placed > 0


def test_lesions_same_seed_same_output(tiny_run, tiny_prepared, tmp_path):
    from foscu.generative.lesion_synthesis import synthesize_lesions

    a = synthesize_lesions(tiny_run, tiny_prepared, tmp_path / "a", seed=2, steps=2, progress=False)
    b = synthesize_lesions(tiny_run, tiny_prepared, tmp_path / "b", seed=2, steps=2, progress=False)
    for case_id in a["cases"]:
        assert a["cases"][case_id]["edits"] == b["cases"][case_id]["edits"]
        for sub, name in (("imagesTr", f"{case_id}_0000"), ("labelsTr", case_id)):
            pa, pb = (tmp_path / r / sub / f"{name}.nii.gz" for r in ("a", "b"))
            np.testing.assert_allclose(_read(pa), _read(pb), atol=1e-5)


def test_lesions_refuses_bad_input_writing_nothing(tiny_run, tiny_prepared, tmp_path):
    from foscu.generative.lesion_synthesis import synthesize_lesions

    base = ["lesions", "--run", str(tiny_run), "--data", str(tiny_prepared), "--out", str(tmp_path / "x")]
    result = runner.invoke(app, [*base, "--method", "paint"])
    assert result.exit_code == 2 and "unknown method 'paint'" in result.output
    assert not (tmp_path / "x").exists()
    with pytest.raises(InputError, match="no training case holds a tumor"):
        synthesize_lesions(tiny_run, _without_tumors(tiny_prepared, tmp_path), tmp_path / "y", progress=False)
    assert not (tmp_path / "y").exists()


def _without_tumors(prepared: Path, tmp_path: Path) -> Path:
    """A copy of the prepared set whose training labels hold no tumor (tumor voxels become liver)."""
    import shutil

    copy = tmp_path / "no-tumors"
    shutil.copytree(prepared, copy)
    for entry in json.loads((copy / "datalist.json").read_text())["training"]:
        path = copy / entry["label"]
        img = nib.load(path)
        data = np.asarray(img.dataobj).copy()
        data[data == TUMOR] = LIVER
        nib.save(nib.Nifti1Image(data, img.affine, img.header), path)
    return copy


def test_lesions_protocol_is_a_table2_row_trained_on_the_runs_lesion_set(tiny_run, tiny_prepared, tmp_path):
    """Table II's `lesions` protocol: the experiment writes RUN/lesions from the run's generator, and the
    row's segmenter trains on the real cases plus those edited cases, not on the Duo samples."""
    import shutil

    import yaml

    from foscu.config import load_config
    from foscu.errors import InputError
    from foscu.experiment import Protocol
    from foscu.runs import RunFolder
    from foscu.table2 import run_table2

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    overrides = ["segmentation.protocols=[real, lesions]", "segmentation.train.steps=2"]
    overrides += ["segmentation.train.val_every=2", "sample.steps=2", "segmentation.synthetic_fraction=1.0"]
    cfg = load_config("tiny", overrides)
    with pytest.raises(InputError, match="no finished lesion synthesis"):
        run_table2(cfg, tiny_prepared, run, None, ["unet"], ["binary"], progress=False)
    protocol = Protocol(cfg, tiny_prepared, run, progress=False)
    (step,) = [s for s in protocol.steps() if s.name == "lesion synthesis on real cases"]
    assert step.group == "sample" and step.outputs == [run / "lesions" / "samples.json"]
    step.run()
    assert step.done()
    assert (run / "lesions" / "before_after.png").is_file()
    # no Duo sample folder is given: the lesions row draws from RUN/lesions alone
    table = run_table2(cfg, tiny_prepared, run, None, ["unet"], ["binary"], progress=False)
    assert [c["data"] for c in table["cells"]] == ["real", "real+lesions"]
    assert {r["protocol"] for r in table["rows"]} == {"lesions"}
    recorded = yaml.safe_load(RunFolder(run).config("seg/unet-binary-real+lesions").read_text())
    lesion_ids = set(json.loads((run / "lesions" / "samples.json").read_text())["cases"])
    n_real = len(json.loads((tiny_prepared / "datalist.json").read_text())["training"])
    assert recorded["training_cases"] == {"real": n_real, "synthetic": n_real}
    assert recorded["plan"]["protocol"] == "lesions"
    assert recorded["synthetic"] == [str(run / "lesions")]
    assert {c.split("/")[-1] for c in recorded["synthetic_cases"]} <= lesion_ids
    without = load_config("tiny", [o for o in overrides if not o.startswith("segmentation.protocols")])
    assert not [s for s in Protocol(without, tiny_prepared, run).steps() if "lesion" in s.name]
