"""STAGES: every trainable stage of a run, its config section, its recipe and what it needs, in one table.

``foscu train STAGE`` and ``foscu seg train`` both end in ``train_stage``: one lookup in the table, the same
checks (prerequisites trained, the run's prepared set, resume), the same stage folder (``config.yaml`` +
``model.safetensors``) and the one training engine. ``load_stage`` rebuilds any trained stage from its own
folder, whatever the current config says. A family module (generative/autoencoders.py, diffusion.py,
controlnet.py, segmentation/train.py) exports ``recipe(ctx)`` and ``build(info)``; adding a stage is one
entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from foscu.config import FoscuConfig, dump_config, provenance
from foscu.config_protocols import TABLE2_ONLY
from foscu.context import StageContext
from foscu.data.loaders import load_split
from foscu.data.prepare import PreparedSet, read_prepared
from foscu.engine import distributed, frozen
from foscu.engine.checkpoint import load_weights
from foscu.engine.loop import FitResult, Recipe, fit
from foscu.errors import InputError
from foscu.generative import autoencoders, controlnet, diffusion, latent_augment, latents
from foscu.labels import Task, check_task
from foscu.runs import CONFIG, MODEL, RunFolder, seg_stage, write_json_atomic, write_text_atomic
from foscu.segmentation import train as segmentation
from foscu.segmentation.train import run_name


@dataclass(frozen=True)
class StageSpec:
    """One row of the table: where a stage's settings live, how it trains, how it is rebuilt."""

    section: str  # the FoscuConfig section it reads
    recipe: Callable[[StageContext], Recipe]  # networks, loss, data, validation for the engine
    build: Callable[[dict[str, Any]], dict[str, nn.Module]]  # networks from the stage's config.yaml
    needs: Callable[[FoscuConfig], tuple[str, ...]] = lambda cfg: ()  # stages trained before it
    latents: str | None = None  # an encoder's cache name: RUN/latents/<latents>.safetensors


def _after(*stages: str) -> Callable[[FoscuConfig], tuple[str, ...]]:
    return lambda cfg: stages


STAGES: dict[str, StageSpec] = {
    "label-vae": StageSpec(
        "label_vae", partial(autoencoders.recipe, data="label"), autoencoders.build, latents="label"
    ),
    "image-vae": StageSpec(
        "image_vae", partial(autoencoders.recipe, data="image"), autoencoders.build, latents="image"
    ),
    "vqvae": StageSpec("vqvae", autoencoders.vqvae_recipe, autoencoders.build_vq, latents="vqvae"),
    "label-ldm": StageSpec(
        "label_ldm", partial(diffusion.recipe, encoder="label-vae"), diffusion.build, _after("label-vae")
    ),
    "image-ldm": StageSpec(
        "image_ldm", partial(diffusion.recipe, encoder="image-vae"), diffusion.build, _after("image-vae")
    ),
    "vqvae-ldm": StageSpec(
        "vqvae_ldm", partial(diffusion.recipe, encoder="vqvae"), diffusion.build, _after("vqvae")
    ),
    "controlnet": StageSpec("controlnet", controlnet.recipe, controlnet.build, controlnet.needs),
    "seg": StageSpec("segmentation", segmentation.recipe, segmentation.build),
}
SEG = seg_stage("")  # segmentation stages are named seg/<arch>-<task>-<real|real+synthetic>[-seed<k>]


def spec_for(name: str) -> StageSpec:
    """The table row of stage ``name`` (``seg/...`` names share the ``seg`` row)."""
    key = "seg" if name.startswith(SEG) else name
    if key not in STAGES:
        generative = ", ".join(k for k in STAGES if k != "seg")
        raise InputError("STAGE", f"unknown stage {name!r}; stages: {generative}, seg/<arch>-<task>-<data>")
    return STAGES[key]


