"""Issue 9's proof and demo targets checked against a finished run's evidence files, as a Markdown table.

    python benchmarks/proof_targets.py RUN [--demo]

Reads only RUN/evaluation/{ladder,label_realism,table1,table2}.json; every row says the target, the
measured value and whether it is met. ``--demo`` checks the demo's floor instead of the proof's targets.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _row(target: str, value: str, met: bool | None) -> dict[str, str]:
    return {"target": target, "measured": value, "met": "–" if met is None else ("yes" if met else "NO")}


def _f(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def ladder_targets(ladder: dict, demo: bool) -> list[dict[str, str]]:
    rungs = {r["rung"]: r for r in ladder["rows"]}
    real, m2i, duo, ctl = (rungs.get(k) for k in ("real", "mask_to_image", "duo", "control"))
    rows = []
    if real:
        if demo:
            v = real["dice liver"]
            rows.append(_row("real-only segmenter liver >= 0.85", _f(v), v is not None and v >= 0.85))
        else:
            for cls, floor in (("liver", 0.90), ("portal_vein", 0.5), ("hepatic_vein", 0.5), ("tumor", 0.5)):
                v = real[f"dice {cls}"]
                rows.append(
                    _row(f"real-only segmenter {cls} >= {floor}", _f(v), v is not None and v >= floor)
                )
    if m2i:
        floors = (
            {"liver": 0.6} if demo else {"liver": 0.85, "portal_vein": 0.5, "hepatic_vein": 0.5, "tumor": 0.5}
        )
        for cls, floor in floors.items():
            v = m2i[f"fraction {cls}"]
            rows.append(
                _row(
                    f"(c) mask to image {cls} >= {floor} x (a)",
                    f"{_f(m2i[f'dice {cls}'])} = {_f(v)} x (a)",
                    v is not None and v >= floor,
                )
            )
    if m2i and ctl:
        c, e = m2i["dice liver"], ctl["dice liver"]
        works = ladder["conditioning"].get("working")
        rows.append(_row("(e) control well below (c) (liver)", f"(c) {_f(c)} vs (e) {_f(e)}", works))
    if duo and not demo:
        v = duo["fraction liver"]
        rows.append(
            _row(
                "(d) Duo pairs liver >= 0.75 x (a)",
                f"{_f(duo['dice liver'])} = {_f(v)} x (a)",
                v is not None and v >= 0.75,
            )
        )
    return rows


def realism_targets(realism: dict, demo: bool) -> list[dict[str, str]]:
    f = {r["feature"]: r for r in realism["features"]}
    presence = {p["class"]: p for p in realism["presence"]}
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
    for vessel in ("portal_vein", "hepatic_vein"):
        g = presence[vessel]["generated"]
        rows.append(_row(f"{vessel} present in >= 80 % of samples", f"{g:.0%}", g >= 0.8))
    t = presence["tumor"]
    gap = abs(t["generated"] - t["real"])
    rows.append(
        _row(
            "tumor prevalence within 20 points of real",
            f"{t['generated']:.0%} vs {t['real']:.0%}",
            gap <= 0.2,
        )
    )
    return rows


def table_targets(table1: dict | None, table2: dict | None) -> list[dict[str, str]]:
    rows = []
    if table1 and "ordering" in table1:
        o = table1["ordering"]
        rows.append(
            _row(
                "Table I ordering Duo <= LDM w/ VAE < LDM w/ VQ-VAE",
                o.get("text", str(o)),
                o.get("holds"),
            )
        )
    if table2:
        mc = [
            r
            for r in table2["rows"]
            if r["task"] == "multiclass" and r["arch"] == "unet" and r["class"] == "mean"
        ]
        if mc:
            r = mc[0]
            seeds = len(table2.get("seeds", [0]))
            rows.append(
                _row(
                    "Table II multi-class UNet, >= 3 seeds, relative improvement with 95 % interval",
                    f"{seeds} seeds: real {_f(r['real'], 3)} -> mixed {_f(r['real+synthetic'], 3)}, "
                    f"{_f(r.get('improvement_percent'))} % (paired {_f(r.get('paired_improvement_percent'))} %, "
                    f"95 % CI {r.get('paired_improvement_ci')})",
                    seeds >= 3,
                )
            )
    return rows


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
        rows += realism_targets(realism, args.demo)
    if not args.demo:
        rows += table_targets(_load(ev / "table1.json"), _load(ev / "table2.json"))
    print("| target | measured | met |\n|---|---|---|")
    for r in rows:
        print(f"| {r['target']} | {r['measured']} | {r['met']} |")


if __name__ == "__main__":
    main()
