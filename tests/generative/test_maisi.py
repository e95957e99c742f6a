"""generative/maisi.py: a pretrained MAISI autoencoder as the image-VAE stage, on weights the tests make with
MAISI's architecture and key names (tiny channels); the real NVIDIA file is never needed."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from foscu.config import ImageAutoencoderStage, dump_config, load_config
from foscu.errors import InputError
from foscu.generative.latents import read_cache
from foscu.generative.maisi import MAISI_PUBLISHED, build_maisi, intensity_scale, network_args
from foscu.runs import RunFolder
from foscu.stages import load_stage, train_stage

# a MAISI-architecture network small enough for the CPU: three levels (4x compression), 4 latent channels
TINY_MAISI = {"num_channels": [8, 8, 8], "num_res_blocks": [1, 1, 1], "norm_num_groups": 4}


def _maisi_overrides(**extra: object) -> list[str]:
    sets = ["image_vae.pretrained=maisi", f"image_vae.maisi={json.dumps(TINY_MAISI)}"]
    return sets + [f"image_vae.{k}={json.dumps(v)}" for k, v in extra.items()]


def _stage(**extra: object) -> ImageAutoencoderStage:
    return load_config("tiny", _maisi_overrides(**extra)).image_vae


def _published_weights(tmp_path, suffix: str, wrapper: str | None = None, seed: int = 5):
    """A state dict with MAISI's key names (AutoencoderKlMaisi of the tiny channels), as MAISI ships it."""
    from monai.apps.generation.maisi.networks.autoencoderkl_maisi import AutoencoderKlMaisi

    torch.manual_seed(seed)
    args = {**MAISI_PUBLISHED, **TINY_MAISI, "norm_float16": False, "num_splits": 1}
    net = AutoencoderKlMaisi(spatial_dims=3, in_channels=1, out_channels=1, **args).eval()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    path = tmp_path / f"autoencoder{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({wrapper: state, "epoch": 273} if wrapper else state, path)
    return path, net


