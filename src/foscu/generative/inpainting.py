"""The image half of lesion synthesis: generate only in and around an edited region of a real scan.

Two methods, both ending in the same feathered paste (``compose``), so that outside the edited region dilated
by ``margin`` voxels the output is the real image exactly:

- ``inpaint`` (the default): latent inpainting (RePaint, Lugmayr et al. 2022, as DiffTumor uses it): the real
  image's latent z_known is re-imposed outside the region at every sampling step, noised to the step's
  timestep with the sample's own starting noise (epsilon: sqrt(a_t) z_0 + sqrt(1 - a_t) eps; rflow:
  (1 - t) z_0 + t eps, MONAI's ``add_noise``), while ControlNet draws the inside for the edited mask; the
  decoder's own smoothed error on the real scan is added back (``decoder_bias``), else a VAE that darkens
  the liver leaves a step at the border;
- ``blend``: the whole image drawn for the edited mask (what ``foscu sample --labels`` writes), pasted in.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

Method = Literal["inpaint", "blend"]
METHODS: tuple[Method, ...] = ("inpaint", "blend")
_CUBE = np.ones((3, 3, 3), dtype=bool)


def feather_weight(changed: np.ndarray, margin: int) -> np.ndarray:
    """(X, Y, Z) float weight of the generated image: 1 within one voxel of ``changed``, a raised-cosine ramp
    to 0 at ``margin`` voxels (Euclidean, in voxels), exactly 0 from there on."""
    from scipy import ndimage

    if margin < 2:
        raise ValueError(f"margin must be >= 2 voxels, got {margin}")
    if not changed.any():
        return np.zeros(changed.shape, dtype=np.float32)
    d = ndimage.distance_transform_edt(~changed)
    ramp = np.clip((d - 1.0) / (margin - 1.0), 0.0, 1.0)
    weight = 0.5 * (1.0 + np.cos(np.pi * ramp))
    weight[d >= margin] = 0.0
    return weight.astype(np.float32)


def compose(real: np.ndarray, generated: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``weight`` * generated + (1 - ``weight``) * real, and the real voxel itself wherever the weight is 0."""
    mixed = weight * generated + (1.0 - weight) * real
    return np.where(weight > 0, mixed, real).astype(np.float32)


def latent_mask(weight: np.ndarray, latent_shape: tuple[int, ...]) -> torch.Tensor:
    """(1, 1, x, y, z) 1 where a latent voxel covers any generated image voxel (dilated by one latent voxel,
    so the decoder's view of the edited region is generated too), else 0."""
    inside = torch.from_numpy(weight > 0).float()[None, None]
    covered = F.adaptive_max_pool3d(inside, tuple(latent_shape))
    return F.max_pool3d(covered, kernel_size=3, stride=1, padding=1)


def _noiser(scheduler: Any, sampler: str) -> Any:
    """z_0, eps, t -> z_t as the sampler's scheduler noises (MONAI's ``add_noise``)."""

    def noised(z_0: torch.Tensor, eps: torch.Tensor, t: Any) -> torch.Tensor:
        dtype = torch.float32 if sampler == "rflow" else torch.long
        t_batch = torch.full((z_0.shape[0],), float(t), device=z_0.device).to(dtype)
        return scheduler.add_noise(z_0, eps, t_batch)

    return noised


@torch.no_grad()
def inpaint_latent(
    model: Any,
    z_known: torch.Tensor,
    mask: torch.Tensor,
    seed: int,
    sampler: str,
    steps: int | None,
    control: Any,
    condition: torch.Tensor,
) -> torch.Tensor:
    """z_0 (1, c, x, y, z) drawn inside ``mask`` and equal to ``z_known`` (scaled) outside it.

    The noise is the sample's own (seed ``seed``, the image stream of ``sampling._sample_latent``), and the
    known region is noised with that same noise at each timestep reached.
    """
    from foscu.config import check_sampler
    from foscu.engine.loop import _mix
    from foscu.generative import sampling
    from foscu.generative.schedulers import sampling_scheduler

    device = z_known.device
    stream_seed = _mix(seed, 1)
    eps = sampling._noise(model.latent_shape, [stream_seed], device)  # (1, c, x, y, z)
    noised = _noiser(sampling_scheduler(model.scheduler, model.objective, check_sampler(sampler)), sampler)
    mask = mask.to(device)

    def impose(z_t: torch.Tensor, t: Any) -> torch.Tensor:
        known_t = z_known if t is None else noised(z_known, eps, t)
        return mask * z_t + (1.0 - mask) * known_t

    generators = sampling._step_generators([stream_seed], device)
    return sampling.denoise(model, eps, sampler, steps, generators, control, condition, impose)


