"""The proof and demo targets (issues 16 and 17) checked against a finished run's evidence, as a Markdown table.

    python benchmarks/proof_targets.py RUN [--demo]

Reads only RUN/evaluation/{ladder,label_realism,memorization,table1,table2}.json; every row says the
target, the measured value and whether it is met ("–": reported, no target). ``--demo`` checks the demo's
floor instead of the proof's targets. Table II's target is judged on the protocol the validation split
chose (table2.json findings); when validation chose real, the plain mix is judged and the target is not met.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any


def _load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _row(target: str, value: str, met: bool | None) -> dict[str, str]:
    return {"target": target, "measured": value, "met": "–" if met is None else ("yes" if met else "NO")}


def _f(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _fraction_row(label: str, row: dict, cls: str, floor: float) -> dict[str, str]:
    v = row[f"fraction {cls}"]
    return _row(
        f"{label} {cls} >= {floor} x (a)",
        f"{_f(row[f'dice {cls}'])} = {_f(v)} x (a)",
        v is not None and v >= floor,
    )


PROOF_FLOORS = {  # issue 16's targets per rung, as fractions of rung (a)
    "vae": (
        "(b) image-VAE reconstructions",
        {"liver": 0.8, "portal_vein": 0.8, "hepatic_vein": 0.8, "tumor": 0.8},
    ),
    "mask_to_image": (
        "(c) mask to image",
        {"liver": 0.9, "portal_vein": 0.6, "hepatic_vein": 0.6, "tumor": 0.6},
    ),
    "duo": ("(d) Duo pairs", {"liver": 0.85, "portal_vein": 0.5, "hepatic_vein": 0.5, "tumor": 0.5}),
}
DEMO_FLOORS = {
    "vae": ("(b) image-VAE reconstructions", {"portal_vein": 0.5}),
    "mask_to_image": ("(c) mask to image", {"liver": 0.6}),
}


def ladder_targets(ladder: dict, demo: bool) -> list[dict[str, str]]:
    rungs = {r["rung"]: r for r in ladder["rows"]}
    real = rungs.get("real")
    rows = []
    if real:
        floors = (
            {"liver": 0.85} if demo else {"liver": 0.9, "portal_vein": 0.5, "hepatic_vein": 0.5, "tumor": 0.5}
        )
        for cls, floor in floors.items():
            v = real[f"dice {cls}"]
            rows.append(_row(f"real-only segmenter {cls} >= {floor}", _f(v), v is not None and v >= floor))
    for rung, (label, floors) in (DEMO_FLOORS if demo else PROOF_FLOORS).items():
        if rung in rungs:
            rows += [_fraction_row(label, rungs[rung], cls, floor) for cls, floor in floors.items()]
    cond = ladder.get("conditioning") or {}
    per_class = cond.get("classes") or ({"liver": cond} if "difference" in cond else {})
    for cls, verdict in per_class.items():
        a = real.get(f"dice {cls}") if real else None
        if cls != "liver" and (demo or a is None or a < 0.3):
            continue  # the rule holds where rung (a) reaches 0.3 (the liver always)
        d = verdict.get("difference") or {}
        text = "–" if d.get("mean") is None else f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"
        rows.append(
            _row(f"(e) control below (c) by >= 0.1, interval above 0 ({cls})", text, verdict.get("working"))
        )
    return rows


def realism_targets(realism: dict, memorization: dict | None, demo: bool) -> list[dict[str, str]]:
    f = {r["feature"]: r for r in realism["features"]}
    rows = []
    real_ml, gen_ml = f["liver_ml"]["real median"], f["liver_ml"]["generated median"]
    off = abs(gen_ml - real_ml) / real_ml if real_ml else None
    limit = 0.5 if demo else 0.25
    rows.append(
        _row(
            f"median liver volume within {limit:.0%} of real",
            f"{gen_ml:.0f} vs {real_ml:.0f} mL ({off:+.0%})" if off is not None else "–",
            off is not None and off <= limit,
        )
    )
    if demo:
        gen = realism["generated_cases"].values()
        dominant = sum(1 for g in gen if g["liver_largest_share"] >= 0.9 and g["liver_ml"] > 0)
        n = realism["n_generated"]
        rows.append(
            _row("one dominant liver component in most samples", f"{dominant} of {n}", dominant > n / 2)
        )
        return rows
    sized = [p for p in realism["presence"] if p["class"] == "tumor" and p.get("min_ml")]
    for p in sized or [p for p in realism["presence"] if p["class"] == "tumor"]:
        at = f" (>= {p['min_ml']:.1f} mL)" if p.get("min_ml") else " (any voxel)"
        low, high = p.get("difference_low"), p.get("difference_high")
        rows.append(
            _row(
                f"tumor prevalence{at}: 95 % interval of generated - real contains 0",
                f"{p['generated']:.0%} vs {p['real']:.0%}, difference [{_f(low)}, {_f(high)}]",
                low is not None and low <= 0 <= high,
            )
        )
    rejected = [r["feature"] for r in realism["features"] if r.get("rejected")]
    tested = sum(1 for r in realism["features"] if r.get("p_holm") is not None)
    rows.append(
        _row(
            "no label feature rejected at 5 % (Holm over the features)",
            f"{len(rejected)} of {tested} rejected" + (f": {', '.join(rejected)}" if rejected else ""),
            not rejected,
        )
    )
    if memorization:
        held = memorization["held_out_nearest_training"]
        n = len(memorization["samples"])
        allowed = math.ceil(held["above_threshold"] / held["n"] * n) if held["n"] else 0
        allowed = max(allowed, 1 if held["above_threshold"] else 0)
        image = memorization["near_copies"]
        label = (memorization.get("labels") or {}).get("near_copies")
        rows.append(
            _row(
                "near copies <= the held-out rate (image audit and label check)",
                f"image {image}, label {label if label is not None else '–'} of {n}; held-out "
                f"{held['above_threshold']} of {held['n']} -> at most {allowed}",
                image <= allowed and (label is None or label <= allowed),
            )
        )
    return rows


def table_targets(table1: dict | None, table2: dict | None) -> list[dict[str, str]]:
    rows = []
    if table1 and "ordering" in table1:
        o = table1["ordering"]
        separated = o.get("separated") or {}
        rows.append(
            _row(
                "Table I ordering Duo <= LDM w/ VAE < LDM w/ VQ-VAE, intervals separated",
                o.get("text", str(o)),
                bool(o.get("holds")) and all(separated.values()) if separated else o.get("holds"),
            )
        )
    if not table2:
        return rows
    mean_rows = [
        r
        for r in table2["rows"]
        if r["task"] == "multiclass" and r["arch"] == "unet" and r["class"] == "mean"
    ]
    seeds = len(table2.get("seeds", [0]))
    chosen = (table2.get("findings") or {}).get("chosen_on_validation")
    for r in mean_rows:
        t, boot = r.get("paired_improvement_ci"), r.get("paired_bootstrap_ci")
        text = (
            f"{seeds} seeds: real {_f(r['real'], 3)} -> {r['protocol']} {_f(r['real+synthetic'], 3)}, paired "
            f"{_f(r.get('paired_improvement_percent'))} % (95 % over seeds {_interval(t)}, over cases "
            f"{_interval(boot)})"
        )
        if r["protocol"] == chosen or (chosen == "real" and r["protocol"] == "mix"):
            name = f"Table II: the protocol chosen on validation ({chosen}) >= real, lower bounds > -2 %"
            intervals = [i for i in (t, boot) if i is not None]
            met = (
                seeds >= 3
                and r["real+synthetic"] is not None
                and r["real+synthetic"] >= r["real"]
                and bool(intervals)
                and all(i[0] > -2 for i in intervals)
            )
            rows.append(_row(name, text, met if chosen != "real" else False))
        else:
            rows.append(_row(f"Table II {r['protocol']} (reported beside it)", text, None))
    return rows


def _interval(interval: list[float] | None) -> str:
    return "–" if not interval else f"[{interval[0]:+.1f}, {interval[1]:+.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", type=Path)
    parser.add_argument("--demo", action="store_true", help="the demo's floor instead of the proof's targets")
    args = parser.parse_args()
    ev = args.run / "evaluation"
    rows: list[dict[str, str]] = []
    ladder, realism = _load(ev / "ladder.json"), _load(ev / "label_realism.json")
    if ladder:
        rows += ladder_targets(ladder, args.demo)
    if realism:
        rows += realism_targets(realism, _load(ev / "memorization.json"), args.demo)
    if not args.demo:
        rows += table_targets(_load(ev / "table1.json"), _load(ev / "table2.json"))
    print("| target | measured | met |\n|---|---|---|")
    for r in rows:
        print(f"| {r['target']} | {r['measured']} | {r['met']} |")


if __name__ == "__main__":
    main()