def _digest(path) -> str:
    digest = hashlib.sha256()
    for key, tensor in sorted(load_file(str(path)).items()):
        digest.update(key.encode() + tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_the_published_configuration_builds_and_overrides_keep_monai_names():
    stage = _stage()
    assert network_args(stage)["latent_channels"] == 4 and network_args(stage)["num_channels"] == [8, 8, 8]
    full = load_config("tiny", ["image_vae.pretrained=maisi"]).image_vae
    assert network_args(full)["num_channels"] == [64, 128, 256]  # MAISI's own, 20.9 M parameters
    assert network_args(full)["num_res_blocks"] == [2, 2, 2] and not network_args(full)["norm_float16"]
    assert full.intensity == "percentile" and stage.freeze is False
    with pytest.raises(InputError, match="unknown AutoencoderKlMaisi argument.*channelz"):
        load_config("tiny", ["image_vae.pretrained=maisi", "image_vae.maisi={channelz: [8]}"])
    with pytest.raises(InputError, match="in_channels: set by FOSCU"):
        load_config("tiny", ["image_vae.pretrained=maisi", "image_vae.maisi={in_channels: 2}"])
    with pytest.raises(InputError, match="weights: set only with pretrained: maisi"):
        load_config("tiny", ["image_vae.weights=a.pt"])
    with pytest.raises(InputError, match="freeze: a frozen autoencoder needs weights"):
        load_config("tiny", _maisi_overrides(freeze=True))


def test_the_config_round_trips(tmp_path):
    cfg = load_config("tiny", _maisi_overrides(weights="w.pt", freeze=True, intensity="minmax"))
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    again = load_config(str(path))
    assert again == cfg and again.image_vae.weights == "w.pt" and again.image_vae.intensity == "minmax"


@pytest.mark.parametrize(
    ("suffix", "wrapper"), [(".pt", None), (".pt", "unet_state_dict"), (".pth", None), (".safetensors", None)]
)
def test_published_weights_load_and_reproduce_the_outputs(tmp_path, suffix, wrapper):
    from foscu.generative.maisi import load_pretrained

    path, reference = _published_weights(tmp_path, suffix, wrapper)
    net = build_maisi(_stage())["autoencoder"].eval()
    load_pretrained(net, path)
    x = torch.rand(1, 1, 32, 32, 16)
    with torch.no_grad():
        assert torch.equal(net.encode(x)[0], reference.encode(x)[0])
        z = reference.encode(x)[0]
        assert torch.equal(net.decode(z), reference.decode(z))


def test_a_missing_file_is_refused_in_one_line_naming_it_and_its_source(tmp_path):
    from foscu.generative.maisi import load_pretrained

    with pytest.raises(InputError) as err:
        load_pretrained(build_maisi(_stage())["autoencoder"], tmp_path / "autoencoder_v1.pt")
    message = str(err.value)
    assert "autoencoder_v1.pt" in message and "NV-Generate-CT" in message and "never downloads" in message
    assert "\n" not in message


def test_a_key_mismatch_and_a_pickle_are_refused(tmp_path):
    from foscu.generative.maisi import load_pretrained

    path, reference = _published_weights(tmp_path, ".pt")
    state = reference.state_dict()
    state["encoder.extra.weight"] = state.pop("quant_conv_mu.conv.weight")
    torch.save(state, path)
    net = build_maisi(_stage())["autoencoder"]
    with pytest.raises(InputError, match=r"1 missing keys \['quant_conv_mu.conv.weight'\].*encoder.extra"):
        load_pretrained(net, path)
    wider, _ = _published_weights(tmp_path, ".safetensors")
    with pytest.raises(InputError, match="size mismatch"):
        load_pretrained(build_maisi(_stage(maisi={**TINY_MAISI, "latent_channels": 3}))["autoencoder"], wider)
    torch.save({"state": object()}, tmp_path / "pickle.pt")  # weights_only refuses arbitrary objects
    with pytest.raises(InputError, match="not a plain state dict"):
        load_pretrained(net, tmp_path / "pickle.pt")


def test_percentile_intensity_is_one_scale_in_and_out():
    ramp = torch.linspace(0, 1, 1000).reshape(1, 10, 10, 10)  # its 99.5th percentile: 0.995 (linear)
    images = torch.stack([0.4 * ramp, 1.0 * ramp, 0.8 * ramp])  # per case 0.398, 0.995, 0.796
    assert intensity_scale(images, "minmax") == 1.0
    assert intensity_scale(images, "percentile") == pytest.approx(0.8 * 0.995, abs=1e-6)  # their median
    plain, scaled = build_maisi(_stage(), 1.0)["autoencoder"], build_maisi(_stage(), 0.5)["autoencoder"]
    scaled.load_state_dict(plain.state_dict())
    x = torch.rand(1, 1, 32, 32, 16)
    with torch.no_grad():
        assert torch.allclose(scaled.encode(x)[0], plain.encode(x / 0.5)[0])
        z = plain.encode(x)[0]
        assert torch.allclose(scaled.decode(z), plain.decode(z) * 0.5)


def test_frozen_weights_stay_bit_identical_and_the_ldm_and_controlnet_train_on_their_latents(
    tiny_prepared, tmp_path
):
    weights, _ = _published_weights(tmp_path, ".pt", "unet_state_dict")
    cfg = load_config("tiny", _maisi_overrides(weights=str(weights), freeze=True))
    # MAISI downsamples twice: the full-resolution conditioning embedding needs three levels
    controlnet = cfg.controlnet.model_copy(update={"conditioning_embedding_num_channels": [8, 8, 8]})
    cfg = cfg.model_copy(update={"controlnet": controlnet})
    run = tmp_path / "run"
    result = train_stage("image-vae", cfg, tiny_prepared, run, progress=False)
    assert result.steps == 0 and "val_l1" in result.last
    folder = RunFolder(run).stage("image-vae")
    stored = load_file(str(folder / "model.safetensors"))
    published = torch.load(weights, weights_only=True)["unet_state_dict"]
    assert set(stored) == {f"autoencoder.{k}" for k in published}
    assert all(torch.equal(stored[f"autoencoder.{k}"], v) for k, v in published.items())
    info = yaml.safe_load((folder / "config.yaml").read_text())
    assert info["latent_channels"] == 4 and info["downsamples"] == 2 and info["latent_shape"] == [8, 8, 4]
    assert info["section"]["intensity"] == "percentile" and 0 < info["intensity_scale"] <= 1
    assert info["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert json.loads((folder / "metrics.json").read_text())["frozen"] is True
    nets, _, _ = load_stage(RunFolder(run), "image-vae")  # rebuilt from its own folder alone
    assert nets["autoencoder"].intensity_scale == info["intensity_scale"]
    train_stage("image-ldm", cfg, tiny_prepared, run, progress=False)
    cache, meta = read_cache(RunFolder(run).latents("image"))
    assert tuple(cache["training"]["mean"].shape[1:]) == (4, 8, 8, 4) and meta["scale_factor"] > 0
    assert RunFolder(run).is_trained("image-ldm")
    train_stage("controlnet", cfg, tiny_prepared, run, progress=False)
    assert yaml.safe_load(RunFolder(run).config("controlnet").read_text())["latent_channels"] == 4


def test_fine_tuning_changes_the_loaded_weights(tiny_prepared, tmp_path):
    weights, _ = _published_weights(tmp_path, ".safetensors")
    cfg = load_config("tiny", _maisi_overrides(weights=str(weights)))
    result = train_stage("image-vae", cfg, tiny_prepared, tmp_path / "run", progress=False)
    assert result.steps == cfg.image_vae.train.steps
    stored = load_file(str(RunFolder(tmp_path / "run").model("image-vae")))
    published = load_file(str(weights))
    assert any(not torch.equal(stored[f"autoencoder.{k}"], v) for k, v in published.items())


def test_a_missing_weight_file_leaves_the_run_unwritten(tiny_prepared, tmp_path):
    cfg = load_config("tiny", _maisi_overrides(weights=str(tmp_path / "autoencoder_v1.pt")))
    with pytest.raises(InputError, match="autoencoder_v1.pt: no such weight file"):
        train_stage("image-vae", cfg, tiny_prepared, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "image-vae").exists()