def stage_context(
    name: str,
    cfg: FoscuConfig,
    prepared: PreparedSet,
    run: RunFolder,
    device: torch.device,
    seed: int,
    synthetic: tuple[Path, ...] = (),
    synthetic_fraction: float | None = None,
    real_cases: tuple[str, ...] | None = None,
    synthetic_count: int | None = None,
    plan: Any = None,
) -> StageContext:
    """The context stage ``name``'s recipe reads: its settings, and earlier stages through this module (the
    latent caches with the section's ``augment_copies``, where it has them)."""
    copies = getattr(getattr(cfg, spec_for(name).section), "augment_copies", 0)
    return StageContext(
        name,
        cfg,
        spec_for(name).section,
        prepared,
        run,
        device,
        seed,
        load=partial(load_stage, run),
        info=lambda stage: read_stage_info(run.stage(stage)),
        latents=partial(latent_cache, run, prepared, seed, copies=copies),
        synthetic=synthetic,
        synthetic_fraction=synthetic_fraction,
        real_cases=real_cases,
        synthetic_count=synthetic_count,
        plan=plan,
    )


def latent_cache(run: RunFolder, prepared: PreparedSet, seed: int, encoder: str, copies: int = 0) -> Path:
    """RUN/latents/<kind>.safetensors from the encoder now in the run (built once, reused later); with
    ``copies`` augmented copies of each training case: RUN/latents/<kind>-aug<copies>.safetensors."""
    kind = spec_for(encoder).latents
    assert kind is not None, f"{encoder} is not an encoder"
    path = run.latents(f"{kind}-aug{copies}" if copies else kind)
    model, augmentation = run.model(encoder), latent_augment.settings(copies, seed) if copies else None
    dist = distributed.current()
    if dist.is_main and not latents.cache_is_current(path, model, augmentation):
        nets, _, info = load_stage(run, encoder)
        latents.build_cache(
            path,
            nets["autoencoder"],
            model,
            {s: load_split(prepared, s) for s in latents.SPLITS},
            "label" if info["channels"] > 1 else "image",
            len(prepared.labels),
            dist.device,
            seed,
            copies,
            prepared.spacing,
        )
    distributed.barrier()
    return path


# ---------------------------------------------------------------- reading stages back from their folders


def read_stage_info(folder: Path) -> dict[str, Any]:
    """A stage folder's config.yaml: its name, config section, ROI, labels and what its recipe recorded."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise InputError(folder, f"stage {Path(folder).name} has not been trained here (no {CONFIG})")
    try:
        info = yaml.safe_load(path.read_text())
        spec_for(str(info["stage"]))
    except (yaml.YAMLError, KeyError, TypeError) as err:
        raise InputError(path, f"not a stage config ({type(err).__name__}: {err})") from None
    return dict(info)


def load_stage_folder(folder: Path) -> tuple[dict[str, nn.Module], dict[str, Any], dict[str, Any]]:
    """A trained stage's networks (weights loaded, eval mode), its weights' metadata and its config.yaml."""
    folder = Path(folder)
    model = folder / MODEL
    info = read_stage_info(folder)
    if not model.is_file():
        raise InputError(folder, f"stage {info['stage']} has no {model.name}: train it first")
    nets = spec_for(str(info["stage"])).build(info)
    meta = load_weights(model, nets)
    for net in nets.values():
        net.eval().requires_grad_(False)
    return nets, meta, info


def load_stage(run: RunFolder, name: str) -> tuple[dict[str, nn.Module], dict[str, Any], dict[str, Any]]:
    """``load_stage_folder`` of the run's stage ``name`` (its folder name: ``controlnet``, ``seg/...``)."""
    return load_stage_folder(run.stage(name))


# ---------------------------------------------------------------- checks, before anything is written


