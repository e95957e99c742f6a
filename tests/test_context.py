"""StageContext: a recipe reads its section from the config and reaches other stages only through the
callables the stage table gives it."""

from __future__ import annotations

from pathlib import Path

import torch

from foscu.config import load_config
from foscu.context import StageContext
from foscu.runs import RunFolder


def test_a_recipe_sees_its_own_section_and_other_stages_through_the_given_callables(tmp_path):
    calls = []
    cfg = load_config("tiny")
    ctx = StageContext(
        "label-ldm",
        cfg,
        "label_ldm",
        prepared=None,  # type: ignore[arg-type]  # not read here
        run=RunFolder(tmp_path),
        device=torch.device("cpu"),
        seed=3,
        load=lambda name: calls.append(("load", name)) or ({}, {}, {"stage": name}),
        info=lambda name: calls.append(("info", name)) or {"stage": name},
        latents=lambda name: calls.append(("latents", name)) or Path(f"{name}.safetensors"),
    )
    assert ctx.section is cfg.label_ldm and ctx.section.train.steps == 4
    assert ctx.load("label-vae")[2] == {"stage": "label-vae"}
    assert ctx.info("image-vae") == {"stage": "image-vae"}
    assert ctx.latents("label-vae") == Path("label-vae.safetensors")
    assert calls == [("load", "label-vae"), ("info", "image-vae"), ("latents", "label-vae")]
    assert ctx.synthetic == () and ctx.synthetic_fraction is None
