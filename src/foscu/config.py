"""Typed, closed configuration: one pydantic model per stage, presets shipped in the package, ``--set``.

Keys that configure a MONAI network are MONAI's own constructor arguments, passed through unrenamed
(e.g. ``autoencoder: {channels: [32, 64, 64], latent_channels: 4}`` -> ``AutoencoderKL(spatial_dims=3, **cfg)``);
their names are checked against the MONAI constructor's signature at load (values when the network is built).
Everything FOSCU itself reads is typed and closed here: a typo fails at once, naming the key.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from foscu.config_protocols import ProtocolSettings
from foscu.config_scarcity import ScarcityConfig, check_seeds
from foscu.errors import InputError
from foscu.labels import TASKS, Task

PRESETS = ("tiny", "demo", "proof", "paper", "scarcity")

Sampler = Literal["ddpm", "ddim", "rflow"]
SAMPLERS: tuple[Sampler, ...] = get_args(Sampler)
Arch = Literal["unet", "resunet", "wideresunet", "dynunet", "vnet"]
ARCHS: tuple[Arch, ...] = get_args(Arch)
Features = Literal["frd", "inception", "radimagenet"]  # slice features of the 2.5D Fréchet distance
FEATURES: tuple[Features, ...] = get_args(Features)


def _one_of(names: tuple[str, ...]) -> str:
    return f"{', '.join(names[:-1])} or {names[-1]}"


def check_sampler(sampler: str) -> Sampler:
    """``sampler`` as a Sampler; InputError for any other name."""
    if sampler not in SAMPLERS:
        raise InputError("--sampler", f"expected {_one_of(SAMPLERS)}, got {sampler!r}")
    return sampler  # type: ignore[return-value]  # one of SAMPLERS


def check_arch(arch: str, where: str = "--arch") -> Arch:
    """``arch`` as an Arch; InputError (at ``where``) for any other name."""
    if arch not in ARCHS:
        raise InputError(where, f"unknown architecture {arch!r} (choose from {', '.join(ARCHS)})")
    return arch  # type: ignore[return-value]  # one of ARCHS


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


class SampleConfig(Section):
    """``foscu sample`` and the experiment's sampling; a None argument of ``generate`` means these."""

    sampler: Sampler = "ddim"
    steps: int = Field(50, ge=1)
    batch_size: int = Field(4, ge=1)
    n: int | None = Field(
        None, ge=1, description="pairs the experiment generates (None: one per training case)"
    )
    # decode latents in overlapping patches of this latent-grid size (MONAI sliding window) when a whole
    # volume does not fit in GPU memory while decoding; None decodes whole volumes (exact, the default)
    decode_patch: list[int] | None = None
    # clean sampled labels before their image is drawn (generative/label_cleaning.py): one liver, tumor
    # components below min_tumor_ml (the smallest real tumor: 2 mL in the proof set) and detached vessels out
    clean_labels: bool = False
    min_tumor_ml: float = Field(2.0, gt=0)
    # redraw a sampled label whose liver overlaps a training liver more than any held-out case's does, up to
    # novelty_tries draws in all (generative/novelty.py; needs the run's prepared set: `foscu sample --run`)
    novelty: bool = False
    novelty_tries: int = Field(4, ge=1)
    conditioning_scale: float = Field(1.0, ge=0, description="the ControlNet residuals' factor at sampling")
    # label_ldm.tumor_condition: each sample has a tumor with this probability (None: the training prevalence)
    tumor_prevalence: float | None = Field(None, ge=0, le=1)


class ExperimentConfig(Section):
    """``foscu experiment``: what the protocol includes beyond the paper's own rows."""

    ablation: bool = True  # train and sample the other two ControlNet conditionings as extra Table I rows
    ablation_samples: int | None = Field(None, ge=1, description="pairs per ablation row (None: as sample.n)")


class SegmentationConfig(ProtocolSettings, Section):
    """Paper II-C: five 3D U-Nets, Dice + (B)CE, AdamW lr 1e-4, early stopping patience 10 (epochs); Table
    II's protocols and budget (config_protocols.py)."""

    archs: list[Arch] = Field(default_factory=lambda: list(ARCHS))
    tasks: list[Task] = Field(default_factory=lambda: list(TASKS))
    channels: list[int] = Field(default_factory=lambda: [16, 32, 64, 128, 256])
    widen_factor: int = Field(2, ge=1, description="WideResUNet: channels x this factor")
    patch_size: list[int] | None = None  # None: the whole prepared ROI
    # with patches: the share of patches centred on a foreground voxel, of a class drawn uniformly among
    # the classes the case holds (nnU-Net forces 1/3 of its patches onto foreground); the rest are random
    foreground_oversample: float = Field(0.33, ge=0, le=1)
    synthetic_fraction: float = Field(1.0, ge=0, description="synthetic cases per real training case")
    sw_batch_size: int = Field(2, ge=1)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(lr=1e-4, weight_decay=1e-5, patience=10))
    # Table II: each cell trained with n seeds (seed, seed + 1, ...) or with the seeds listed
    seeds: int | list[int] = 1

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: int | list[int]) -> int | list[int]:
        return check_seeds(value)


