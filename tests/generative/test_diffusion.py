"""The latent diffusion stage: the denoising loss by hand (epsilon and rectified flow), its voxel weights, and
the latent training sets kept on the CPU."""

from __future__ import annotations

import shutil

import pytest
import torch


class _Zero(torch.nn.Module):
    def forward(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(z_t)


class _Oracle(torch.nn.Module):
    """Knows z_0, so it recovers the exact target from (z_t, t): eps (paper eq. 1) or v = z_0 - eps (rflow)."""

    def __init__(self, z_0: torch.Tensor, scheduler, objective: str) -> None:
        super().__init__()
        self.z_0, self.scheduler, self.objective = z_0, scheduler, objective

    def forward(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shape = (-1, 1, 1, 1, 1)
        if self.objective == "rflow":
            s = (t.float() / self.scheduler.num_train_timesteps).view(shape)  # z_t = (1 - s) z_0 + s eps
            return self.z_0 - (z_t - (1 - s) * self.z_0) / s
        abar = self.scheduler.alphas_cumprod[t.long()].view(shape)  # z_t = sqrt(abar) z_0 + sqrt(1-abar) eps
        return (z_t - abar.sqrt() * self.z_0) / (1 - abar).sqrt()


def _schedule(objective: str):
    from foscu.config import SchedulerConfig
    from foscu.generative.schedulers import training_scheduler

    return training_scheduler(SchedulerConfig(num_train_timesteps=1000), objective)


@pytest.mark.parametrize("objective", ["epsilon", "rflow"])
def test_denoising_loss_targets_by_hand(objective):
    from foscu.generative.diffusion import denoising_loss

    scheduler = _schedule(objective)
    z_0 = torch.full((2, 1, 2, 2, 2), 0.5)
    torch.manual_seed(3)
    loss = denoising_loss({"unet": _Zero()}, {"latent": z_0}, scheduler=scheduler, objective=objective)[
        "loss"
    ]
    torch.manual_seed(3)
    eps = torch.randn_like(z_0)  # the loss's first draw
    target = eps if objective == "epsilon" else z_0 - eps  # paper eq. 1 / rectified-flow velocity
    torch.testing.assert_close(loss, (target**2).mean())
    # a network that inverts the noising exactly has zero loss: z_t and t are the ones the formula uses
    for seed in range(3):
        torch.manual_seed(seed)
        oracle = {"unet": _Oracle(z_0, scheduler, objective)}
        exact = denoising_loss(oracle, {"latent": z_0}, scheduler=scheduler, objective=objective)["loss"]
        assert float(exact) < 1e-8


def test_denoising_loss_weights_each_latent_voxel():
    from foscu.generative.diffusion import denoising_loss

    z_0 = torch.zeros((1, 2, 2, 2, 2))
    weight = torch.ones((1, 1, 2, 2, 2))
    weight[0, 0, 1, 1, 1] = 5.0
    torch.manual_seed(4)
    batch = {"latent": z_0, "weight": weight}
    loss = denoising_loss({"unet": _Zero()}, batch, scheduler=_schedule("epsilon"), objective="epsilon")[
        "loss"
    ]
    torch.manual_seed(4)
    error = torch.randn_like(z_0) ** 2
    # sum over voxels and channels of w * error, over (sum of w) * channels: a weighted mean
    torch.testing.assert_close(loss, (error * weight).sum() / (weight.sum() * 2))


def test_latent_training_sets_stay_on_the_cpu_whatever_the_device(tiny_run, tiny_prepared, tmp_path):
    # fit pins its DataLoader on CUDA and torch pins only dense CPU tensors, so a recipe must hand fit CPU
    # data whatever the run's device (here "meta" stands in for cuda: nothing is computed on it)
    import torch

    from foscu.config import load_config
    from foscu.data.loaders import LatentSet
    from foscu.data.prepare import read_prepared
    from foscu.runs import RunFolder
    from foscu.stages import spec_for, stage_context

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cfg, prepared, meta = load_config("tiny"), read_prepared(tiny_prepared), torch.device("meta")
    for name in ("image-ldm", "controlnet"):
        recipe = spec_for(name).recipe(stage_context(name, cfg, prepared, RunFolder(run), meta, cfg.seed))
        data = recipe.train_set
        held = [data.mean, data.sigma, *data.extras.values()]
        assert [t.device.type for t in held] == ["cpu"] * len(held)
        assert {v.device.type for v in data[(0, 5)].values()} == {"cpu"}
    with pytest.raises(ValueError, match="CPU"):
        LatentSet(torch.zeros(2, 1, device="meta"), torch.zeros(2, 1), 1.0)
