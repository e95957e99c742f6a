"""``foscu export generator``: a run's Duo-Diffusion stages as a self-contained, shareable folder.

The folder (MONAI Bundle layout where it fits; the card says where it does not)::

    configs/metadata.json    MONAI Bundle metadata
    configs/generator.json   grid, label map, stages, case counts, evidence summaries (the run's run.json
                             without its data path)
    configs/config.yaml      the run's config: sampling defaults
    models/<stage>/          config.yaml + model.safetensors, exactly as in the run's stage folder
    docs/README.md           the model card (also README.md)

It carries no per-case training data: no latent caches, checkpoints, training logs, case ids or paths. A
scan of every file for the prepared set's case ids and the data and run paths refuses an export that would.
``GeneratorFolder`` reads the folder as a run, so ``foscu sample --generator`` loads its stages through
the one loader (``stages.load_stage``).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from foscu.errors import InputError
from foscu.export.model_card import model_card, novelty, read_evidence
from foscu.runs import CONFIG, RunFolder, atomic_folder, write_json_atomic, write_text_atomic

GENERATOR = "generator.json"
ENDPOINTS = ("label-ldm", "image-ldm", "controlnet")  # what `foscu sample --model duo` loads, + encoders


class GeneratorFolder(RunFolder):
    """An exported generator read as a run: stages under ``models/``, the run's config under ``configs/``."""

    def stage(self, name: str) -> Path:
        return self.root / "models" / name

    @property
    def identity(self) -> Path:
        return self.root / "configs" / GENERATOR

    @property
    def run_config(self) -> Path:
        return self.root / "configs" / CONFIG


def open_generator(root: Path) -> GeneratorFolder:
    """An exported generator folder, refused when it is not one."""
    folder = GeneratorFolder(root)
    if not folder.identity.is_file():
        raise InputError(
            root,
            f"not an exported generator (no configs/{GENERATOR}): "
            "make one with `foscu export generator --run RUN --out OUT`",
        )
    return folder


def sampling_source(run: Path | None, generator: Path | None) -> RunFolder:
    """What ``foscu sample`` loads: a run folder (``--run``) or an exported generator (``--generator``)."""
    if (run is None) == (generator is None):
        raise InputError("--run/--generator", "give exactly one: a run folder or an exported generator")
    return RunFolder(run) if run is not None else open_generator(Path(str(generator)))


def generator_stages(run: RunFolder) -> list[str]:
    """The stages ``foscu sample --model duo`` needs, encoders first: label-vae, label-ldm, image-vae, ..."""
    from foscu.stages import read_stage_info

    stages: list[str] = []
    for name in ENDPOINTS:
        if not run.is_trained(name):
            raise InputError(run.stage(name), f"stage {name} is not trained: run `foscu train {name}` first")
        encoder = read_stage_info(run.stage(name)).get("encoder")
        if encoder and encoder not in stages:
            if not run.is_trained(encoder):
                raise InputError(run.stage(encoder), f"stage {encoder} is not trained")
            stages.append(encoder)
        stages.append(name)
    return stages


def _training_set(run: RunFolder) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """run.json and the case ids per split of the prepared set it names (for the counts and the scan)."""
    from foscu.data.prepare import read_prepared

    if not run.identity.is_file():
        raise InputError(run.root, "not a run folder (no run.json): train its stages first")
    identity = json.loads(run.identity.read_text())
    try:
        prepared = read_prepared(Path(identity["data"]))
    except InputError as err:
        raise InputError(
            run.identity,
            f"the prepared set it was trained on is not readable ({err}); the export needs it to count "
            "the training cases and to check that none of their ids leaks into the export",
        ) from None
    return identity, {split: [c["case_id"] for c in items] for split, items in prepared.datalist.items()}


