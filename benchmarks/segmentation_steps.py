"""Usage: python benchmarks/segmentation_steps.py PRESET X Y Z SX SY SZ (e.g. demo 64 64 32 2.5 2.5 4.8).
Per-arch parameter counts and seconds per training step (multiclass, batch 2, Dice+CE, AdamW, CPU).
Every arch is first run 2 untimed steps (the process's first steps are several seconds slower), then 3 timed."""

import os
import sys
import time

import torch

from foscu.config import load_config
from foscu.segmentation.networks import ARCHS, build_segmenter, count_parameters
from foscu.segmentation.train import NET, SegmentationLoss

preset, roi, spacing = (
    sys.argv[1],
    tuple(int(x) for x in sys.argv[2:5]),
    tuple(float(x) for x in sys.argv[5:8]),
)
seg = load_config(preset).segmentation
torch.manual_seed(0)
setups = {}
for arch in ARCHS:
    net = build_segmenter(arch, "multiclass", seg, roi, spacing).train()
    setups[arch] = (net, torch.optim.AdamW(net.parameters(), lr=1e-4))
loss_fn = SegmentationLoss("multiclass")
batch = {"image": torch.rand(2, 1, *roi), "label": torch.randint(0, 5, (2, 1, *roi)).float()}


def step(net, opt):
    t = time.perf_counter()
    loss = loss_fn({NET: net}, batch)["loss"]
    opt.zero_grad()
    loss.backward()
    opt.step()
    return time.perf_counter() - t


for net, opt in setups.values():
    step(net, opt)
    step(net, opt)
for arch, (net, opt) in setups.items():
    times = sorted(step(net, opt) for _ in range(3))
    print(
        f"{preset} {roi} {arch:12s} params={count_parameters(net):>11,d} s/step median={times[1]:.3f} min={times[0]:.3f} load={os.getloadavg()[0]:.1f}",
        flush=True,
    )
