"""The experiment's evidence, read from one run folder: Table I, pair fidelity, diversity, memorization,
the fidelity ladder (with the image-VAE reconstructions and the conditioning response it uses) and label
realism.

Each public method of ``Evidence`` is the action of one step of ``foscu experiment`` (experiment.py lists
them in order); each reads what earlier steps left in the run folder and writes its JSON under
``RUN/evaluation/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import numpy as np

from foscu.config import ControlNetStage
from foscu.data.layout import FILE_ENDING
from foscu.errors import InputError
from foscu.runs import RunFolder, atomic_folder, write_json_atomic

if TYPE_CHECKING:
    from foscu.config import FoscuConfig
    from foscu.data.prepare import PreparedSet

# every conditioning a ControlNet can be trained on (the config's choices), in the ablation's order
CONDITIONS: tuple[str, ...] = get_args(ControlNetStage.model_fields["condition"].annotation)

Pairs = dict[str, tuple[Path, Path]]  # case id -> (prediction, ground truth)


def _interval_note(bootstrap: int) -> str:
    """What Table I's mean_low/mean_high are, or that there are none."""
    if not bootstrap:
        return " No intervals (evaluation.bootstrap: 0)."
    return (
        f" mean_low-mean_high: percentile bootstrap 95 % interval of the mean, {bootstrap} resamples "
        "of each method's synthetic volumes (real set fixed); a resample repeats volumes, so the "
        "interval lies mostly above the point estimate."
    )


def _table1_row(method: str, result: dict[str, Any]) -> dict[str, Any]:
    keys = ("axial", "coronal", "sagittal", "mean")
    return {
        "method": method,
        **{k: result[k] for k in keys},
        "mean_low": result.get("mean_low"),
        "mean_high": result.get("mean_high"),
        "n": result["n_fake"],
    }