def _metadata(record: dict[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    """configs/metadata.json, with MONAI Bundle's keys (``monai.bundle.utils.DEFAULT_METADATA``)."""
    packages = provenance.get("packages", {})
    grid = {"spatial_shape": record["roi"], "is_patch_data": False, "num_channels": 1}
    values = sorted(record["labels"].values())
    return {
        "version": "0.1.0",
        "changelog": {"0.1.0": "exported by foscu export generator"},
        "monai_version": packages.get("monai"),
        "pytorch_version": str(packages.get("torch", "")).split("+")[0],
        "numpy_version": packages.get("numpy"),
        "required_packages_version": {"foscu": packages.get("foscu"), "nibabel": packages.get("nibabel")},
        "task": "Synthetic hepatic MRI with liver, vessel and tumor labels (Duo-Diffusion, FOSCU)",
        "description": "Label LDM, image LDM and ControlNet: samples (image, label) pairs. Sample with "
        "`foscu sample --generator <this folder>`; see docs/README.md.",
        "authors": "to be set by the sharing institution",
        "copyright": "to be set by the sharing institution",
        "data_source": f"private: {record['trained_on']['training']} training cases, not included",
        "data_type": "nifti",
        "image_classes": "single-channel MRI, min-max scaled to [0, 1]",
        "label_classes": ", ".join(f"{v}: {k}" for k, v in record["labels"].items()),
        "intended_use": "research only; not for diagnosis (docs/README.md: Intended use)",
        "network_data_format": {
            "inputs": {},
            "outputs": {
                "image": {"type": "image", "format": "magnitude", "modality": "MR", "dtype": "float32",
                          "value_range": [0, 1], "channel_def": {"0": "MRI"}, **grid},
                "label": {"type": "image", "format": "labels", "dtype": "uint8",
                          "value_range": [values[0], values[-1]],
                          "channel_def": {str(v): k for k, v in record["labels"].items()}, **grid},
            },
        },
    }  # fmt: skip


def find_leaks(folder: Path, needles: list[str]) -> list[str]:
    """``file: needle`` for every case id or path in ``needles`` found in a file under ``folder``.

    Text files are searched whole; a safetensors file in its JSON header (its tensor bytes hold numbers). A
    case id matches only as a whole token (not inside a longer name), a path anywhere.
    """
    found = []
    patterns = [(n, re.compile(rf"(?<![\w-]){re.escape(n)}(?![\w-])")) for n in needles if n]
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".safetensors":
            data = data[8 : 8 + int.from_bytes(data[:8], "little")]
        text = data.decode("utf-8", errors="replace")
        found += [f"{path.relative_to(folder)}: {n}" for n, pattern in patterns if pattern.search(text)]
    return found


def _needles(run: RunFolder, identity: dict[str, Any], ids: dict[str, list[str]]) -> list[str]:
    """The case ids and the absolute data and run paths (a relative one, "data", would match words)."""
    given = [Path(identity["data"]), run.root]
    paths = {str(p) for p in given if p.is_absolute()} | {str(p.resolve()) for p in given}
    return sorted(paths) + sorted({c for split in ids.values() for c in split})


def export_generator(run_root: Path, out: Path) -> dict[str, Any]:
    """Write the run's generator to ``out`` (whole or not at all); returns its configs/generator.json."""
    import yaml

    run = RunFolder(run_root)
    identity, ids = _training_set(run)
    stages = generator_stages(run)
    evidence = read_evidence(run)
    provenance = yaml.safe_load(run.config("controlnet").read_text()).get("provenance", {})
    record = {
        "roi": identity["roi"],
        "spacing": identity["spacing"],
        "labels": identity["labels"],
        "stages": stages,
        "foscu_version": provenance.get("packages", {}).get("foscu"),
        "trained_on": {split: len(cases) for split, cases in ids.items()},
        "novelty": novelty(evidence),
        "evidence": evidence,
    }
    with atomic_folder(out) as tmp:
        folder = GeneratorFolder(tmp)
        for name in stages:
            folder.stage(name).mkdir(parents=True)
            shutil.copyfile(run.config(name), folder.config(name))
            shutil.copyfile(run.model(name), folder.model(name))
        folder.run_config.parent.mkdir()
        if run.run_config.is_file():
            shutil.copyfile(run.run_config, folder.run_config)
        write_json_atomic(folder.identity, record)
        write_json_atomic(tmp / "configs" / "metadata.json", _metadata(record, provenance))
        for card in (tmp / "docs" / "README.md", tmp / "README.md"):
            write_text_atomic(card, model_card(record))
        leaks = find_leaks(tmp, _needles(run, identity, ids))
        if leaks:
            raise InputError(run.root, f"the export would carry training data ({'; '.join(leaks)}): refused")
    return record
