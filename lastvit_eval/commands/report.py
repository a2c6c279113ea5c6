"""`report` (aggregate runs, optional regression gate) and `compare` (paired test of two runs)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..app import app


@app.command("report")
def report(
    runs: list[Path] = typer.Argument(..., help="Run folders (with metrics.json) or folders of run folders."),
    output: Path = typer.Option(
        Path("results/report"), "--output", "-o",
        help="Folder for report.csv (long; a valid baseline), report_wide.csv, report.md (and gate.md)."),
    baseline: Path | None = typer.Option(
        None, "--baseline", help="Baseline CSV (a report.csv) to gate against; exit 1 on regression."),
    tolerance: list[str] | None = typer.Option(
        None, "--tolerance", metavar="X|UNIT=X|METRIC=X",
        help="Allowed move the wrong way, in the metric's unit; repeatable: X (percent points), UNIT=X "
             "(percent, cosine, ratio, count, score, seconds) or METRIC_GLOB=X. Defaults: percent 0.5, "
             "cosine 0.02, ratio 0.005, count 0, score 0.01, seconds not gated. A 'tolerance' column in the "
             "baseline overrides them per row."),
    metrics: list[str] | None = typer.Option(
        None, "--metrics", "-m", metavar="METRIC[,METRIC...]",
        help="Console only: a table of these metrics (names or globs, comma-separated) side by side per run, "
             "instead of one row per run and metric. Files keep every metric."),
    reference: str | None = typer.Option(
        None, "--reference", metavar="paper|FILE",
        help="Put published numbers beside measured ones (reference.csv / reference.md): 'paper' for the "
             "LaSt-ViT paper's table shipped with the package, or a CSV with the same columns."),
    paper_table: str | None = typer.Option(
        None, "--paper-table", metavar="pib",
        help="pib: the paper's point-in-box table (pib_table.csv / pib_table.md): patch_hit.top1 of the runs "
             "as supervision x Baseline / + Register / LAST / ResNet, each cell beside the published number. "
             "The cell comes from what each run recorded (model family, registers, CNN, pooling); a run that "
             "fits no cell, or shares one, is listed as not placed."),
) -> None:
    """Aggregate runs into one table; with --baseline, fail (exit 1) when a metric regressed or vanished.

    Baseline rows match on checkpoint, pooling, dataset and metric (plus the run name only when those repeat).

    Each metric is judged in its own unit and direction: a lower-is-better metric fails when it rises.

    Baseline metrics missing now fail (MISSING), new ones are listed (NEW). The full gate table goes to gate.md.
    """
    from ..report import aggregate as agg
    from ..report import gate as gt
    from ..report.console import print_gate, print_reference, print_report
    from ..report.show import make_console

    tolerances = gt.parse_tolerances(tolerance)
    ref_table = None
    if reference is not None:
        from ..report.reference import load_reference

        ref_table = load_reference(reference)  # a bad --reference fails before anything is read or written
    if paper_table is not None and paper_table != "pib":
        from ..errors import InputError

        raise InputError(f"--paper-table {paper_table!r}: the paper table this report can make is 'pib'")
    long, records = agg.aggregate_records(runs)
    console = make_console()
    if metrics:
        from ..report.console import select_metrics

        select_metrics(long, metrics)  # a bad --metrics fails before anything is written
    paths = agg.write_report(long, output)
    print_report(long, console, metrics)
    console.print(f"wrote {paths['csv']}, {paths['wide_csv']}, {paths['md']}", soft_wrap=True, markup=False)
    if ref_table is not None:
        from ..report.reference import attach, write_reference

        matched = attach(long, records, ref_table)
        ref_paths = write_reference(matched, output)
        print_reference(matched, console)
        console.print(f"wrote {ref_paths['csv']}, {ref_paths['md']}", soft_wrap=True, markup=False)
    if paper_table is not None:
        from ..report.console import print_pib_table
        from ..report.pib_table import pib_table, write_pib_table

        table = pib_table(list(records.values()))
        pib_paths = write_pib_table(table, output)
        print_pib_table(table, console)
        console.print(f"wrote {pib_paths['csv']}, {pib_paths['md']}", soft_wrap=True, markup=False)
    if baseline is None:
        return
    result = gt.compare_to_baseline(long, gt.read_baseline(baseline), tolerances)
    gate_md = gt.write_gate(result, output)
    print_gate(result, console, gate_md)
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
    from ..report import compare as cmp
    from ..report.console import print_comparison
    from ..report.show import make_console

    result = cmp.compare_runs(run_a, run_b, metric, n_resamples=n_resamples, seed=seed)
    console = make_console()
    print_comparison(result, console)
    if output is not None:
        paths = cmp.write_comparison(result, output)
        console.print(f"wrote {paths['csv']}, {paths['md']}, {paths['json']}", soft_wrap=True, markup=False)
