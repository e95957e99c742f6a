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

from foscu.config import PRESETS, FoscuConfig, load_config
from foscu.errors import InputError
from foscu.runs import RunFolder, write_json_atomic

GROUPS = ("train", "sample", "table1", "fidelity", "table2", "report")
CONDITIONS = ("label_latent", "label_downsampled", "label_fractions", "label_fullres")
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
                lambda: self._reconstruct(self.real_training, self._baseline("vae-reconstruction")),
            ),
            Step(
                "ladder: reconstruct the test images",
                "sample",
                [self._ladder_dir("vae") / "dataset.json"],
                lambda: self._reconstruct(self.real_test, self._ladder_dir("vae"), self._test_affines()),
            ),
            Step(
                "ladder: images from the real test masks",
                "sample",
                [self._ladder_dir("mask_to_image") / "samples.json"],
                self._mask_to_image,
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
            Step("fidelity ladder", "fidelity", [self.ev / "ladder.json"], self._ladder),
            Step("label realism", "fidelity", [self.ev / "label_realism.json"], self._label_realism),
            Step("Table II (segmentation grid)", "table2", [self.ev / "table2.json"], self._table2),
            Step("report", "report", [], self._report),
        ]
        return steps

    def _baseline(self, name: str) -> Path:
        return self.run.root / "baselines" / name

    def _ladder_dir(self, rung: str) -> Path:
        return self.run.root / "ladder" / rung

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

    def _test_affines(self) -> dict[str, np.ndarray]:
        from foscu.data.nifti import read_nifti

        return {c: read_nifti(label, label=True).affine for c, (_, label) in self._test_files().items()}

    def _reconstruct(
        self, images: dict[str, np.ndarray], out: Path, affines: dict[str, np.ndarray] | None = None
    ) -> None:
        """Image-VAE reconstructions of real images: Table I's reference row, and the ladder's rung (b)."""
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
        with atomic_folder(out, overwrite=True) as tmp, torch.no_grad():
            for case_id, image in images.items():
                x = torch.from_numpy(image)[None, None].to(device)  # (1, 1, X, Y, Z)
                recon = decode(vae, encode(vae, x)[0]).float().clamp(0, 1)[0, 0].cpu().numpy()
                write_nifti(image_path(tmp, case_id), recon, (affines or {}).get(case_id, affine))
            write_dataset_json(
                tmp, "FOSCU image-VAE reconstructions", len(images), labels=self.prepared.labels
            )

    # ------------------------------------------------------------ evaluation

    @cached_property
    def real_training(self) -> dict[str, np.ndarray]:
        """The real training images, read once for Table I, diversity and the memorization audit."""
        from foscu.data.loaders import load_split

        volumes = load_split(self.prepared, "training")
        return {c: v[0].numpy() for c, v in zip(volumes.case_ids, volumes.images, strict=True)}

    @cached_property
    def real_test(self) -> dict[str, np.ndarray]:
        """The real test images (the ladder's rungs (a) and (b))."""
        from foscu.data.loaders import load_split

        volumes = load_split(self.prepared, "test")
        if len(volumes) == 0:
            raise InputError(self.data / "datalist.json", "the fidelity ladder needs a test split")
        return {c: v[0].numpy() for c, v in zip(volumes.case_ids, volumes.images, strict=True)}

    def _test_files(self) -> dict[str, tuple[Path, Path]]:
        """Test case id -> (image path, label path) of the prepared set."""
        return {
            item["case_id"]: (Path(item["image"]), Path(item["label"]))
            for item in self.prepared.datalist["test"]
        }

    def _mask_to_image(self) -> None:
        """Rung (c): one image per real test mask, through the ControlNet (``foscu sample --labels``)."""
        import shutil

        from foscu.data.layout import label_path
        from foscu.generative.sampling import generate

        masks = self.run.root / "ladder" / "test_masks"
        out = self._ladder_dir("mask_to_image")
        for folder in (masks, out):
            if folder.exists():
                shutil.rmtree(folder)
        for case_id, (_, label) in self._test_files().items():
            target = label_path(masks, case_id)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(label, target)
        s = self.cfg.sample
        generate(
            self.run.root,
            0,
            out,
            s.sampler,
            s.steps,
            self.cfg.seed,
            labels_dir=masks,
            batch_size=s.batch_size,
            progress=self.progress,
        )

    def _table1(self) -> None:
        from foscu.evaluation.fid import fid_25d, paper_ordering, read_volumes, set_features

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
            result = fid_25d(
                real,
                read_volumes(folder),
                e.features,
                e.slice_stride,
                e.central_fraction,
                bootstrap=e.bootstrap,
                bootstrap_seed=self.cfg.seed,
            )
            metric, note = result["metric"], result["note"]
            rows.append(
                {
                    "method": method,
                    "axial": result["axial"],
                    "coronal": result["coronal"],
                    "sagittal": result["sagittal"],
                    "mean": result["mean"],
                    "mean_low": result.get("mean_low"),
                    "mean_high": result.get("mean_high"),
                    "n": result["n_fake"],
                }
            )
        interval = (
            f" mean_low-mean_high: percentile bootstrap 95 % interval of the mean, {e.bootstrap} resamples "
            "of each method's synthetic volumes (real set fixed); a resample repeats volumes, so the "
            "interval lies mostly above the point estimate."
            if e.bootstrap
            else " No intervals (evaluation.bootstrap: 0)."
        )
        write_json_atomic(
            self.ev / "table1.json",
            {
                "rows": rows,
                "metric": metric,
                "bootstrap": e.bootstrap,
                "ordering": paper_ordering(rows[2], rows[1], rows[0]),
                "note": f"{metric} per plane against the {real.n_volumes} real training images (lower is better)."
                f"{interval} {note}",
            },
        )

    def _segmenter(self) -> Path:
        """The real-only multiclass segmenter of the Table II grid, trained here if the grid has not yet."""
        from foscu.segmentation.train import run_name, train_segmenter

        arch = self.cfg.segmentation.archs[0]
        folder = self.run.seg(run_name(arch, "multiclass", False))
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

    def _predict(self, segmenter: Path, images: dict[str, Path], name: str) -> dict[str, Path]:
        from foscu.segmentation.predict import predict_cases

        return predict_cases(
            segmenter, images, self.ev / "ladder" / name, overwrite=True, progress=self.progress
        )

    def _ladder(self) -> None:
        """The fidelity ladder (evaluation/ladder.py): rungs (a)-(e) scored by one real-only segmenter."""
        from foscu.data.layout import case_files
        from foscu.data.nifti import read_nifti, write_nifti
        from foscu.evaluation import ladder
        from foscu.evaluation.segmentation_metrics import evaluate_cases

        segmenter = self._segmenter()
        test = self._test_files()
        pairs: dict[str, dict[str, tuple[Path, Path]]] = {}
        # (a) real test images and (b) their VAE reconstructions, against the real masks
        preds = self._predict(segmenter, {c: img for c, (img, _) in test.items()}, "real")
        pairs["real"] = {c: (preds[c], test[c][1]) for c in test}
        vae_images = case_files(self._ladder_dir("vae"), "images")
        preds = self._predict(segmenter, vae_images, "vae")
        pairs["vae"] = {c: (preds[c], test[c][1]) for c in vae_images}
        # (c) images generated from the real test masks, against those masks
        m2i = self._ladder_dir("mask_to_image")
        m2i_labels = case_files(m2i, "labels")
        preds = self._predict(segmenter, case_files(m2i, "images"), "mask_to_image")
        pairs["mask_to_image"] = {c: (preds[c], m2i_labels[c]) for c in m2i_labels}
        # (d) Duo-Diffusion pairs: generated label and its image
        duo_labels = case_files(self.run.samples, "labels")
        preds = self._predict(segmenter, case_files(self.run.samples, "images"), "duo")
        pairs["duo"] = {c: (preds[c], duo_labels[c]) for c in duo_labels}
        # (e) control: the images of (c) against another case's mask (needs two test cases)
        control_sources: dict[str, str] = {}
        if len(pairs["mask_to_image"]) >= 2:
            pairs["control"] = {}
            for case, (pred, other) in ladder.control_pairs(pairs["mask_to_image"]).items():
                # the other case's mask on this case's grid (each ROI has its own origin)
                moved = self.ev / "ladder" / "control_masks" / f"{case}.nii.gz"
                affine = read_nifti(pred, label=True).affine
                write_nifti(moved, read_nifti(other, label=True).array, affine, label=True)
                pairs["control"][case], control_sources[case] = (pred, moved), str(other)
        metrics = {rung: evaluate_cases(p, "multiclass") for rung, p in pairs.items()}
        rows = ladder.ladder_rows(metrics)
        if "control" in metrics:
            verdict = ladder.conditioning_verdict(metrics["mask_to_image"], metrics["control"])
            # how much the two masks of each control pair overlap: a perfect generator scores (a) on its own
            # mask and about (a) x this on the other one, so (c) - (e) can be at most about (a) x (1 - this)
            own = {c: (m2i_labels[c], p[1]) for c, p in pairs["control"].items()}
            overlap = evaluate_cases(own, "multiclass")["mean"]["liver"]["dice"]
            verdict["mask_overlap_liver"] = overlap
            if overlap is not None:
                verdict["text"] += (
                    f" (The real masks of the control pairs themselves overlap with liver Dice {overlap:.2f}.)"
                )
        else:
            verdict = {
                "working": None,
                "text": "The conditioning cannot be judged: one test case, no control.",
            }
        verdict["response"] = self._conditioning_response(test)
        write_json_atomic(
            self.ev / "ladder.json",
            {
                "rows": rows,
                "conditioning": verdict,
                "where_lost": ladder.where_lost(rows),
                "segmenter": segmenter.name,
                "images": {
                    "real": "prepared test images",
                    "vae": str(self._ladder_dir("vae")),
                    "mask_to_image": str(m2i),
                    "duo": str(self.run.samples),
                    "control": str(m2i),
                },
                "cases": {
                    rung: {c: [str(a), str(b)] for c, (a, b) in p.items()} for rung, p in pairs.items()
                },
                "per_case": {rung: m["cases"] for rung, m in metrics.items()},
                "control_masks_from": control_sources,
                "note": f"Dice (nnU-Net empty-class rule) of the real-only {segmenter.name} segmenter; "
                "fraction = rung / (a) per class",
            },
        )

    def _conditioning_response(self, test: dict[str, tuple[Path, Path]]) -> dict[str, Any]:
        """Two test masks, one seed: how much, and where, the generated image changes with the mask."""
        from foscu.data.nifti import read_nifti
        from foscu.generative.conditioning import conditioning_response
        from foscu.generative.sampling import load_pipeline

        pipe = load_pipeline(self.run.root)
        pipe.decode_patch = self.cfg.sample.decode_patch
        masks = {c: label for c, (_, label) in sorted(test.items())}
        for item in self.prepared.datalist["training"]:  # a second mask where the test split has one case
            masks.setdefault(item["case_id"], Path(item["label"]))
        cases = list(masks)[:2]
        a, b = (read_nifti(masks[c], label=True).array for c in cases)
        s = self.cfg.sample
        return {"cases": cases, **conditioning_response(pipe, a, b, self.cfg.seed, s.sampler, s.steps)}

    def _label_realism(self) -> None:
        """Shape statistics of the Duo-Diffusion labels against the real training labels."""
        from foscu.data.layout import case_files
        from foscu.data.loaders import load_split
        from foscu.data.nifti import read_nifti
        from foscu.evaluation.label_realism import label_realism

        real = load_split(self.prepared, "training")
        real_labels = {c: v.numpy() for c, v in zip(real.case_ids, real.labels, strict=True)}
        generated = {
            c: read_nifti(p, label=True).array for c, p in case_files(self.run.samples, "labels").items()
        }
        write_json_atomic(
            self.ev / "label_realism.json", label_realism(real_labels, generated, self.prepared.spacing)
        )

    def _table2(self) -> None:
        from foscu.table2 import run_table2

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
                "config": cfg.preset if config in PRESETS else config,
                "overrides": list(overrides),
                "data": str(Path(data).resolve()),
                "timings": times,
            },
        )
    return report