def _pair_fidelity_row(condition: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """Per-class Dice of one conditioning's samples, and their foreground mean."""
    row: dict[str, Any] = {"condition": condition, "samples": len(metrics["cases"])}
    for name, value in metrics["mean"].items():
        if isinstance(value, dict) and "dice" in value:
            row[f"dice {name}"] = value["dice"]
    row["dice mean"] = metrics["foreground_mean"]["dice"]
    return row


class Evidence:
    """The evaluation steps of one experiment: its config, prepared set and run folder."""

    def __init__(
        self, cfg: FoscuConfig, data: Path, prepared: PreparedSet, run: RunFolder, progress: bool = True
    ) -> None:
        self.cfg, self.data, self.prepared, self.run = cfg, Path(data), prepared, run
        self.progress = progress
        self.ev = run.evaluation

    # ------------------------------------------------------------ what the steps read

    def _split_images(self, split: str) -> dict[str, np.ndarray]:
        from foscu.data.loaders import load_split

        volumes = load_split(self.prepared, split)
        return {c: v[0].numpy() for c, v in zip(volumes.case_ids, volumes.images, strict=True)}

    @cached_property
    def real_training(self) -> dict[str, np.ndarray]:
        """The real training images, read once for Table I, diversity and the memorization audit."""
        return self._split_images("training")

    @cached_property
    def real_test(self) -> dict[str, np.ndarray]:
        """The real test images (the ladder's rungs (a) and (b))."""
        images = self._split_images("test")
        if not images:
            raise InputError(self.data / "datalist.json", "the fidelity ladder needs a test split")
        return images

    def test_files(self) -> dict[str, tuple[Path, Path]]:
        """Test case id -> (image path, label path) of the prepared set."""
        return {
            item["case_id"]: (Path(item["image"]), Path(item["label"]))
            for item in self.prepared.datalist["test"]
        }

    def ablations(self) -> list[tuple[str, Path]]:
        """(condition, samples folder) of every ablation the run has sampled."""
        return [(c, self.run.ablation(c)) for c in CONDITIONS if self.run.ablation(c).is_dir()]

    def segmenter(self) -> Path:
        """The real-only multiclass segmenter of the Table II grid, trained here if the grid has not yet."""
        from foscu.table2 import trained_segmenter

        arch = self.cfg.segmentation.archs[0]
        return trained_segmenter(
            self.cfg, self.data, self.run.root, arch, "multiclass", progress=self.progress
        )

    # ------------------------------------------------------------ image-VAE reconstructions

    def reconstruct_training(self) -> None:
        """Table I's reference row: the real training images through the image VAE."""
        self._reconstruct(self.real_training, self.run.baseline("vae-reconstruction"))

    def reconstruct_test(self) -> None:
        """The ladder's rung (b): the real test images through the image VAE, on their own grids."""
        from foscu.data.nifti import read_nifti

        images = self.real_test
        affines = {c: read_nifti(label, label=True).affine for c, (_, label) in self.test_files().items()}
        self._reconstruct(images, self.run.ladder("vae"), affines)

    def reconstructions(self, images: dict[str, np.ndarray]) -> Iterator[tuple[str, np.ndarray]]:
        """(case id, image-VAE reconstruction in [0, 1]) of each image, one at a time."""
        import torch

        from foscu.engine import distributed
        from foscu.generative.autoencoders import decode, encode
        from foscu.stages import load_stage

        device = distributed.current().device
        vae = load_stage(self.run, "image-vae")[0]["autoencoder"].to(device)
        with torch.no_grad():
            for case_id, image in images.items():
                x = torch.from_numpy(image)[None, None].to(device)  # (1, 1, X, Y, Z)
                yield case_id, decode(vae, encode(vae, x)[0]).float().clamp(0, 1)[0, 0].cpu().numpy()

    def _reconstruct(
        self, images: dict[str, np.ndarray], out: Path, affines: dict[str, np.ndarray] | None = None
    ) -> None:
        from foscu.data.layout import image_path, write_dataset_json
        from foscu.data.nifti import write_nifti

        affine = np.diag([*self.prepared.spacing, 1.0])
        with atomic_folder(out, overwrite=True) as tmp:
            for case_id, recon in self.reconstructions(images):
                write_nifti(image_path(tmp, case_id), recon, (affines or {}).get(case_id, affine))
            write_dataset_json(
                tmp, "FOSCU image-VAE reconstructions", len(images), labels=self.prepared.labels
            )

    # ------------------------------------------------------------ Table I

    def table1(self) -> None:
        """2.5D Fréchet distances of every synthetic set against the real training images."""
        from foscu.evaluation.fid import fid_25d, paper_ordering, read_volumes, set_features

        e = self.cfg.evaluation
        # the real set's slice features once, for every row (on the run's device for a network)
        real = set_features(list(self.real_training.values()), e.features, e.slice_stride, e.central_fraction)
        rows, metric, note = [], "FRD", ""
        sets = [
            ("3D-LDM w/ VQ-VAE", self.run.baseline("vqvae-ldm")),
            ("3D-LDM w/ VAE", self.run.baseline("image-ldm")),
            (f"Duo-Diffusion ({self.cfg.controlnet.condition})", self.run.samples),
            ("VAE reconstruction (reference)", self.run.baseline("vae-reconstruction")),
        ]
        sets += [(f"ablation: ControlNet on {c}", folder) for c, folder in self.ablations()]
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
            rows.append(_table1_row(method, result))
        write_json_atomic(
            self.run.evidence("table1"),
            {
                "rows": rows,
                "metric": metric,
                "bootstrap": e.bootstrap,
                "ordering": paper_ordering(rows[2], rows[1], rows[0]),
                "note": f"{metric} per plane against the {real.n_volumes} real training images (lower is better)."
                f"{_interval_note(e.bootstrap)} {note}",
            },
        )

    # ------------------------------------------------------------ pair fidelity, diversity, memorization

    def fidelity(self) -> None:
        """Pair fidelity of every conditioning, then diversity and the memorization audit of the samples."""
        from foscu.evaluation.fid import read_volumes

        self._pair_fidelity(self.segmenter())
        synthetic = read_volumes(self.run.samples)
        self._diversity(synthetic)
        self._memorization(synthetic)

    def _pair_fidelity(self, segmenter: Path) -> None:
        import shutil

        from foscu.evaluation.segmentation_metrics import evaluate_segmentation
        from foscu.segmentation.predict import predict_folder

        rows: list[dict[str, Any]] = []
        for condition, folder in [(self.cfg.controlnet.condition, self.run.samples), *self.ablations()]:
            pred = self.ev / "pair_fidelity" / condition
            if pred.exists():
                shutil.rmtree(pred)
            predict_folder(segmenter, folder, pred, progress=self.progress)
            metrics = evaluate_segmentation(
                pred, folder, "multiclass", self.ev / "pair_fidelity" / f"{condition}.json"
            )
            rows.append(_pair_fidelity_row(condition, metrics))
        best = max(rows, key=lambda r: r["dice mean"] if r["dice mean"] is not None else -1)
        write_json_atomic(
            self.run.evidence("pair_fidelity"),
            {
                "rows": rows,
                "best_condition": best["condition"],
                "note": f"Dice of a real-only {segmenter.name} segmenter on synthetic images against the labels they "
                f"were generated from (nnU-Net empty-class convention); best conditioning: {best['condition']}",
            },
        )

    def _diversity(self, synthetic: list[np.ndarray]) -> None:
        from foscu.evaluation.fidelity import diversity

        rows = [
            {"set": "real training", **diversity(list(self.real_training.values()))},
            {"set": "Duo-Diffusion samples", **diversity(synthetic)},
        ]
        write_json_atomic(self.run.evidence("diversity"), {"rows": rows, "note": "MS-SSIM over random pairs"})

    def _memorization(self, synthetic: list[np.ndarray]) -> None:
        from foscu.evaluation.memorization import run_audit

        # validation + test: patients never trained on set the thresholds, their images through the image VAE
        held = {**self._split_images("validation"), **self._split_images("test")}
        decoded = dict(self.reconstructions(held))
        audit = run_audit(self.prepared, self.run.samples, synthetic, self.real_training, held, decoded)
        write_json_atomic(self.run.evidence("memorization"), audit)

    # ------------------------------------------------------------ the fidelity ladder

    def _predict(self, segmenter: Path, images: dict[str, Path], name: str) -> dict[str, Path]:
        from foscu.segmentation.predict import predict_cases

        return predict_cases(
            segmenter, images, self.ev / "ladder" / name, overwrite=True, progress=self.progress
        )

    def _ladder_pairs(self, segmenter: Path, test: dict[str, tuple[Path, Path]]) -> dict[str, Pairs]:
        """Rungs (a)-(d): each rung's predictions against the masks its images should match."""
        from foscu.data.layout import case_files

        pairs: dict[str, Pairs] = {}
        # (a) real test images and (b) their VAE reconstructions, against the real masks
        preds = self._predict(segmenter, {c: img for c, (img, _) in test.items()}, "real")
        pairs["real"] = {c: (preds[c], test[c][1]) for c in test}
        vae_images = case_files(self.run.ladder("vae"), "images")
        preds = self._predict(segmenter, vae_images, "vae")
        pairs["vae"] = {c: (preds[c], test[c][1]) for c in vae_images}
        # (c) images generated from the real test masks, against those masks
        m2i = self.run.ladder("mask_to_image")
        m2i_labels = case_files(m2i, "labels")
        preds = self._predict(segmenter, case_files(m2i, "images"), "mask_to_image")
        pairs["mask_to_image"] = {c: (preds[c], m2i_labels[c]) for c in m2i_labels}
        # (d) Duo-Diffusion pairs: generated label and its image
        duo_labels = case_files(self.run.samples, "labels")
        preds = self._predict(segmenter, case_files(self.run.samples, "images"), "duo")
        pairs["duo"] = {c: (preds[c], duo_labels[c]) for c in duo_labels}
        return pairs

    def _control_pairs(self, mask_to_image: Pairs) -> tuple[Pairs, dict[str, str]]:
        """Rung (e): each (c) prediction against another case's mask; and which mask each case got."""
        from foscu.data.nifti import read_nifti, write_nifti
        from foscu.evaluation import ladder

        control: Pairs = {}
        sources: dict[str, str] = {}
        for case, (pred, other) in ladder.control_pairs(mask_to_image).items():
            # the other case's mask on this case's grid (each ROI has its own origin)
            moved = self.ev / "ladder" / "control_masks" / f"{case}{FILE_ENDING}"
            affine = read_nifti(pred, label=True).affine
            write_nifti(moved, read_nifti(other, label=True).array, affine, label=True)
            control[case], sources[case] = (pred, moved), str(other)
        return control, sources

    def _verdict(self, metrics: dict[str, Any], pairs: dict[str, Pairs]) -> dict[str, Any]:
        """Whether the images follow their masks: rung (c) against the control (e)."""
        from foscu.evaluation import ladder
        from foscu.evaluation.segmentation_metrics import evaluate_cases

        if "control" not in metrics:
            return {"working": None, "text": "The conditioning cannot be judged: one test case, no control."}
        verdict = ladder.conditioning_verdict(metrics["mask_to_image"], metrics["control"])
        verdict["classes"] = {  # the same rule per class: issue 16 asks it where rung (a) reaches 0.3
            c: ladder.conditioning_verdict(metrics["mask_to_image"], metrics["control"], c)
            for c in ladder.CLASSES
        }
        # how much the two masks of each control pair overlap: a perfect generator scores (a) on its own
        # mask and about (a) x this on the other one, so (c) - (e) can be at most about (a) x (1 - this)
        own = {c: (pairs["mask_to_image"][c][1], p[1]) for c, p in pairs["control"].items()}
        overlap = evaluate_cases(own, "multiclass")["mean"]["liver"]["dice"]
        verdict["mask_overlap_liver"] = overlap
        if overlap is not None:
            verdict["text"] += (
                f" (The real masks of the control pairs themselves overlap with liver Dice {overlap:.2f}.)"
            )
        return verdict

    def ladder(self) -> None:
        """The fidelity ladder (evaluation/ladder.py): rungs (a)-(e) scored by one real-only segmenter."""
        from foscu.evaluation import ladder
        from foscu.evaluation.segmentation_metrics import evaluate_cases

        segmenter = self.segmenter()
        test = self.test_files()
        pairs = self._ladder_pairs(segmenter, test)
        control_sources: dict[str, str] = {}
        if len(pairs["mask_to_image"]) >= 2:  # the control needs two test cases
            pairs["control"], control_sources = self._control_pairs(pairs["mask_to_image"])
        metrics = {rung: evaluate_cases(p, "multiclass") for rung, p in pairs.items()}
        rows = ladder.ladder_rows(metrics)
        verdict = self._verdict(metrics, pairs)
        verdict["response"] = self.conditioning_response(test)
        m2i = str(self.run.ladder("mask_to_image"))
        write_json_atomic(
            self.run.evidence("ladder"),
            {
                "rows": rows,
                "conditioning": verdict,
                "where_lost": ladder.where_lost(rows),
                "segmenter": segmenter.name,
                "images": {
                    "real": "prepared test images",
                    "vae": str(self.run.ladder("vae")),
                    "mask_to_image": m2i,
                    "duo": str(self.run.samples),
                    "control": m2i,
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

    def conditioning_response(self, test: dict[str, tuple[Path, Path]]) -> dict[str, Any]:
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

    # ------------------------------------------------------------ label realism

    def label_realism(self) -> None:
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
            self.run.evidence("label_realism"), label_realism(real_labels, generated, self.prepared.spacing)
        )
