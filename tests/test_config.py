import pytest
import yaml

from foscu.config import PRESETS, dump_config, load_config
from foscu.errors import InputError


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load(preset):
    cfg = load_config(preset)
    assert cfg.preset == preset
    assert cfg.label_vae.autoencoder["latent_channels"] >= 1


def test_paper_preset_carries_the_papers_numbers():
    cfg = load_config("paper")
    assert cfg.image_vae.kl_weight == 1e-7 and cfg.image_vae.train.lr == 1e-6
    assert cfg.label_ldm.train.lr == 1e-5 and cfg.image_ldm.train.lr == 1e-5
    assert cfg.controlnet.train.lr == 1e-5 and cfg.controlnet.condition == "label_latent"
    assert cfg.segmentation.train.lr == 1e-4 and cfg.segmentation.train.patience == 10


def test_overrides_keep_types():
    cfg = load_config(
        "tiny",
        [
            "label_ldm.train.lr=0.5",
            "controlnet.condition=label_latent",
            "seed=7",
            "segmentation.archs=[unet, vnet]",
        ],
    )
    assert cfg.label_ldm.train.lr == 0.5 and cfg.seed == 7
    assert cfg.controlnet.condition == "label_latent"
    assert cfg.segmentation.archs == ["unet", "vnet"]


@pytest.mark.parametrize(
    "override, needle",
    [
        ("label_vae.trian.lr=1", "label_vae.trian"),
        ("controlnet.condition=magic", "controlnet.condition"),
        ("label_ldm.train.lr=-1", "label_ldm.train.lr"),
        ("seed", "key=value"),
    ],
)
def test_typos_and_bad_values_fail_naming_the_key(override, needle):
    with pytest.raises(InputError, match=needle.replace(".", r"\.")):
        load_config("tiny", [override])


def test_yaml_file_round_trip(tmp_path):
    cfg = load_config("tiny", ["seed=3"])
    path = tmp_path / "cfg.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(str(path)) == cfg
    assert yaml.safe_load(path.read_text())["seed"] == 3


def test_missing_config_file(tmp_path):
    with pytest.raises(InputError, match="no such config file"):
        load_config(str(tmp_path / "nope.yaml"))


def test_paper_preset_trains_the_papers_epochs_and_can_run_every_ablation():
    from foscu.engine.loop import total_steps
    from foscu.generative.controlnet import embedding_channels

    cfg = load_config("paper")
    # paper II-B: VAE 2000 epochs, diffusion 4000, ControlNet 5000; 504 training cases
    assert total_steps(504, cfg.image_vae.train) == 2000 * 252
    assert total_steps(504, cfg.label_ldm.train) == 4000 * 63
    assert total_steps(504, cfg.controlnet.train) == 5000 * 63
    downsamples = len(cfg.image_vae.autoencoder["channels"]) - 1
    for condition in ("label_latent", "label_downsampled", "label_fullres"):
        stage = cfg.controlnet.model_copy(update={"condition": condition})
        assert embedding_channels(stage, downsamples)  # raises if the ablation could not be built