def check_run_data(run: RunFolder, prepared: PreparedSet) -> dict[str, Any]:
    """A run belongs to one prepared ROI and label map; a different one is refused. Returns the identity
    run.json records (written with the stage's first files, so a refused stage leaves nothing)."""
    identity = {
        "data": str(prepared.root),
        "roi": list(prepared.roi),
        "spacing": list(prepared.spacing),
        "labels": prepared.labels,
    }
    if run.identity.is_file():
        import json

        known = json.loads(run.identity.read_text())
        for key in ("roi", "labels"):
            if known.get(key) != identity[key]:
                raise InputError(
                    run.identity,
                    f"this run was made for {key} {known.get(key)}, but {prepared.root} has "
                    f"{identity[key]}: use a new --run folder",
                )
    return identity


def check_prerequisites(run: RunFolder, name: str, cfg: FoscuConfig) -> None:
    for need in spec_for(name).needs(cfg):
        if not run.is_trained(need):
            raise InputError(
                run.stage(need),
                f"{name} needs stage {need}, which is not trained in this run: "
                f"run `foscu train {need}` first",
            )


BUDGET = ("steps", "epochs")  # train settings a resume may change: it may train longer, nothing else


# keys added after stage folders were first recorded, at the values that keep the behaviour of before: a
# folder recorded without them resumes under a config that leaves them so
ADDED: dict[str, Any] = {
    "keep_best": False,
    "augment_copies": 0,
    "structure_weight": 0.0,
    **{"val_draws": 1, "tumor_condition": False},  # LDMs and ControlNet; label LDM
    **{"pretrained": None, "maisi": {}, "weights": None, "freeze": False, "intensity": None},  # MAISI
    "batch_dice": False,  # segmentation
}
ADDED_TRAIN = {"warmup_steps": 0, "lr_schedule": "constant", "min_lr_ratio": 0.0}


def _settings(section: dict[str, Any]) -> dict[str, Any]:
    """A stage's section without the training length (``train.steps``/``train.epochs``), keys added since
    at their old-behaviour values where the section lacks them."""
    train = {k: v for k, v in {**ADDED_TRAIN, **section.get("train", {})}.items() if k not in BUDGET}
    return {**ADDED, **section, "train": train}


def check_resume(run: RunFolder, folder: str, section: dict[str, Any], resume: bool) -> None:
    """A stopped (or finished) stage continues only with --resume, and only with the settings it started
    with, except the training length: ``--resume --set <section>.train.steps=N`` trains it further."""
    if not resume:
        if run.state(folder).is_file():
            raise InputError(
                run.stage(folder),
                "an earlier run stopped here: pass --resume to continue it, or remove the folder",
            )
        return
    if not run.state(folder).is_file():
        raise InputError(
            run.stage(folder), f"nothing to resume: no {run.state(folder).name} (train without --resume)"
        )
    old = run.config(folder)
    if old.is_file():
        recorded = yaml.safe_load(old.read_text())
        # older segmentation folders recorded their section under "segmentation"
        if _settings(recorded.get("section", recorded.get("segmentation"))) != _settings(section):
            raise InputError(
                old, "the stage's config differs from the run being resumed (only train.steps/epochs may)"
            )


# ---------------------------------------------------------------- the one entry point


