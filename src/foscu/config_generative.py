"""Config sections of the training engine and the generative stages: what every stage's ``train`` holds, the
autoencoders, the diffusion models, the ControlNet.

Kept apart from config.py (which re-exports every name, so ``from foscu.config import TrainConfig`` still
works) so that module stays one screenful per section. Keys that configure a MONAI network are MONAI's own
constructor arguments, checked against its signature at load (``_check_monai_keys``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    """A config section: closed, so an unknown key fails at load naming itself."""

    model_config = ConfigDict(extra="forbid")


class TrainConfig(Section):
    """What the one training engine (engine/loop.py) needs for any stage."""

    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(2, ge=1)
    steps: int = Field(100, ge=1, description="optimizer steps (an epoch = one pass over the training set)")
    epochs: int | None = Field(None, ge=1, description="if set, train this many epochs instead of `steps`")
    grad_clip: float | None = Field(1.0, gt=0)
    amp: Literal["none", "bf16", "fp16"] = "bf16"  # autocast dtype on GPU; CPU always runs fp32
    ema_decay: float | None = Field(None, gt=0, lt=1)
    checkpoint_every: int = Field(100, ge=1)
    val_every: int = Field(50, ge=1)
    patience: int | None = Field(
        None,
        ge=1,
        description="early stopping: epochs (passes over the training split) without improvement of the "
        "monitored score, checked at each validation (a generative stage needs keep_best: true)",
    )
    num_workers: int = Field(0, ge=0)
    # learning-rate schedule (engine/schedule.py): warm-up from lr / warmup_steps to lr over the first
    # warmup_steps steps, then constant, or half a cosine down to min_lr_ratio x lr at the last step
    warmup_steps: int = Field(0, ge=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine: the last step's lr over lr")

    @model_validator(mode="after")
    def _schedule_is_used(self) -> TrainConfig:
        if self.lr_schedule == "constant" and self.min_lr_ratio:
            raise ValueError("min_lr_ratio: a constant lr_schedule does not decay (set lr_schedule: cosine)")
        if self.epochs is None and self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps: {self.warmup_steps} >= steps {self.steps} leaves no training")
        return self


def _check_monai_keys(
    cfg: dict[str, Any], network: str, set_by_foscu: tuple[str, ...], constructor: Any = None
) -> dict[str, Any]:
    """Keys of a MONAI section must be arguments of the MONAI constructor (checked by its signature), so a
    typo fails at config load instead of as a traceback after run.json and the latent cache are written.
    ``constructor``: a class outside ``monai.networks.nets`` (default: ``monai.networks.nets.<network>``)."""
    import inspect

    import monai.networks.nets as nets

    constructor = constructor or getattr(nets, network)
    accepted = set(inspect.signature(constructor.__init__).parameters) - {"self"}
    fixed = sorted(set(cfg) & set(set_by_foscu))
    if fixed:
        raise ValueError(f"{', '.join(fixed)}: set by FOSCU from the data, not configurable")
    unknown = sorted(set(cfg) - accepted)
    if unknown:
        raise ValueError(
            f"unknown {network} argument(s) {', '.join(unknown)} "
            f"(MONAI {network} accepts: {', '.join(sorted(accepted - set(set_by_foscu)))})"
        )
    return cfg


def _without_adversarial(data: Any) -> Any:
    """Run configs written before the adversarial term was removed hold ``adversarial_weight: 0.0`` and a
    ``discriminator``: both are dropped (they never took effect); a non-zero weight is refused."""
    if not isinstance(data, dict) or "adversarial_weight" not in data:
        return data
    if data["adversarial_weight"]:
        raise ValueError("adversarial_weight: the adversarial VAE term was removed (the paper has none)")
    return {k: v for k, v in data.items() if k not in ("adversarial_weight", "discriminator")}


class GenerativeStage(Section):
    """A generative stage trains for ``train.steps``/``train.epochs`` and keeps its last (EMA) weights, or
    with ``keep_best`` the (EMA) weights of its best validation score; ``train.patience`` then stops it early."""

    # the score: val_loss (LDMs, ControlNet), val_l1 (image VAE, VQ-VAE), val_dice (label VAE, the higher)
    keep_best: bool = False

    @model_validator(mode="after")
    def _early_stopping_keeps_the_best(self) -> GenerativeStage:
        train = getattr(self, "train", None)
        if train is not None and train.patience is not None and not self.keep_best:
            raise ValueError(
                "train.patience: early stopping watches the validation score and keeps the best weights; "
                "set keep_best: true with it"
            )
        return self


class AutoencoderStage(GenerativeStage):
    """label-vae: MONAI AutoencoderKL on one-hot labels; cross-entropy reconstruction + KL."""

    autoencoder: dict[str, Any]
    kl_weight: float = Field(1e-7, ge=0)
    # train on random patches of this size (as MAISI trains its VAE); None: whole prepared volumes.
    # The networks are fully convolutional, so encoding and decoding still take whole volumes.
    patch_size: list[int] | None = None
    # label VAE: + dice_weight x soft Dice over the foreground classes (MONAI DiceLoss, batch-pooled); the
    # cross-entropy alone lets thin vessels vanish at 4x compression (measured: portal/hepatic vein Dice
    # 0.00 -> 0.25/0.30 at 600 steps of the demo preset)
    dice_weight: float = Field(0.0, ge=0)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="before")
    @classmethod
    def _labels_use_cross_entropy(cls, data: Any) -> Any:
        for key in ("reconstruction", "structure_weight"):
            if isinstance(data, dict) and key in data and key not in cls.model_fields:
                raise ValueError(
                    f"{key}: the label VAE always reconstructs with cross-entropy against the label; "
                    "remove this key (it applies to image_vae only)"
                )
        return _without_adversarial(data)

    @field_validator("autoencoder")
    @classmethod
    def _autoencoder_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_monai_keys(value, "AutoencoderKL", ("spatial_dims", "in_channels", "out_channels"))


class ImageAutoencoderStage(AutoencoderStage):
    """image-vae: as the label VAE, with an L1 or L2 image reconstruction term (paper II-B: KL weight 1e-7)."""

    reconstruction: Literal["l1", "l2"] = "l1"
    # maisi: MONAI's AutoencoderKlMaisi from MAISI's published configuration instead of `autoencoder` (which
    # it leaves unused), `maisi` overriding its constructor arguments (MONAI's names); `weights` a .pt/.pth
    # state dict or .safetensors (None: from scratch), `freeze` takes no optimizer step, `intensity` how the
    # images enter the encoder (None: percentile for maisi, MAISI's MR convention). generative/maisi.py.
    pretrained: Literal["maisi"] | None = None
    maisi: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = None
    freeze: bool = False
    intensity: Literal["minmax", "percentile"] | None = None
    # the reconstruction term weighted 1 + structure_weight on portal vein, hepatic vein and tumor voxels (the
    # label of the same patch), a weighted mean: veins are ~0.4 % of the voxels, so a plain mean lets them
    # blur away (issue 16: x11 kept 0.72 / 0.51 of the portal / hepatic vein contrast against 0.57 / 0.32)
    structure_weight: float = Field(0.0, ge=0)

    @field_validator("dice_weight")
    @classmethod
    def _no_dice_on_images(cls, value: float) -> float:
        if value:
            raise ValueError("dice_weight applies to the label VAE only (images reconstruct with L1/L2)")
        return value

    @field_validator("maisi")
    @classmethod
    def _maisi_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            return value
        from monai.apps.generation.maisi.networks.autoencoderkl_maisi import AutoencoderKlMaisi

        fixed = ("spatial_dims", "in_channels", "out_channels")
        return _check_monai_keys(value, "AutoencoderKlMaisi", fixed, AutoencoderKlMaisi)

    @model_validator(mode="after")
    def _pretrained_settings(self) -> ImageAutoencoderStage:
        if self.pretrained is None:
            given = [k for k in ("maisi", "weights", "freeze") if getattr(self, k)]
            given += ["intensity: percentile"] if self.intensity == "percentile" else []
            if given:
                raise ValueError(f"{', '.join(given)}: set only with pretrained: maisi")
            self.intensity = "minmax"
        elif self.intensity is None:
            self.intensity = "percentile"
        if self.freeze and self.weights is None:
            raise ValueError("freeze: a frozen autoencoder needs weights (set weights: PATH)")
        return self


class VQVAEStage(GenerativeStage):
    """Table I baseline: MONAI VQVAE."""

    vqvae: dict[str, Any]
    patch_size: list[int] | None = None  # as AutoencoderStage.patch_size
    train: TrainConfig = Field(default_factory=TrainConfig)

    @field_validator("vqvae")
    @classmethod
    def _vqvae_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_monai_keys(value, "VQVAE", ("spatial_dims", "in_channels", "out_channels"))


class SchedulerConfig(Section):
    """Noise schedule shared by training and every sampler (MONAI DDPM/DDIM/RFlow)."""

    num_train_timesteps: int = Field(1000, ge=2)
    schedule: Literal["linear_beta", "scaled_linear_beta", "sigmoid_beta", "cosine"] = "scaled_linear_beta"
    beta_start: float = Field(0.0015, gt=0)
    beta_end: float = Field(0.0195, gt=0)


class DiffusionStage(GenerativeStage):
    """label-ldm / image-ldm / vqvae-ldm: MONAI DiffusionModelUNet, epsilon-prediction, L2 (paper eq. 1)."""

    unet: dict[str, Any]
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    # epsilon: the paper's eq. 1 (sampled with ddpm or ddim); rflow: rectified flow (velocity), sampled with rflow
    objective: Literal["epsilon", "rflow"] = "epsilon"
    # train on each case and this many small random affine copies of it (generative/latent_augment.py)
    augment_copies: int = Field(0, ge=0, le=32)
    # val_loss averaged over this many fixed draws of noise and timestep per case (generative/validation.py)
    val_draws: int = Field(1, ge=1)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @field_validator("unet")
    @classmethod
    def _unet_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        fixed = (
            "spatial_dims",
            "in_channels",
            "out_channels",
            "num_class_embeds",
        )  # label_ldm.tumor_condition
        return _check_monai_keys(value, "DiffusionModelUNet", fixed)


class LabelDiffusionStage(DiffusionStage):
    """label-ldm; ``tumor_condition``: conditioned on the case's tumor presence (generative/tumor_condition.py)."""

    tumor_condition: bool = False


class ControlNetStage(GenerativeStage):
    """ControlNet on the frozen image LDM (paper eq. 2), conditioned as ``condition`` says."""

    condition: Literal["label_latent", "label_downsampled", "label_fractions", "label_fullres"] = (
        "label_latent"
    )
    conditioning_embedding_num_channels: list[int] = Field(default_factory=lambda: [16, 32])
    class_weights: dict[str, float] | None = None  # e.g. {tumor: 100}, as MAISI weights small structures
    augment_copies: int = Field(0, ge=0, le=32)  # as DiffusionStage's: label and image copy k deform alike
    val_draws: int = Field(1, ge=1)  # as DiffusionStage.val_draws, for the true and the shuffled mask
    train: TrainConfig = Field(default_factory=TrainConfig)
