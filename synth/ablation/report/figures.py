"""The report's figures as PNG bytes: mAP per group, per-class ΔAP vs prevalence, one image grid per class.

matplotlib is imported (with the Agg backend) only when figures are drawn.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from synth.ablation.report.formatting import arm_label
from synth.ablation.results import GROUPS, RESULTS_FILE, arm_by_name, group_estimate, per_class_mean
from synth.errors import UserError
from synth.taxonomy import report_class_slug

GROUP_COLOURS = {"head": "#1f77b4", "medium": "#ff7f0e", "tail": "#d62728"}

GRID_TILE = 96

GRID_ROWS = ("real", "kept", "rejected")


def render_figures(results: dict[str, Any], report_dir: Path) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    figures = {"group_map": _group_map_plot(results), "delta_ap_vs_prevalence": _delta_ap_plot(results)}
    for cls, rows in results.get("grids", {}).items():
        figures[f"grid_{report_class_slug(cls)}"] = _grid(cls, rows, report_dir)
    return figures


def _group_map_plot(results: dict[str, Any]) -> bytes:
    import matplotlib.pyplot as plt

    arms = results["arms"]
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    width = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        est = [group_estimate(arm, g) for g in GROUPS]
        xs = [j + (i - (len(arms) - 1) / 2) * width for j in range(len(GROUPS))]
        yerr = [[max(e.mean - e.ci[0], 0) for e in est], [max(e.ci[1] - e.mean, 0) for e in est]]
        ax.bar(xs, [e.mean for e in est], width, yerr=yerr, capsize=3, label=arm_label(arm))
    ax.set_xticks(range(len(GROUPS)), [g.capitalize() for g in GROUPS])
    ax.set_ylabel("mAP (test)")
    ax.set_title("mAP by frequency group (mean over seeds, patient-bootstrap 95% CI)", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    return _png(fig)


def _delta_ap_plot(results: dict[str, Any]) -> bytes:
    import matplotlib.pyplot as plt

    baseline = arm_by_name(results, results["baseline"])
    others = [a for a in results["arms"] if a["name"] != results["baseline"]]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    markers = "os^Dv"
    for i, arm in enumerate(others):
        for group, colour in GROUP_COLOURS.items():
            pts = [
                (results["train_prevalence"][c], per_class_mean(arm, c, "ap") - per_class_mean(baseline, c, "ap"))
                for c in results["classes"]
                if results["groups"].get(c) == group and results["train_prevalence"].get(c, 0) > 0
            ]
            pts = [p for p in pts if not math.isnan(p[1])]
            if pts:
                ax.scatter(
                    *zip(*pts),
                    c=colour,
                    marker=markers[i % len(markers)],
                    s=22,
                    alpha=0.8,
                    label=f"{arm_label(arm)} · {group}",
                )
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("training prevalence (log scale)")
    ax.set_ylabel("ΔAP vs real only")
    ax.set_title("Per-class ΔAP vs training prevalence", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, loc="best")
    else:
        ax.text(0.5, 0.5, "no arm besides real only", transform=ax.transAxes, ha="center")
    return _png(fig)


def _grid(cls: str, rows: dict[str, list[str]], report_dir: Path) -> bytes:
    """One PNG per class: real examples, kept synthetic, rejected synthetic, one row each."""
    from PIL import Image, ImageDraw

    label_w = 80
    n_cols = max((len(rows.get(r, [])) for r in GRID_ROWS), default=0) or 1
    sheet = Image.new("L", (label_w + n_cols * GRID_TILE, len(GRID_ROWS) * GRID_TILE), 255)
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(GRID_ROWS):
        draw.text((6, r * GRID_TILE + GRID_TILE // 2 - 6), row, fill=0)
        for c, rel in enumerate(rows.get(row, [])):
            path = Path(rel) if Path(rel).is_absolute() else report_dir / rel
            if not path.exists():
                raise UserError(
                    f"{report_dir / RESULTS_FILE}: grid image {path} for {cls!r} is missing; "
                    "re-run `synth ablate` to re-export samples"
                )
            with Image.open(path) as im:
                tile = im.convert("L").resize((GRID_TILE - 4, GRID_TILE - 4))
            sheet.paste(tile, (label_w + c * GRID_TILE + 2, r * GRID_TILE + 2))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