def train_stage(
    name: str,
    cfg: FoscuConfig,
    data: Path,
    run_root: Path,
    resume: bool = False,
    progress: bool = True,
    folder_name: str | None = None,
    *,
    seed: int | None = None,
    synthetic: list[Path] | None = None,
    synthetic_fraction: float | None = None,
    real_cases: list[str] | None = None,
    synthetic_count: int | None = None,
    plan: Any = None,
) -> FitResult:
    """Train stage ``name`` into ``RUN/<folder_name or name>/`` through the one engine.

    ``folder_name`` lets ablations sit side by side (``controlnet-label_latent``); ``seed`` (default
    ``cfg.seed``) seeds weights, batch order and augmentation; ``synthetic`` sets join a segmentation
    stage's training split, ``synthetic_fraction`` synthetic cases per real one; ``real_cases`` (case ids)
    keeps a subset of the real training split and ``synthetic_count`` draws that many synthetic cases.
    ``plan`` a Table II protocol's phase (protocols.Phase) that says what a segmentation stage trains on.
    """
    spec = spec_for(name)
    dist = distributed.setup()
    prepared = read_prepared(Path(data))
    run = RunFolder(run_root)
    folder = folder_name or name
    seed = cfg.seed if seed is None else seed
    section = getattr(cfg, spec.section).model_dump(mode="json", exclude=set(TABLE2_ONLY))
    check_prerequisites(run, name, cfg)
    identity = check_run_data(run, prepared)
    check_resume(run, folder, section, resume)
    torch.manual_seed(seed)
    ctx = stage_context(
        name,
        cfg,
        prepared,
        run,
        dist.device,
        seed,
        tuple(synthetic or ()),
        synthetic_fraction,
        None if real_cases is None else tuple(real_cases),
        synthetic_count,
        plan,
    )
    recipe = spec.recipe(ctx)
    info = {
        "stage": name,
        "section": section,
        **recipe.info,
        "roi": list(prepared.roi),
        "spacing": list(prepared.spacing),
        "labels": prepared.labels,
        "seed": seed,
        "provenance": provenance(seed),
    }
    if dist.is_main:
        if not run.identity.is_file():
            write_json_atomic(run.identity, identity)
        write_text_atomic(run.run_config, dump_config(cfg))
        write_text_atomic(run.config(folder), yaml.safe_dump(info, sort_keys=False))
    if not recipe.trainable:  # a frozen pretrained network: validated and written, no optimizer step
        return frozen.deliver(run.stage(folder), recipe)
    return fit(
        run.stage(folder),
        recipe,
        getattr(cfg, spec.section).train,
        seed=seed,
        resume=resume,
        description=folder,
        progress=progress,
    )


def train_segmenter(
    arch: str,
    task: Task,
    cfg: FoscuConfig,
    prepared_root: Path,
    run_folder: Path,
    synthetic: list[Path] | None = None,
    synthetic_fraction: float | None = None,
    resume: bool = False,
    progress: bool = True,
    seed: int | None = None,
    *,
    real_cases: list[str] | None = None,
    synthetic_count: int | None = None,
    plan: Any = None,
    tag: str | None = None,
) -> tuple[Path, FitResult]:
    """Train ``arch`` for ``task`` as stage ``seg/<arch>-<task>-<real|real+synthetic>[-n<k>][-seed<k>]``.

    Synthetic sets (nnU-Net layout) join the training split only, ``synthetic_fraction`` synthetic cases
    per real training case (default: the config's). ``seed`` (default: the config's) seeds weights, batch
    order, augmentation and the synthetic draw; another seed than the config's trains into
    ``...-seed<seed>/``. ``real_cases`` (case ids of the training split) trains on those real cases only,
    into ``...-n<len(real_cases)>...`` (an empty list: synthetic cases only); ``synthetic_count`` draws that
    many synthetic cases at any real count instead of the fraction. ``plan``: a Table II protocol's phase
    (protocols.Phase): its cases, class mask and starting weights, its tag in the stage name. ``tag``: the
    data part of the name for a run without a plan (segmentation.train.PLAIN_TAGS; default ``real`` or
    ``real+synthetic``). Returns the stage folder and the engine's result.
    """
    check_task(task)
    other_seed = None if seed is None or seed == cfg.seed else seed
    n = None if real_cases is None else len(real_cases)
    data = plan.tag if plan is not None else (tag or bool(synthetic))
    name = seg_stage(run_name(arch, task, data, other_seed, n))
    result = train_stage(
        name,
        cfg,
        prepared_root,
        run_folder,
        resume,
        progress,
        seed=seed,
        synthetic=synthetic,
        synthetic_fraction=synthetic_fraction,
        real_cases=real_cases,
        synthetic_count=synthetic_count,
        plan=plan,
    )
    return RunFolder(run_folder).stage(name), result
