"""``base:``: a preset or file that builds on another."""

from __future__ import annotations

import pytest

from foscu.config import dump_config, load_config
from foscu.config_base import merge
from foscu.errors import InputError


def test_merge_takes_nested_keys_from_the_child_and_lists_whole():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 3}
    assert merge(base, {"a": {"c": [9]}, "e": 4}) == {"a": {"b": 1, "c": [9]}, "d": 3, "e": 4}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 3}  # the base is not changed


def test_the_scarcity_preset_is_the_proof_preset_and_a_curve():
    """The proof preset, its curve, and one change: every cell trains all its steps (no early stop)."""
    proof, curve = load_config("proof"), load_config("scarcity")
    assert curve.preset == "scarcity" and curve.scarcity.n
    assert curve.segmentation.train.patience is None and proof.segmentation.train.patience == 40
    train = curve.segmentation.train.model_copy(update={"patience": proof.segmentation.train.patience})
    segmentation = curve.segmentation.model_copy(update={"train": train})
    same = curve.model_copy(
        update={"preset": "proof", "scarcity": proof.scarcity, "segmentation": segmentation}
    )
    assert dump_config(same) == dump_config(proof)


def test_a_file_builds_on_a_preset_or_a_file_beside_it_and_a_loop_is_refused(tmp_path):
    (tmp_path / "child.yaml").write_text("base: tiny\nseed: 7\nsegmentation: {seeds: 2}\n")
    cfg = load_config(str(tmp_path / "child.yaml"))
    assert cfg.seed == 7 and cfg.segmentation.seeds == 2 and cfg.segmentation.channels == [4, 8, 16]
    (tmp_path / "grandchild.yaml").write_text("base: child.yaml\nseed: 8\n")
    assert load_config(str(tmp_path / "grandchild.yaml")).segmentation.seeds == 2
    (tmp_path / "a.yaml").write_text(f"base: {tmp_path / 'b.yaml'}\n")
    (tmp_path / "b.yaml").write_text(f"base: {tmp_path / 'a.yaml'}\n")
    with pytest.raises(InputError, match="builds on itself"):
        load_config(str(tmp_path / "a.yaml"))
    (tmp_path / "bad.yaml").write_text("base: [tiny]\n")
    with pytest.raises(InputError, match="base: must name a preset"):
        load_config(str(tmp_path / "bad.yaml"))
