"""`report` (aggregate runs, optional regression gate) and `compare` (paired test of two runs)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import typer
from rich.console import Console

from ..app import app
from ..report import aggregate as agg
from ..report import compare as cmp
from ..report import gate as gt
from ..report.show import print_frame


@app.command("report")
def report(
    runs: list[Path] = typer.Argument(..., help="Run folders (with metrics.json) or folders of run folders."),
    output: Path = typer.Option(
        Path("results/report"), "--output", "-o",
        help="Folder for report.csv (long; a valid baseline), report_wide.csv, report.md (and gate.md)."),
    baseline: Path | None = typer.Option(
        None, "--baseline", help="Baseline CSV (a report.csv) to gate against; exit 1 on regression."),
    tolerance: float = typer.Option(
        0.5, "--tolerance", min=0.0,
        help="Allowed drop in points; a 'tolerance' column in the baseline overrides it per row."),
) -> None:
    """Aggregate runs into one table; with --baseline, fail (exit 1) when a metric regressed or vanished.

    Baseline rows are matched on checkpoint, pooling, dataset and metric (the run folder name is added
    only when those repeat); baseline metrics missing now fail as MISSING, new ones are listed as NEW.
    """
    long = agg.aggregate(runs)
    paths = agg.write_report(long, output)
    console = Console()
    print_frame(agg.display_table(long), title=f"{long['run'].nunique()} run(s), {len(long)} metric value(s)",
                console=console)
    console.print(f"wrote {paths['csv']}, {paths['wide_csv']}, {paths['md']}")
    if baseline is None:
        return
    result = gt.compare_to_baseline(long, gt.read_baseline(baseline), tolerance=tolerance)
    gate_md = gt.write_gate(result, output)
    print_frame(result.table, title=result.headline(), console=console)
    console.print(f"wrote {gate_md}")
    gt.enforce(result)


@app.command("compare")
def compare(
    run_a: Path = typer.Argument(..., help="Run folder A (the reference)."),
    run_b: Path = typer.Argument(..., help="Run folder B; differences are B - A."),
    metric: str = typer.Option("patch_hit.top1", "--metric", "-m",
                               help="Per-sample boolean metric, e.g. patch_hit.top1 or knn.k20.top1."),
    output: Path | None = typer.Option(None, "--output", "-o",
                                       help="Folder for compare.csv / compare.md / compare.json."),
    n_resamples: int = typer.Option(2000, "--n-resamples", min=100, help="Bootstrap resamples."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed (results are reproducible)."),
) -> None:
    """Paired comparison on the images both runs share: bootstrap CI of B - A and McNemar's test."""
    result = cmp.compare_runs(run_a, run_b, metric, n_resamples=n_resamples, seed=seed)
    console = Console()
    print_frame(pd.DataFrame(result.summary_rows(), columns=["", "value"]), title=f"B - A on {metric}",
                console=console)
    if len(result.per_class):
        print_frame(result.per_class, title="per class (points)", console=console,
                    formats={"mcnemar_exact_p": ".3g"})
    if output is not None:
        paths = cmp.write_comparison(result, output)
        console.print(f"wrote {paths['csv']}, {paths['md']}, {paths['json']}")
