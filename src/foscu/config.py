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
from pydantic import Field, ValidationError, field_validator, model_validator

# the stage sections live in config_generative.py; re-exported so their import path stays foscu.config
from foscu.config_generative import (
    AutoencoderStage as AutoencoderStage,
    ControlNetStage as ControlNetStage,
    DiffusionStage as DiffusionStage,
    GenerativeStage as GenerativeStage,
    ImageAutoencoderStage as ImageAutoencoderStage,
    LabelDiffusionStage as LabelDiffusionStage,
    SchedulerConfig as SchedulerConfig,
    Section as Section,
    TrainConfig as TrainConfig,
    VQVAEStage as VQVAEStage,
)
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
