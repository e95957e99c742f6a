"""Tumor presence as the label LDM's condition: presence by hand, per-sample draws at the asked prevalence,
a conditioned LDM whose samples follow the condition, and the prevalence a trained stage records."""

from __future__ import annotations

import pytest
import torch


def test_presence_is_one_where_a_label_holds_a_tumor_voxel():
    from foscu.generative.tumor_condition import presence
    from foscu.labels import TUMOR

    labels = torch.ones((3, 4, 4, 2), dtype=torch.uint8)
    labels[1, 2, 2, 1] = TUMOR
    labels[2, :, :, 0] = 3  # hepatic vein only
    assert presence(labels).tolist() == [0, 1, 0]


def test_presence_draws_follow_the_prevalence_one_seed_at_a_time():
    from foscu.generative.tumor_condition import draw_presence

    seeds = list(range(4000))
    for prevalence in (0.3, 0.75):  # binomial sd at n = 4000: <= 0.008
        assert sum(draw_presence(seeds, prevalence)) / 4000 == pytest.approx(prevalence, abs=0.03)
    assert set(draw_presence(seeds, 0.0)) == {0} and set(draw_presence(seeds, 1.0)) == {1}
    # sample i's draw depends on its seed alone (not on the batch it is drawn in)
    assert draw_presence([7, 11, 13], 0.5)[1:] == draw_presence([11], 0.5) + draw_presence([13], 0.5)


def test_the_asked_prevalence_is_checked_and_refused_without_the_condition():
    from foscu.errors import InputError
    from foscu.generative.tumor_condition import resolve

    assert resolve(0.4, None, None, sampled=True) == 0.4  # the training prevalence by default
    assert resolve(0.4, 0.9, None, sampled=True) == 0.9  # sample.tumor_prevalence
    assert resolve(0.4, 0.9, 1.0, sampled=True) == 1.0  # --tumor-prevalence
    assert resolve(0.4, 0.9, None, sampled=False) is None  # given labels or a baseline: nothing drawn
    with pytest.raises(InputError, match="without label_ldm.tumor_condition"):
        resolve(None, None, 0.5, sampled=True)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        resolve(0.4, None, 1.5, sampled=True)
    with pytest.raises(InputError, match="duo model"):
        resolve(0.4, None, 0.5, sampled=False)


def test_a_conditioned_ldm_samples_what_its_condition_asks_for():
    # a toy label LDM (rectified flow): class 1 latents are +1 everywhere, class 0 latents -1. Trained 80 steps, its
    # samples must follow the class they are drawn under; an LDM that drops the class gives both the same
    from foscu.config import LabelDiffusionStage, SchedulerConfig
    from foscu.generative.diffusion import build_diffusion, denoising_loss
    from foscu.generative.sampling import LatentModel, denoise
    from foscu.generative.schedulers import training_scheduler

    torch.manual_seed(0)
    unet_cfg = {
        "channels": [8, 8],
        "num_res_blocks": 1,
        "attention_levels": [False, False],
        "norm_num_groups": 4,
    }
    stage = LabelDiffusionStage(unet=unet_cfg, tumor_condition=True)
    unet = build_diffusion(stage, 1)["unet"]
    schedule = SchedulerConfig(num_train_timesteps=1000)
    scheduler = training_scheduler(schedule, "rflow")
    optimizer = torch.optim.Adam(unet.parameters(), lr=3e-3)
    for _ in range(80):
        classes = torch.randint(0, 2, (8,))
        z_0 = (2.0 * classes - 1).view(-1, 1, 1, 1, 1).expand(-1, 1, 4, 4, 4)
        batch = {"latent": z_0, "class_labels": classes}
        loss = denoising_loss({"unet": unet}, batch, scheduler=scheduler, objective="rflow")["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    unet.eval()
    model = LatentModel(unet, schedule, "rflow", 1.0, (1, 4, 4, 4), torch.nn.Identity())
    noise = torch.randn((4, 1, 4, 4, 4), generator=torch.Generator().manual_seed(3)).repeat(2, 1, 1, 1, 1)
    classes = torch.tensor([0] * 4 + [1] * 4)
    z = denoise(model, noise, "rflow", 10, [], class_labels=classes)  # the same noise under each class
    means = z.mean(dim=(1, 2, 3, 4))
    assert (means[:4] < -0.5).all() and (means[4:] > 0.5).all(), means  # measured: about -0.9 / 0.9


def test_the_trained_prevalence_is_recorded_and_sampled_at_or_as_asked(tiny_run, tiny_prepared, tmp_path):
    import json
    import shutil

    import yaml

    from foscu.config import load_config
    from foscu.data.loaders import load_split
    from foscu.data.prepare import read_prepared
    from foscu.generative.generate import generate
    from foscu.generative.tumor_condition import draw_presence
    from foscu.labels import TUMOR
    from foscu.runs import RunFolder
    from foscu.stages import train_stage

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.rmtree(RunFolder(run).stage("label-ldm"))
    cfg = load_config("tiny", ["label_ldm.tumor_condition=true"])
    train_stage("label-ldm", cfg, tiny_prepared, run, progress=False)
    info = yaml.safe_load(RunFolder(run).config("label-ldm").read_text())
    labels = load_split(read_prepared(tiny_prepared), "training").labels
    by_hand = [int((label == TUMOR).any()) for label in labels]
    assert info["tumor_prevalence"] == pytest.approx(sum(by_hand) / len(by_hand))
    assert info["tumor_cases"] == sum(by_hand) and info["training_cases"] == len(by_hand)

    default = json.loads(
        (generate(run, 3, tmp_path / "a", "ddim", 2, progress=False) / "samples.json").read_text()
    )
    assert default["tumor_condition"] == {
        "training_prevalence": info["tumor_prevalence"],
        "prevalence": info["tumor_prevalence"],
    }
    seeds = [case["seed"] for case in default["cases"].values()]
    drawn = [case["tumor_presence"] for case in default["cases"].values()]
    assert drawn == draw_presence(seeds, info["tumor_prevalence"])
    none = generate(run, 3, tmp_path / "b", "ddim", 2, progress=False, tumor_prevalence=0.0)
    record = json.loads((none / "samples.json").read_text())
    assert record["tumor_condition"]["prevalence"] == 0.0
    assert [case["tumor_presence"] for case in record["cases"].values()] == [0, 0, 0]
