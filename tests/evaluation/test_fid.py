"""2.5D Fréchet distances: plane slices, FRD features, a feature network's distance, the bootstrap, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from test_feature_nets import random_weights
from typer.testing import CliRunner

from foscu.cli import app
from foscu.errors import InputError
from foscu.evaluation.fid import fid_25d, plane_slices


@pytest.fixture(scope="module")
def tiny_volumes() -> list[np.ndarray]:
    """Three 32 x 32 x 16 phantom images scaled to [0, 1]."""
    from foscu.data.phantom import generate_case

    volumes = [generate_case(i, seed=5, shape=(32, 32, 16), spacing=(7.5, 7.5, 12.0)).image for i in range(3)]
    return [(v - v.min()) / (v.max() - v.min()) for v in volumes]


def test_plane_slices_orientation_centre_and_stride() -> None:
    volume = np.arange(8 * 5 * 4, dtype=np.float32).reshape(8, 5, 4)  # (X, Y, Z)
    axial = plane_slices(volume, "axial")
    assert axial.shape == (4, 8, 5) and np.array_equal(axial[3], volume[:, :, 3])
    sagittal = plane_slices(volume, "sagittal", slice_stride=2, central_fraction=0.5)
    # X = 8, fraction 0.5 -> slices int(0.25 * 8) = 2 .. int(0.75 * 8) = 6, every 2nd -> x = 2, 4
    assert sagittal.shape == (2, 5, 4) and np.array_equal(sagittal[1], volume[4])
    # Y = 5 at 0.1: int(2.25) = 2 .. int(2.75) = 2 holds nothing, so the middle slice y = 2 is kept
    coronal = plane_slices(volume, "coronal", central_fraction=0.1)
    assert coronal.shape == (1, 8, 4) and np.array_equal(coronal[0], volume[:, 2, :])


def test_frd_identical_sets_give_zero_and_per_plane_counts(tiny_volumes: list[np.ndarray]) -> None:
    result = fid_25d(tiny_volumes, tiny_volumes, slice_stride=2, central_fraction=0.5)
    assert result["metric"] == "FRD" and result["features"] == "frd" and "Not an FID" in result["note"]
    for plane in ("axial", "coronal", "sagittal", "mean"):
        assert result[plane] == pytest.approx(0.0, abs=1e-8)
    # Z = 16 at 0.5 -> slices 4..12 step 2 = 4 a volume; X, Y = 32 -> 8..24 step 2 = 8 a volume; 3 volumes
    assert result["slices_per_plane"] == {
        "axial": {"real": 12, "fake": 12},
        "coronal": {"real": 24, "fake": 24},
        "sagittal": {"real": 24, "fake": 24},
    }
    assert result["n_real"] == result["n_fake"] == 3


def test_frd_grows_with_degradation(tiny_volumes: list[np.ndarray]) -> None:
    rng = np.random.default_rng(0)

    def noisy(level: float) -> list[np.ndarray]:
        return [np.clip(v + rng.normal(0, level, v.shape), 0, 1).astype(np.float32) for v in tiny_volumes]

    reference = noisy(0.02)
    same_level = fid_25d(reference, noisy(0.02))["mean"]  # fresh noise, same level
    noisier = fid_25d(reference, noisy(0.05))["mean"]
    much_noisier = fid_25d(reference, noisy(0.15))["mean"]
    blurred = fid_25d(reference, [ndimage.gaussian_filter(v, 1.0) for v in reference])["mean"]
    assert same_level < noisier < much_noisier
    assert 5 * same_level < blurred


def test_fid_25d_scales_volumes_outside_unit_range(tiny_volumes: list[np.ndarray]) -> None:
    scaled = [300.0 * v + 20.0 for v in tiny_volumes]  # min-max brings these back to the originals
    assert fid_25d(tiny_volumes, scaled, central_fraction=0.5)["mean"] == pytest.approx(0.0, abs=1e-6)


def test_fid_25d_refuses_bad_settings_and_shapes(tiny_volumes: list[np.ndarray]) -> None:
    with pytest.raises(InputError, match="central-fraction"):
        fid_25d(tiny_volumes, tiny_volumes, central_fraction=0.0)
    with pytest.raises(InputError, match="frd uses no network weights"):
        fid_25d(tiny_volumes, tiny_volumes, weights=Path("x.pth"))
    with pytest.raises(InputError, match="^fake: volume 0 has shape"):
        fid_25d(tiny_volumes, [tiny_volumes[0][:, :, :8]])


def test_fid_25d_with_a_network_is_labelled_fid(tmp_path: Path, tiny_volumes: list[np.ndarray]) -> None:
    weights = random_weights("radimagenet", tmp_path / "resnet.pth")
    pair = tiny_volumes[:2]
    result = fid_25d(pair, pair[::-1], "radimagenet", slice_stride=8, central_fraction=0.25, weights=weights)
    assert (
        result["metric"] == "FID"
        and result["weights"] == str(weights)
        and len(result["weights_sha256"]) == 64
    )
    assert result["mean"] == pytest.approx(0.0, abs=1e-3)  # same volumes in another order: same slice set


def _write_volumes(folder: Path, volumes: list[np.ndarray]) -> Path:
    from foscu.data.layout import image_path
    from foscu.data.nifti import write_nifti

    for index, volume in enumerate(volumes):
        write_nifti(image_path(folder, f"case_{index:03d}"), volume, np.diag([7.5, 7.5, 12.0, 1.0]))
    return folder


def test_cli_evaluate_fid(tmp_path: Path, tiny_volumes: list[np.ndarray]) -> None:
    real = _write_volumes(tmp_path / "real", tiny_volumes[:2])
    fake = _write_volumes(tmp_path / "fake", [ndimage.gaussian_filter(v, 1.0) for v in tiny_volumes[:2]])
    out = tmp_path / "fid.json"
    args = [
        "evaluate",
        "fid",
        "--real",
        str(real),
        "--fake",
        str(fake),
        "--out",
        str(out),
        "--slice-stride",
        "2",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert saved["metric"] == "FRD" and saved["real"] == str(real) and saved["mean"] > 0
    assert saved["mean"] == pytest.approx(np.mean([saved[p] for p in ("axial", "coronal", "sagittal")]))

    empty = tmp_path / "empty"
    empty.mkdir()
    out_2 = tmp_path / "fid_2.json"
    result = CliRunner().invoke(
        app, ["evaluate", "fid", "--real", str(real), "--fake", str(empty), "--out", str(out_2)]
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {empty}: no images (expected imagesTr/<case>_0000.nii.gz or *.nii.gz)"
    ]
    assert not out_2.exists()

    small = _write_volumes(tmp_path / "small", [v[:, :, :8] for v in tiny_volumes[:2]])
    result = CliRunner().invoke(
        app, ["evaluate", "fid", "--real", str(real), "--fake", str(small), "--out", str(out_2)]
    )
    assert result.exit_code == 2 and result.stderr.startswith(f"error: {small}: volumes have shape")
    assert not out_2.exists()


class _SpyNet:
    """A feature network stand-in on a device: records where its inputs were, returns CPU features."""

    def __init__(self, device: object) -> None:
        import torch

        self.weight = torch.zeros(1, device=device)
        self.seen: list[str] = []
        self.generator = torch.Generator().manual_seed(0)

    def parameters(self):
        return iter([self.weight])

    def __call__(self, batch):
        import torch

        self.seen.append(batch.device.type)
        return torch.randn(len(batch), 4, generator=self.generator)


def test_fid_25d_runs_the_network_on_the_runs_device_by_default(
    tmp_path: Path, tiny_volumes: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from foscu.engine import distributed
    from foscu.evaluation import feature_nets

    weights = tmp_path / "w.pth"
    weights.write_bytes(b"stand-in")
    asked: list[object] = []
    nets: list[_SpyNet] = []

    def spy_load(name, weights_arg=None, download=False, device=None):
        asked.append(device)
        nets.append(_SpyNet(device))
        return nets[-1], weights

    monkeypatch.setattr(feature_nets, "load_feature_net", spy_load)
    monkeypatch.setattr(distributed, "current", lambda: distributed.Dist(0, 1, 0, torch.device("meta")))
    result = fid_25d(tiny_volumes[:2], tiny_volumes[1:], "inception", slice_stride=4)
    assert asked == [torch.device("meta")]  # the run's device, as engine.distributed reports it
    assert nets[0].seen and set(nets[0].seen) == {"meta"}  # every batch went to the network's device
    assert np.isfinite(result["mean"])
    fid_25d(tiny_volumes[:2], tiny_volumes[1:], "inception", slice_stride=4, device="cpu")
    assert asked[-1] == torch.device("cpu") and set(nets[-1].seen) == {"cpu"}


def test_real_features_computed_once_for_many_fake_sets(
    tiny_volumes: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    from foscu.evaluation import fid

    real, fakes = (
        tiny_volumes[:2],
        [tiny_volumes[1:], [ndimage.gaussian_filter(v, 1.0) for v in tiny_volumes]],
    )
    direct = [fid.fid_25d(real, fake, slice_stride=2) for fake in fakes]
    computed = fid.set_features(real, slice_stride=2)
    assert computed.n_volumes == 2 and computed.shape == real[0].shape
    seen: list[int] = []
    original = fid.radiomics_features
    monkeypatch.setattr(fid, "radiomics_features", lambda s: seen.append(len(s)) or original(s))
    reused = [fid.fid_25d(computed, fake, slice_stride=2) for fake in fakes]
    assert reused == direct  # same numbers as computing the real set each time
    per_volume = sum(len(fid.plane_slices(real[0], p, 2)) for p in fid.PLANES)
    assert sum(seen) == per_volume * sum(len(f) for f in fakes)  # only the fake volumes' slices
    with pytest.raises(ValueError, match="computed with"):
        fid.fid_25d(computed, fakes[0], slice_stride=1)
    with pytest.raises(InputError, match="has shape"):
        fid.fid_25d(computed, [v[:, :, :8] for v in fakes[0]], slice_stride=2)


def test_bootstrap_interval_over_synthetic_volumes(
    tiny_volumes: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    from foscu.evaluation import fid

    seen: list[int] = []
    original = fid.radiomics_features
    monkeypatch.setattr(fid, "radiomics_features", lambda s: seen.append(len(s)) or original(s))
    real = fid.set_features(tiny_volumes, slice_stride=2)
    seen.clear()
    same = fid_25d(real, tiny_volumes, slice_stride=2, bootstrap=200, bootstrap_seed=1)
    per_set = sum(seen)
    # 3 volumes: 6 of the 27 equally likely resamples are permutations of the real set, distance 0
    assert same["mean_low"] == pytest.approx(0.0, abs=1e-8)
    assert same["mean_low"] <= same["mean"] <= same["mean_high"] and same["mean_high"] > 0
    assert same["bootstrap"]["resamples"] == 200 and same["bootstrap"]["seed"] == 1
    assert per_set == sum(len(fid.plane_slices(v, p, 2)) for v in tiny_volumes for p in fid.PLANES)
    blurred = [ndimage.gaussian_filter(v, 1.5) for v in tiny_volumes]
    seen.clear()
    different = fid_25d(real, blurred, slice_stride=2, bootstrap=200, bootstrap_seed=1)
    assert sum(seen) == per_set  # resampling reuses the per-volume features: no feature is recomputed
    assert different["mean_low"] > same["mean_high"]
    assert different["mean_low"] <= different["mean"] <= different["mean_high"]
    again = fid_25d(real, blurred, slice_stride=2, bootstrap=200, bootstrap_seed=1)
    assert (again["mean_low"], again["mean_high"]) == (different["mean_low"], different["mean_high"])
    other_seed = fid_25d(real, blurred, slice_stride=2, bootstrap=200, bootstrap_seed=2)
    assert (other_seed["mean_low"], other_seed["mean_high"]) != (
        different["mean_low"],
        different["mean_high"],
    )
    assert "mean_low" not in fid_25d(real, blurred, slice_stride=2)  # bootstrap 0: no interval
    with pytest.raises(InputError, match="bootstrap"):
        fid_25d(real, blurred, slice_stride=2, bootstrap=-1)


def test_one_bootstrap_resample_is_the_distance_of_the_drawn_volumes(tiny_volumes: list[np.ndarray]) -> None:
    fake = [tiny_volumes[0], ndimage.gaussian_filter(tiny_volumes[1], 1.0), tiny_volumes[2] ** 2]
    one = fid_25d(tiny_volumes, fake, slice_stride=2, bootstrap=1, bootstrap_seed=7)
    drawn = np.random.default_rng(7).integers(0, 3, size=(1, 3))[0]
    assert len(set(drawn.tolist())) < 3  # a real resample: some volume repeats (true for this seed)
    by_hand = fid_25d(tiny_volumes, [fake[i] for i in drawn], slice_stride=2)["mean"]
    assert one["mean_low"] == pytest.approx(by_hand, rel=1e-6)
    assert one["mean_high"] == pytest.approx(by_hand, rel=1e-6)


def test_paper_ordering_and_separation() -> None:
    from foscu.evaluation.fid import paper_ordering

    duo = {"mean": 1.0, "mean_low": 0.8, "mean_high": 1.2}
    vae = {"mean": 2.0, "mean_low": 1.1, "mean_high": 2.5}
    vq = {"mean": 4.0, "mean_low": 3.0, "mean_high": 5.0}
    verdict = paper_ordering(duo, vae, vq)
    assert verdict["holds"] is True
    assert verdict["separated"] == {
        "Duo-Diffusion < 3D-LDM w/ VAE": False,  # 1.2 > 1.1: the intervals overlap
        "3D-LDM w/ VAE < 3D-LDM w/ VQ-VAE": True,  # 2.5 < 3.0
    }
    assert "holds" in verdict["text"] and "overlap" in verdict["text"]
    swapped = paper_ordering(vq, vae, duo)
    assert swapped["holds"] is False and "does not hold" in swapped["text"]
    assert "the other way" in swapped["text"]
    assert paper_ordering(*({"mean": m} for m in (1.0, 1.0, 2.0)))["separated"] == {
        "Duo-Diffusion < 3D-LDM w/ VAE": None,
        "3D-LDM w/ VAE < 3D-LDM w/ VQ-VAE": None,
    }
    assert paper_ordering(*({"mean": m} for m in (1.0, 2.0, 2.0)))["holds"] is False  # VAE < VQ-VAE strictly
