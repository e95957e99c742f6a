"""``foscu experiment``: the paper's whole protocol as an ordered list of steps over one run folder.

Every step names the files it makes; a step whose outputs exist is skipped, so an interrupted experiment
resumes where it stopped, and ``only`` selects a subset by group (train, sample, table1, fidelity, table2,
report). Steps talk only through files in the run folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import numpy as np

from foscu.config import FoscuConfig, load_config
from foscu.errors import InputError
from foscu.runs import RunFolder, write_json_atomic

GROUPS = ("train", "sample", "table1", "fidelity", "table2", "report")
CONDITIONS = ("label_latent", "label_downsampled", "label_fullres")
GENERATIVE_STAGES = ("label-vae", "image-vae", "label-ldm", "image-ldm", "controlnet", "vqvae", "vqvae-ldm")


@dataclass
class Step:
    name: str
    group: str
    outputs: list[Path]
    run: Callable[[], Any]

    def done(self) -> bool:
        return bool(self.outputs) and all(p.exists() for p in self.outputs)


def _say(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)


def ablation_folder(condition: str) -> str:
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
        self.n_samples = cfg.sample.n or self.n_training
        self.ev = self.run.evaluation

    # ------------------------------------------------------------ steps

    def steps(self) -> list[Step]:
        cfg, run = self.cfg, self.run
        steps = [
            Step(f"train {s}", "train", [run.stage(s) / "metrics.json"], self._train(s))
            for s in GENERATIVE_STAGES
        ]
        others = [c for c in CONDITIONS if c != cfg.controlnet.condition] if cfg.experiment.ablation else []
        for condition in others:
            folder = ablation_folder(condition)
            steps.append(
                Step(
                    f"train {folder}",
                    "train",
                    [run.stage(folder) / "metrics.json"],
                    self._train("controlnet", condition, folder),
                )
            )
        steps += [
            Step(
                "sample Duo-Diffusion",
                "sample",
                [run.samples / "samples.json"],
                lambda: self._sample("duo", run.samples, self.n_samples),
            ),
            Step(
                "sample 3D-LDM w/ VAE",
                "sample",
                [self._baseline("image-ldm") / "samples.json"],
                lambda: self._sample("image-ldm", self._baseline("image-ldm"), self.n_samples),
            ),
            Step(
                "sample 3D-LDM w/ VQ-VAE",
                "sample",
                [self._baseline("vqvae-ldm") / "samples.json"],
                lambda: self._sample("vqvae-ldm", self._baseline("vqvae-ldm"), self.n_samples),
            ),
            Step(
                "reconstruct with the image VAE",
                "sample",
                [self._baseline("vae-reconstruction") / "dataset.json"],
                self._reconstruct,
            ),
        ]
        n_ablation = cfg.experiment.ablation_samples or self.n_samples
        for condition in others:
            out = run.root / "ablation" / condition
            steps.append(
                Step(
                    f"sample ablation {condition}",
                    "sample",
                    [out / "samples.json"],
                    partial(self._sample, "duo", out, n_ablation, ablation_folder(condition)),
                )
            )
        steps += [
            Step("Table I (2.5D Fréchet distances)", "table1", [self.ev / "table1.json"], self._table1),
            Step(
                "pair fidelity, diversity, memorization",
                "fidelity",
                [self.ev / "pair_fidelity.json", self.ev / "diversity.json", self.ev / "memorization.json"],
                self._fidelity,
            ),
            Step("Table II (segmentation grid)", "table2", [self.ev / "table2.json"], self._table2),
            Step("report", "report", [], self._report),
        ]
        return steps

    def _baseline(self, name: str) -> Path:
        return self.run.root / "baselines" / name

    def _train(
        self, stage: str, condition: str | None = None, folder: str | None = None
    ) -> Callable[[], Any]:
        def run() -> Any:
            from foscu.generative.stages import train_stage

            cfg = self.cfg
            if condition is not None:
                cfg = cfg.model_copy(
                    update={"controlnet": cfg.controlnet.model_copy(update={"condition": condition})}
                )
            resume = (self.run.stage(folder or stage) / "train_state.pt").is_file()
            return train_stage(
                stage,
                cfg,
                self.data,
                self.run.root,
                resume=resume,
                progress=self.progress,
                folder_name=folder,
            )

        return run

    def _sample(self, model: str, out: Path, n: int, controlnet: str = "controlnet") -> None:
        import shutil

        from foscu.generative.sampling import generate

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
            model=model,
            controlnet_folder=controlnet,
            batch_size=s.batch_size,
            progress=self.progress,
        )

    def _reconstruct(self) -> None:
        """VAE reconstructions of the real training images: the reference row of Table I."""
        import torch

        from foscu.data.layout import image_path, write_dataset_json
        from foscu.data.nifti import write_nifti
        from foscu.engine import distributed
        from foscu.generative.autoencoders import decode, encode
        from foscu.generative.stages import load_stage
        from foscu.runs import atomic_folder

        device = distributed.current().device
        vae = load_stage(self.run, "image-vae")[0]["autoencoder"].to(device)
        affine = np.diag([*self.prepared.spacing, 1.0])
        with atomic_folder(self._baseline("vae-reconstruction"), overwrite=True) as tmp, torch.no_grad():
            for case_id, image in self.real_training.items():
                x = torch.from_numpy(image)[None, None].to(device)  # (1, 1, X, Y, Z)
                recon = decode(vae, encode(vae, x)[0]).float().clamp(0, 1)[0, 0].cpu().numpy()
                write_nifti(image_path(tmp, case_id), recon, affine)
            write_dataset_json(
                tmp, "FOSCU image-VAE reconstructions", len(self.real_training), labels=self.prepared.labels
            )

    # ------------------------------------------------------------ evaluation

    @cached_property
    def real_training(self) -> dict[str, np.ndarray]:
        """The real training images, read once for Table I, diversity and the memorization audit."""
        from foscu.data.loaders import load_split

        volumes = load_split(self.prepared, "training")
        return {c: v[0].numpy() for c, v in zip(volumes.case_ids, volumes.images, strict=True)}

    def _table1(self) -> None:
        from foscu.evaluation.fid import fid_25d, read_volumes, set_features

        e = self.cfg.evaluation
        # the real set's slice features once, for every row (on the run's device for a network)
        real = set_features(list(self.real_training.values()), e.features, e.slice_stride, e.central_fraction)
        rows, metric, note = [], "FRD", ""
        sets = [
            ("3D-LDM w/ VQ-VAE", self._baseline("vqvae-ldm")),
            ("3D-LDM w/ VAE", self._baseline("image-ldm")),
            (f"Duo-Diffusion ({self.cfg.controlnet.condition})", self.run.samples),
            ("VAE reconstruction (reference)", self._baseline("vae-reconstruction")),
        ]
        sets += [
            (f"ablation: ControlNet on {c}", self.run.root / "ablation" / c)
            for c in CONDITIONS
            if (self.run.root / "ablation" / c).is_dir()
        ]
        for method, folder in sets:
            result = fid_25d(real, read_volumes(folder), e.features, e.slice_stride, e.central_fraction)
            metric, note = result["metric"], result["note"]
            rows.append(
                {
                    "method": method,
                    "axial": result["axial"],
                    "coronal": result["coronal"],
                    "sagittal": result["sagittal"],
                    "mean": result["mean"],
                    "n": result["n_fake"],
                }
            )
        write_json_atomic(
            self.ev / "table1.json",
            {
                "rows": rows,
                "metric": metric,
                "note": f"{metric} per plane against the {real.n_volumes} real training images (lower is better). {note}",
            },
        )

    def _segmenter(self) -> Path:
        """The real-only multiclass segmenter of the Table II grid, trained here if the grid has not yet."""
        from foscu.segmentation.train import train_segmenter

        arch = self.cfg.segmentation.archs[0]
        folder = self.run.seg(arch, "multiclass", "real")
        if not (folder / "metrics.json").is_file():
            resume = (folder / "train_state.pt").is_file()
            train_segmenter(
                arch, "multiclass", self.cfg, self.data, self.run.root, resume=resume, progress=self.progress
            )
        return folder

    def _fidelity(self) -> None:
        import shutil

        from foscu.evaluation.fid import read_volumes
        from foscu.evaluation.fidelity import diversity, memorization_audit
        from foscu.evaluation.segmentation_metrics import evaluate_segmentation
        from foscu.segmentation.predict import predict_folder

        segmenter = self._segmenter()
        rows: list[dict[str, Any]] = []
        sets: list[tuple[str, Path]] = [(self.cfg.controlnet.condition, self.run.samples)]
        sets += [
            (c, self.run.root / "ablation" / c)
            for c in CONDITIONS
            if (self.run.root / "ablation" / c).is_dir()
        ]
        for condition, folder in sets:
            pred = self.ev / "pair_fidelity" / condition
            if pred.exists():
                shutil.rmtree(pred)
            predict_folder(segmenter, folder, pred, progress=self.progress)
            metrics = evaluate_segmentation(
                pred, folder, "multiclass", self.ev / "pair_fidelity" / f"{condition}.json"
            )
            row: dict[str, Any] = {"condition": condition, "samples": len(metrics["cases"])}
            for name, value in metrics["mean"].items():
                if isinstance(value, dict) and "dice" in value:
                    row[f"dice {name}"] = value["dice"]
            row["dice mean"] = metrics["foreground_mean"]["dice"]
            rows.append(row)
        best = max(rows, key=lambda r: r["dice mean"] if r["dice mean"] is not None else -1)
        write_json_atomic(
            self.ev / "pair_fidelity.json",
            {
                "rows": rows,
                "best_condition": best["condition"],
                "note": f"Dice of a real-only {segmenter.name} segmenter on synthetic images against the labels they "
                f"were generated from (nnU-Net empty-class convention); best conditioning: {best['condition']}",
            },
        )
        real = self.real_training
        synthetic = read_volumes(self.run.samples)
        div_rows = [
            {"set": "real training", **diversity(list(real.values()))},
            {"set": "Duo-Diffusion samples", **diversity(synthetic)},
        ]
        write_json_atomic(self.ev / "diversity.json", {"rows": div_rows, "note": "MS-SSIM over random pairs"})
        ids = sorted(
            p.name[: -len("_0000.nii.gz")] for p in (self.run.samples / "imagesTr").glob("*_0000.nii.gz")
        )
        from foscu.data.loaders import load_split

        held_out = {}  # validation + test: patients the generator never saw set the near-copy threshold
        for split in ("validation", "test"):
            volumes = load_split(self.prepared, split)
            held_out.update({c: v[0].numpy() for c, v in zip(volumes.case_ids, volumes.images, strict=True)})
        audit = memorization_audit(dict(zip(ids, synthetic, strict=True)), real, held_out)
        write_json_atomic(self.ev / "memorization.json", audit)

    def _table2(self) -> None:
        from foscu.segmentation.grid import run_table2

        run_table2(self.cfg, self.data, self.run.root, self.run.samples)

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
    record_path = protocol.run.root / "experiment.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    times = {**record.get("timings", {}), **(timings or {})}
    report = protocol.run.root / "report.html"
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
                "config": cfg.preset if config in ("tiny", "demo", "paper") else config,
                "overrides": list(overrides),
                "data": str(Path(data).resolve()),
                "timings": times,
            },
        )
    return report
