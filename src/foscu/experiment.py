"""``foscu experiment``: the paper's whole protocol as an ordered list of steps over one run folder.

Every step names the files it makes; a step whose outputs exist is skipped, so an interrupted experiment
resumes where it stopped, and ``only`` selects a subset by group (train, sample, table1, fidelity, table2,
scarcity, report); the data-scarcity curve (scarcity.py) is a step only where ``scarcity.n`` lists counts. Steps talk only through files in the run folder; the evaluation steps are in evidence.py.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from foscu.config import PRESETS, FoscuConfig, load_config
from foscu.errors import InputError
from foscu.evidence import CONDITIONS, Evidence
from foscu.runs import RunFolder, write_json_atomic
from foscu.stages import STAGES

GROUPS = ("train", "sample", "table1", "fidelity", "table2", "scarcity", "report")
BASELINE_STAGES = ("vqvae", "vqvae-ldm")  # Table I's 3D-LDM w/ VQ-VAE
# the training order: Duo-Diffusion's stages as the stage table lists them, then the VQ-VAE baseline's
GENERATIVE_STAGES = (*(s for s in STAGES if s != "seg" and s not in BASELINE_STAGES), *BASELINE_STAGES)
SAMPLES_RECORD = "samples.json"  # written with a sample folder by generate: the folder is complete
DATASET_RECORD = "dataset.json"  # written with a reconstruction folder: the folder is complete


@dataclass
class Step:
    name: str
    group: str
    outputs: list[Path]
    run: Callable[[], Any]

    def done(self) -> bool:
        return bool(self.outputs) and all(p.exists() for p in self.outputs)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ablation_folder(condition: str) -> str:
    """The stage folder of the ControlNet trained on ``condition`` for the ablation."""
    return f"controlnet-{condition}"


class Protocol:
    """The steps of one experiment, built from the config, the prepared set and the run folder."""

    def __init__(self, cfg: FoscuConfig, data: Path, run: Path, progress: bool = True) -> None:
        from foscu.data.prepare import read_prepared

        self.cfg, self.data, self.run = cfg, Path(data), RunFolder(run)
        self.prepared = read_prepared(self.data)
        self.progress = progress
        self.n_training = len(self.prepared.datalist.get("training", []))
        if self.n_training < 2:
            raise InputError(self.data / "datalist.json", "the experiment needs at least 2 training cases")
        self.n_samples = self._duo_samples(cfg)
        self.evidence = Evidence(cfg, self.data, self.prepared, self.run, progress)

    def _duo_samples(self, cfg: FoscuConfig) -> int:
        """``sample.n`` (default: one per training case); with ``synthetic_per_seed`` at least enough for
        every Table II seed to draw its own ``synthetic_fraction`` x n_training pairs from the one pool."""
        from foscu.table2 import seed_list

        n = cfg.sample.n or self.n_training
        seg = cfg.segmentation
        if seg.synthetic_per_seed and seg.protocols != ["real"]:
            n = max(n, int(round(seg.synthetic_fraction * self.n_training)) * len(seed_list(cfg)))
        return n

    def steps(self) -> list[Step]:
        """The protocol in the order it runs: train, sample, Table I, fidelity, Table II, report."""
        run, ev = self.run, self.evidence
        n, n_ablation = self.n_samples, self.cfg.experiment.ablation_samples or self.n_samples
        others = self.ablation_conditions()
        return [
            *(self._train_step(stage) for stage in GENERATIVE_STAGES),
            *(self._train_step("controlnet", condition) for condition in others),
            self._sample_step("sample Duo-Diffusion", "duo", run.samples, n),
            self._sample_step("sample 3D-LDM w/ VAE", "image-ldm", run.baseline("image-ldm"), n),
            self._sample_step("sample 3D-LDM w/ VQ-VAE", "vqvae-ldm", run.baseline("vqvae-ldm"), n),
            Step(
                "reconstruct with the image VAE",
                "sample",
                [run.baseline("vae-reconstruction") / DATASET_RECORD],
                ev.reconstruct_training,
            ),
            Step(
                "ladder: reconstruct the test images",
                "sample",
                [run.ladder("vae") / DATASET_RECORD],
                ev.reconstruct_test,
            ),
            Step(
                "ladder: images from the real test masks",
                "sample",
                [run.ladder("mask_to_image") / SAMPLES_RECORD],
                self._mask_to_image,
            ),
            *(
                self._sample_step(
                    f"sample ablation {c}", "duo", run.ablation(c), n_ablation, ablation_folder(c)
                )
                for c in others
            ),
            *self._lesion_steps(),
            Step("Table I (2.5D Fréchet distances)", "table1", [run.evidence("table1")], ev.table1),
            Step(
                "pair fidelity, diversity, memorization",
                "fidelity",
                [run.evidence("pair_fidelity"), run.evidence("diversity"), run.evidence("memorization")],
                ev.fidelity,
            ),
            Step("fidelity ladder", "fidelity", [run.evidence("ladder")], ev.ladder),
            Step("label realism", "fidelity", [run.evidence("label_realism")], ev.label_realism),
            Step("Table II (segmentation grid)", "table2", [run.evidence("table2")], self._table2),
            *self._scarcity_steps(),
            Step("report", "report", [], self._report),
        ]

    def ablation_conditions(self) -> list[str]:
        """The conditionings the ablation trains a ControlNet on: all but the config's (none if off)."""
        if not self.cfg.experiment.ablation:
            return []
        return [c for c in CONDITIONS if c != self.cfg.controlnet.condition]

    # ------------------------------------------------------------ training

    def _train_step(self, stage: str, condition: str | None = None) -> Step:
        folder = stage if condition is None else ablation_folder(condition)
        return Step(
            f"train {folder}", "train", [self.run.metrics(folder)], partial(self._train, stage, condition)
        )

    def _train(self, stage: str, condition: str | None) -> Any:
        """Train ``stage`` (resuming a stopped one); a ControlNet on another ``condition`` has its own folder."""
        from foscu.stages import train_stage

        cfg, folder = self.cfg, None
        if condition is not None:
            cfg = cfg.model_copy(
                update={"controlnet": cfg.controlnet.model_copy(update={"condition": condition})}
            )
            folder = ablation_folder(condition)
        return train_stage(
            stage,
            cfg,
            self.data,
            self.run.root,
            resume=self.run.is_stopped(folder or stage),
            progress=self.progress,
            folder_name=folder,
        )

    # ------------------------------------------------------------ sampling

    def _sample_step(self, name: str, model: str, out: Path, n: int, controlnet: str = "controlnet") -> Step:
        action = partial(self._generate, out, n, model=model, controlnet_folder=controlnet)
        return Step(name, "sample", [out / SAMPLES_RECORD], action)

    def _generate(self, out: Path, n: int, **options: Any) -> None:
        """``foscu sample`` into ``out`` with the config's sampler, steps, seed and batch size."""
        import shutil

        from foscu.generative.generate import generate

        if out.exists():  # a half-finished folder from an interrupted step (samples.json marks done)
            shutil.rmtree(out)
        s = self.cfg.sample
        generate(
            self.run.root,
            n,
            out,
            s.sampler,
            s.steps,
            self.cfg.seed,
            batch_size=s.batch_size,
            progress=self.progress,
            **options,
        )

    def _lesion_steps(self) -> list[Step]:
        """Lesion synthesis on the real training cases, where Table II lists the ``lesions`` protocol."""
        if "lesions" not in self.cfg.segmentation.protocols:
            return []
        from foscu.protocols import LESIONS

        out = self.run.root / LESIONS
        return [
            Step(
                "lesion synthesis on real cases",
                "sample",
                [out / SAMPLES_RECORD],
                partial(self._lesions, out),
            )
        ]

    def _lesions(self, out: Path) -> None:
        """``foscu lesions --run RUN --data PREPARED --out RUN/lesions`` with the config's settings."""
        from foscu.figures_lesions import write_before_after
        from foscu.generative.lesion_synthesis import synthesize_lesions

        les, s = self.cfg.segmentation.lesions, self.cfg.sample
        synthesize_lesions(
            self.run.root,
            self.data,
            out,
            n_per_case=les.n_per_case,
            seed=self.cfg.seed,
            method=les.method,
            margin=les.margin,
            sampler=s.sampler,
            steps=s.steps,
            progress=self.progress,
        )
        write_before_after(out)

    def _mask_to_image(self) -> None:
        """Rung (c): one image per real test mask, through the ControlNet (``foscu sample --labels``)."""
        import shutil

        from foscu.data.layout import label_path

        masks = self.run.ladder("test_masks")
        if masks.exists():
            shutil.rmtree(masks)
        for case_id, (_, label) in self.evidence.test_files().items():
            target = label_path(masks, case_id)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(label, target)
        self._generate(self.run.ladder("mask_to_image"), 0, labels_dir=masks)

    # ------------------------------------------------------------ Table II and the report

    def _table2(self) -> None:
        from foscu.table2 import run_table2

        run_table2(self.cfg, self.data, self.run.root, self.run.samples)

    def _scarcity_steps(self) -> list[Step]:
        """The data-scarcity curve, where the config lists counts (its cells resume one by one)."""
        if not self.cfg.scarcity.n:
            return []
        from foscu.scarcity import run_scarcity

        action = partial(run_scarcity, self.cfg, self.data, self.run.root, self.progress)
        return [Step("data-scarcity curve", "scarcity", [self.run.evidence("scarcity")], action)]

    def _report(self) -> Path:
        from foscu.report import build_report

        return build_report(self.run.root)[0]


def run_experiment(
    config: str,
    data: Path,
    run: Path,
    overrides: Sequence[str] = (),
    only: Sequence[str] = (),
    timings: dict[str, float] | None = None,
    progress: bool = True,
) -> Path:
    """Run (or resume) the whole protocol; returns the report's path."""
    bad = set(only) - set(GROUPS)
    if bad:
        raise InputError("--only", f"unknown step groups {sorted(bad)}; groups: {', '.join(GROUPS)}")
    cfg = load_config(config, list(overrides))
    protocol = Protocol(cfg, data, run, progress)
    record_path = protocol.run.experiment_record
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    times = {**record.get("timings", {}), **(timings or {})}
    report = protocol.run.report_html
    for step in protocol.steps():
        if only and step.group not in only:
            continue
        if step.done():
            _say(f"[skip] {step.name}: outputs exist")
            continue
        _say(f"[step] {step.name}")
        start = time.perf_counter()
        result = step.run()
        times[step.name] = round(time.perf_counter() - start, 1)
        if step.group == "report":
            report = result
        write_json_atomic(
            record_path,
            {
                "config": cfg.preset if config in PRESETS else config,
                "overrides": list(overrides),
                "data": str(Path(data).resolve()),
                "timings": times,
            },
        )
    return report
