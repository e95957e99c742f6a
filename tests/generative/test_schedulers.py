"""Noise schedules: each sampler only for the objective it can sample, set by the config, and never clipped
(latents are not images in [-1, 1])."""

from __future__ import annotations

import pytest
import torch

from foscu.config import SchedulerConfig
from foscu.errors import InputError
from foscu.generative.schedulers import sampling_scheduler, training_scheduler


@pytest.mark.parametrize(
    ("objective", "sampler", "scheduler"),
    [
        ("epsilon", "ddpm", "DDPMScheduler"),
        ("epsilon", "ddim", "DDIMScheduler"),
        ("rflow", "rflow", "RFlowScheduler"),
    ],
)
def test_a_sampler_builds_for_the_objective_it_can_sample(objective, sampler, scheduler):
    assert type(sampling_scheduler(SchedulerConfig(), objective, sampler)).__name__ == scheduler


@pytest.mark.parametrize(
    ("objective", "sampler", "use"),
    [("epsilon", "rflow", "ddpm or ddim"), ("rflow", "ddpm", "rflow"), ("rflow", "ddim", "rflow")],
)
def test_a_sampler_for_another_objective_is_refused_with_the_ones_that_fit(objective, sampler, use):
    with pytest.raises(InputError) as err:
        sampling_scheduler(SchedulerConfig(), objective, sampler)
    assert err.value.path == "--sampler"
    assert (
        err.value.problem
        == f"{sampler} cannot sample a model trained with the {objective} objective (use {use})"
    )


def test_the_config_sets_the_schedule():
    default = training_scheduler(SchedulerConfig(), "epsilon")  # scaled linear: linear in sqrt(beta)
    expected = torch.linspace(0.0015**0.5, 0.0195**0.5, 1000, dtype=torch.float64) ** 2
    torch.testing.assert_close(default.betas.double(), expected, rtol=1e-5, atol=1e-8)
    cfg = SchedulerConfig(num_train_timesteps=200, schedule="linear_beta", beta_start=0.001, beta_end=0.03)
    training = training_scheduler(cfg, "epsilon")
    assert training.num_train_timesteps == 200
    torch.testing.assert_close(training.betas.double(), torch.linspace(0.001, 0.03, 200, dtype=torch.float64))
    torch.testing.assert_close(training.alphas_cumprod, torch.cumprod(1 - training.betas, 0))
    cosine = training_scheduler(SchedulerConfig(num_train_timesteps=50, schedule="cosine"), "epsilon")
    assert len(cosine.betas) == 50 and float(cosine.betas[0]) != pytest.approx(0.0015)  # no beta range
    flow = training_scheduler(cfg, "rflow")
    assert (
        flow.num_train_timesteps == 200
        and flow.use_discrete_timesteps
        and flow.sample_method == "logit-normal"
    )


def test_no_scheduler_clips_its_estimate_of_the_clean_latent():
    cfg = SchedulerConfig()
    schedulers = [training_scheduler(cfg, "epsilon")] + [
        sampling_scheduler(cfg, "epsilon", s) for s in ("ddpm", "ddim")
    ]
    assert [s.clip_sample for s in schedulers] == [False, False, False]
    ddim = schedulers[2]
    ddim.set_timesteps(10)
    t = int(ddim.timesteps[0])
    sample = torch.full((1, 1, 2, 2, 2), 5.0)
    _, clean = ddim.step(torch.zeros_like(sample), t, sample)  # no noise predicted: z_0 = z_t / sqrt(abar_t)
    torch.testing.assert_close(clean, sample / ddim.alphas_cumprod[t].sqrt())
    assert float(clean.min()) > 1  # far outside [-1, 1], kept
