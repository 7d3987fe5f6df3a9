"""CLI of the filter stage: ``synth filter``, ``synth verifier train``, ``synth oracle train``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from synth.commands.options import config_option, option, out_option, overwrite_option, seed_option, set_option
from synth.config import command_overrides

Epochs = option(Optional[int], "--epochs")


def data_option(help: str):
    """``--data``: a prepared real (or phantom) dataset, folder or manifest.csv."""
    return option(Path, "--data", help)


def max_steps_option(help: Optional[str] = None):
    return option(Optional[int], "--max-steps", help)


def filter_command(
    synthetic: option(Path, "--synthetic", "Folder (or manifest.csv) written by `synth generate`."),
    data: data_option("Prepared real dataset (folder or manifest.csv): train/val splits are used, test never."),
    verifier: option(Path, "--verifier", "Folder from `synth verifier train`."),
    out: out_option("Output folder: kept.csv, rejected.csv, scores.csv, summary.csv, summary.json."),
    config: config_option("YAML of rules (configs/filter/default.yaml); flags override.") = None,
    sets: set_option("outlier_rejects=true") = None,
    oracle: option(
        Optional[Path], "--oracle", "Phantom only: oracle folder from `synth oracle train` (fidelity in the summary)."
    ) = None,
    extractor: option(
        Optional[str], "--extractor", "'verifier' or a local encoder folder (model.safetensors + extractor.yaml)."
    ) = None,
    threshold_quantile: option(
        Optional[float],
        "--threshold-quantile",
        "Quantile of real val positives' scores used as class threshold. [default: 0.2]",
    ) = None,
    fid_reject_factor: option(
        Optional[float],
        "--fid-reject-factor",
        "Reject a class set when FID > factor x real-vs-real floor. [default: 3]",
    ) = None,
    seed: seed_option("Seed of subsampling, bootstrap and calibration copies. [default: 0]") = None,
    overwrite: overwrite_option("Replace an earlier `synth filter` output at --out.") = False,
) -> None:
    """Keep synthetic images that show their label, look like real X-rays and copy no patient."""
    from synth.filtering import load_filter_config, run_filter
    from synth.output_folder import FILTER, check_out

    check_out(out, FILTER, overwrite)

    cfg = load_filter_config(
        config,
        command_overrides(
            sets,
            {
                "oracle": str(oracle) if oracle else None,
                "extractor": extractor,
                "threshold_quantile": threshold_quantile,
                "fid_reject_factor": fid_reject_factor,
                "seed": seed,
            },
        ),
    )
    summary = run_filter(synthetic, data, verifier, out, cfg)
    _print_summary(summary, out)


def verifier_train_command(
    data: data_option("Prepared real dataset (folder or manifest.csv); only split=train, source=real rows are used."),
    out: out_option("Output folder (model.safetensors + verifier.json)."),
    config: config_option("YAML (configs/filter/verifier.yaml); flags override.") = None,
    sets: set_option("lr=0.002") = None,
    arch: option(Optional[str], "--arch", "timm model name (random init). [default: convnext_atto]") = None,
    image_size: option(Optional[int], "--image-size", "Training resolution. [default: 128]") = None,
    epochs: Epochs = None,
    max_steps: max_steps_option("Stop after this many optimiser steps.") = None,
    seed: seed_option() = None,
) -> None:
    """Train the label-verifier on the real training split (never val/test, never synthetic)."""
    from synth.filtering import load_verifier_config, train_verifier

    flags = {"arch": arch, "image_size": image_size, "epochs": epochs, "max_steps": max_steps, "seed": seed}
    cfg = load_verifier_config(config, command_overrides(sets, flags))
    typer.echo(f"verifier written to {train_verifier(data, out, cfg)}", err=True)


def oracle_train_command(
    data: data_option("A large class-balanced phantom dataset (`synth phantom --balanced`, then `synth prepare`)."),
    out: out_option("Output folder (verifier files + oracle.json)."),
    config: config_option("YAML (configs/filter/oracle.yaml); flags override.") = None,
    sets: set_option("image_size=64") = None,
    epochs: Epochs = None,
    max_steps: max_steps_option() = None,
) -> None:
    """Train the phantom oracle (evaluation only); thresholds are F1-optimal on its val split."""
    import json

    from synth.filtering import load_verifier_config, train_oracle

    cfg = load_verifier_config(config, command_overrides(sets, {"epochs": epochs, "max_steps": max_steps}))
    folder = train_oracle(data, out, cfg)
    if (folder / "oracle.json").exists():
        _print_oracle(json.loads((folder / "oracle.json").read_text()))


def _print_summary(summary: dict, out: Path) -> None:
    from rich.table import Table

    from synth.console import rich_console
    from synth.distributed import process_state

    if not process_state().is_main_process:
        return
    fmt = lambda v, p=2: "—" if v is None else f"{v:.{p}f}"  # noqa: E731
    has_oracle = any(c.get("oracle_fidelity") is not None for c in summary["classes"].values())
    table = Table(
        "class",
        "n",
        "kept",
        "rejected (reason: n)",
        "threshold",
        "FID",
        "FID 95% CI",
        "floor",
        "KID",
        *(["oracle fidelity", "verifier P/R"] if has_oracle else []),
        title=f"{out} — {summary['metric_label']}",
    )
    for cls, c in summary["classes"].items():
        reasons = ", ".join(f"{k}: {v}" for k, v in c["rejected"].items()) or "—"
        ci = c.get("fid_ci")
        row = [
            cls,
            str(c["n"]),
            str(c["kept"]),
            reasons,
            fmt(c["threshold"], 3),
            fmt(c["fid"]),
            f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "—",
            fmt(c["fid_floor"]),
            fmt(c["kid"], 4),
        ]
        if has_oracle:
            row += [
                fmt(c.get("oracle_fidelity")),
                f"{fmt(c.get('verifier_precision'))}/{fmt(c.get('verifier_recall'))}",
            ]
        table.add_row(*row)
    console = rich_console(stderr=True)
    console.print(table)
    overlap = " (copies and distinct patients overlap: flags only what is closer than distinct patients)"
    console.print(
        f"kept {summary['kept']} of {summary['n']}; near-copy thresholds: "
        + ", ".join(
            f"{s} {t['threshold']:.3f}{'' if t['separates'] else overlap}" for s, t in summary["near_copy"].items()
        )
    )


def _print_oracle(report: dict) -> None:
    from rich.table import Table

    from synth.console import rich_console

    table = Table("class", "val AP", "threshold", "val positives", title="oracle (held-out phantom val)")
    for cls, c in report["classes"].items():
        table.add_row(
            cls,
            "—" if c["val_ap"] is None else f"{c['val_ap']:.3f}",
            "—" if c["threshold"] is None else f"{c['threshold']:.3f}",
            str(c["val_positives"]),
        )
    rich_console(stderr=True).print(table)


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the synth app (sub-apps share the app's error handling)."""
    app.command("filter")(filter_command)
    verifier = type(app)(help="Label-verifier of the filter.", no_args_is_help=True)
    verifier.command("train")(verifier_train_command)
    app.add_typer(verifier, name="verifier")
    oracle = type(app)(help="Phantom oracle (evaluation only).", no_args_is_help=True)
    oracle.command("train")(oracle_train_command)
    app.add_typer(oracle, name="oracle")