class EvaluationConfig(Section):
    """Table I's 2.5D Fréchet distance; these defaults are ``foscu evaluate fid``'s too."""

    features: Features = "frd"
    slice_stride: int = Field(1, ge=1)
    central_fraction: float = Field(1.0, gt=0, le=1)
    # Table I: resamples of the synthetic volumes for a 95 % interval of the mean distance (0: none)
    bootstrap: int = Field(200, ge=0)


class FoscuConfig(Section):
    """The whole run's configuration; each stage reads its own section."""

    preset: str = "custom"
    seed: int = 0
    label_vae: AutoencoderStage
    image_vae: ImageAutoencoderStage
    vqvae: VQVAEStage
    label_ldm: LabelDiffusionStage
    image_ldm: DiffusionStage
    vqvae_ldm: DiffusionStage
    controlnet: ControlNetStage = Field(default_factory=ControlNetStage)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    segmentation: SegmentationConfig = Field(default_factory=SegmentationConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig)
    scarcity: ScarcityConfig = Field(default_factory=ScarcityConfig)

    @model_validator(mode="after")
    def _check(self) -> FoscuConfig:
        if self.sample.tumor_prevalence is not None and not self.label_ldm.tumor_condition:
            raise ValueError("sample.tumor_prevalence: set label_ldm.tumor_condition: true with it")
        if self.sample.sampler == "rflow" and self.label_ldm.scheduler.num_train_timesteps < 2:
            raise ValueError("rflow sampling needs num_train_timesteps >= 2")
        if self.sample.sampler == "ddpm":  # see generative/sampling.py:sampler_steps
            for name in ("label_ldm", "image_ldm", "vqvae_ldm"):
                total = getattr(self, name).scheduler.num_train_timesteps
                if self.sample.steps != total:
                    raise ValueError(
                        f"sample.steps: ddpm samples only with all {total} training timesteps "
                        f"({name}.scheduler.num_train_timesteps), got {self.sample.steps}; "
                        f"set sample.steps={total} or use sampler ddim"
                    )
        return self


def _parse_value(text: str) -> Any:
    """``--set a.b=v``: v is read as YAML, so numbers, lists and booleans keep their type."""
    return yaml.safe_load(text)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a raw config dict; unknown keys fail later in validation."""
    for item in overrides:
        if "=" not in item:
            raise InputError("--set", f"expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError("--set", f"{key}: {part} is not a section")
        node[parts[-1]] = _parse_value(value)
    return raw


def read_raw(source: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A preset name or a YAML file path -> raw dict (``base:`` resolved, config_base.py)."""
    from foscu.config_base import with_base

    if source in _seen:
        raise InputError(source, f"base: {' -> '.join((*_seen, source))} builds on itself")
    if source in PRESETS:
        text = resources.files("foscu.presets").joinpath(f"{source}.yaml").read_text()
        raw = yaml.safe_load(text)
        raw.setdefault("preset", source)
        return with_base(raw, source, PRESETS, lambda base: read_raw(base, (*_seen, source)))
    path = Path(source)
    if not path.is_file():
        raise InputError(path, f"no such config file (presets are {', '.join(PRESETS)})")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(path, f"not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise InputError(path, "a config file must be a YAML mapping")
    return with_base(raw, source, PRESETS, lambda base: read_raw(base, (*_seen, source)))


def load_config(source: str, overrides: list[str] | None = None) -> FoscuConfig:
    """Load a preset or YAML file, apply ``--set`` overrides, validate; errors name the key."""
    raw = apply_overrides(read_raw(source), list(overrides or []))
    try:
        return FoscuConfig.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise InputError(source, f"{where}: {message}" if where else message) from None


def dump_config(cfg: FoscuConfig) -> str:
    """The resolved config as YAML, in the models' field order (what every run folder keeps)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def provenance(seed: int) -> dict[str, Any]:
    """Package versions and seed, written beside every resolved config."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {}
    for pkg in ("foscu", "torch", "monai", "numpy", "nibabel", "SimpleITK", "pydicom"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {"seed": seed, "python": platform.python_version(), "packages": versions}