@torch.no_grad()
def generate_region(
    pipe: Any,
    real: np.ndarray,
    edited: np.ndarray,
    weight: np.ndarray,
    seed: int,
    sampler: str,
    steps: int | None,
    method: Method,
) -> np.ndarray:
    """The generated image (X, Y, Z) for the edited label, to be pasted in with ``weight`` (``compose``)."""
    from foscu.generative import autoencoders, controlnet
    from foscu.generative.decoding import decode_volume
    from foscu.generative.sampling import generate_batch

    labels = torch.from_numpy(edited.astype(np.int64))[None]
    if method == "blend":
        return generate_batch(pipe, [seed], sampler, steps, labels)[0][0]
    image = pipe.image
    device = next(image.unet.parameters()).device
    z_mu, _ = autoencoders.encode(image.autoencoder, torch.from_numpy(real)[None, None].float().to(device))
    z_known = z_mu * image.scale
    num_classes = len(pipe.labels)
    label_latent = None
    if pipe.condition == "label_latent":
        onehot = F.one_hot(labels.to(device), num_classes).movedim(-1, 1).float()
        label_latent = autoencoders.encode(pipe.label.autoencoder, onehot)[0] * pipe.label.scale
    cond = controlnet.make_condition(
        pipe.condition or "", labels.to(device), label_latent, image.latent_shape[1:], num_classes
    )
    mask = latent_mask(weight, image.latent_shape[1:])
    z_0 = inpaint_latent(image, z_known, mask, seed, sampler, steps, pipe.controlnet, cond)
    decoded = decode_volume(image.autoencoder, z_0 / image.scale, pipe.decode_patch)[0, 0].cpu().numpy()
    recon = decode_volume(image.autoencoder, z_known / image.scale, pipe.decode_patch)[0, 0].cpu().numpy()
    bias = decoder_bias(real, recon, weight < 1)
    return np.clip(decoded + bias, 0.0, 1.0)  # the real image's range: no min-max rescaling


def decoder_bias(real: np.ndarray, recon: np.ndarray, trusted: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """The decoder's local error on the real scan, real - decode(encode(real)), smoothed (Gaussian, ``sigma``
    voxels) over the ``trusted`` voxels only (normalised convolution; the edited core, whose old content is
    gone, is left out): added to the inpainted image, the generated region meets the real scan at its level."""
    from scipy import ndimage

    trust = trusted.astype(np.float32)
    num = ndimage.gaussian_filter((real - recon) * trust, sigma)
    den = ndimage.gaussian_filter(trust, sigma)
    return np.where(den > 1e-3, num / np.maximum(den, 1e-3), 0.0).astype(np.float32)


def tumor_contrast(image: np.ndarray, label: np.ndarray, tumor: np.ndarray) -> float | None:
    """Mean intensity of the liver within two voxels of ``tumor`` minus the tumor's (None without either)."""
    from scipy import ndimage

    from foscu.labels import LIVER

    ring = ndimage.binary_dilation(tumor, structure=_CUBE, iterations=2) & (label == LIVER)
    if not tumor.any() or not ring.any():
        return None
    return float(image[ring].mean() - image[tumor].mean())


def seam_metrics(real: np.ndarray, generated: np.ndarray, out: np.ndarray, weight: np.ndarray) -> dict:
    """How visible the paste's border is, over the feather band (0 < weight < 1):

    - ``band_mismatch``: mean |generated - real|, the step the feather has to bridge;
    - ``band_gradient_ratio``: mean gradient magnitude of the output over the real image's (1: no seam).
    """
    band = (weight > 0) & (weight < 1)
    if not band.any():
        return {"band_mismatch": None, "band_gradient_ratio": None}
    grad_out = np.linalg.norm(np.stack(np.gradient(out)), axis=0)
    grad_real = np.linalg.norm(np.stack(np.gradient(real)), axis=0)
    return {
        "band_mismatch": round(float(np.abs(generated - real)[band].mean()), 5),
        "band_gradient_ratio": round(float(grad_out[band].mean() / max(grad_real[band].mean(), 1e-8)), 4),
    }
