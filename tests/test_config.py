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
    for condition in ("label_latent", "label_downsampled", "label_fractions", "label_fullres"):
        stage = cfg.controlnet.model_copy(update={"condition": condition})
        assert embedding_channels(stage, downsamples)  # raises if the ablation could not be built


def test_paper_preset_uses_pytorch_adamw_default_weight_decay_for_generative_stages():
    # paper: "the AdamW optimizer from PyTorch" for every stage, whose default weight_decay is 0.01
    import torch

    default = torch.optim.AdamW([torch.zeros(1, requires_grad=True)]).defaults["weight_decay"]
    cfg = load_config("paper")
    for name in ("label_vae", "image_vae", "vqvae", "label_ldm", "image_ldm", "vqvae_ldm", "controlnet"):
        assert getattr(cfg, name).train.weight_decay == default == 0.01, name


@pytest.mark.parametrize(
    "override, needles",
    [
        ("label_vae.reconstruction=l2", ["label_vae", "reconstruction", "cross-entropy"]),
        ("image_ldm.train.patience=3", ["image_ldm", "train.patience"]),
        ("label_vae.train.patience=3", ["label_vae", "train.patience"]),
        ("controlnet.train.patience=3", ["controlnet", "train.patience"]),
        ("label_ldm.unet.chanels=[8, 16]", ["label_ldm.unet", "chanels", "DiffusionModelUNet"]),
        ("image_vae.autoencoder.latent_chanels=4", ["image_vae.autoencoder", "latent_chanels"]),
        ("vqvae.vqvae.embeding_dim=4", ["vqvae.vqvae", "embeding_dim"]),
        ("image_vae.discriminator.layers=3", ["image_vae.discriminator"]),
        ("image_vae.autoencoder.in_channels=3", ["image_vae.autoencoder", "in_channels"]),
        ("sample.sampler=ddpm", ["sample.steps", "50 training timesteps"]),
        ("label_ldm.unet.num_class_embeds=2", ["label_ldm.unet", "num_class_embeds", "set by FOSCU"]),
        ("sample.tumor_prevalence=0.5", ["sample.tumor_prevalence", "label_ldm.tumor_condition"]),
        ("image_ldm.tumor_condition=true", ["image_ldm", "tumor_condition"]),
        ("sample.tumor_prevalence=1.5", ["sample.tumor_prevalence"]),
        ("controlnet.val_draws=0", ["controlnet.val_draws"]),
    ],
)
def test_settings_that_would_be_ignored_or_fail_late_are_refused_at_load(override, needles):
    with pytest.raises(InputError) as err:
        load_config("tiny", [override])
    for needle in needles:
        assert needle in str(err.value)


def test_settings_that_are_used_still_load():
    cfg = load_config(
        "tiny",
        [
            "image_vae.reconstruction=l2",
            "sample.sampler=ddpm",
            "sample.steps=50",
            "segmentation.train.patience=3",
        ],
    )
    assert cfg.image_vae.reconstruction == "l2" and cfg.sample.steps == 50


def test_cli_refuses_a_monai_typo_in_one_line_writing_nothing(tiny_prepared, tmp_path):
    from typer.testing import CliRunner

    from foscu.cli import app

    run = tmp_path / "run"
    args = ["train", "label-vae", "--config", "tiny", "--data", str(tiny_prepared), "--run", str(run)]
    result = CliRunner().invoke(app, [*args, "--set", "label_vae.autoencoder.num_res_blok=1"])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and "num_res_blok" in result.output
    assert not run.exists()


def test_sampler_and_arch_names_have_one_origin_and_one_message():
    from foscu.config import ARCHS, SAMPLERS, SampleConfig, SegmentationConfig, check_arch, check_sampler
    from foscu.labels import TASKS

    assert SAMPLERS == ("ddpm", "ddim", "rflow") and SampleConfig().sampler in SAMPLERS
    assert SegmentationConfig().archs == list(ARCHS) and SegmentationConfig().tasks == list(TASKS)
    assert check_sampler("rflow") == "rflow" and check_arch("vnet", "archs") == "vnet"
    with pytest.raises(InputError, match="--sampler: expected ddpm, ddim or rflow, got 'dim'"):
        check_sampler("dim")
    with pytest.raises(InputError, match=r"archs: unknown architecture 'vit' \(choose from unet, resunet"):
        check_arch("vit", "archs")


def test_run_configs_from_before_the_adversarial_term_was_removed_still_load(tmp_path):
    # every run config.yaml written before recorded adversarial_weight: 0.0 and a discriminator for both VAEs
    import yaml

    from foscu.config import dump_config, load_config

    old = yaml.safe_load(dump_config(load_config("tiny")))
    for section in ("label_vae", "image_vae"):
        old[section].update(adversarial_weight=0.0, discriminator={"num_layers_d": 2, "channels": 16})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(old))
    assert load_config(str(path)) == load_config("tiny")
    old["image_vae"]["adversarial_weight"] = 0.1  # a weight that would have trained a discriminator
    path.write_text(yaml.safe_dump(old))
    with pytest.raises(InputError, match="adversarial VAE term was removed"):
        load_config(str(path))
