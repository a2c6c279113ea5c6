"""`lastvit-eval demo`: the whole tool on bundled data and checkpoints, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..app import app
from . import options as o

DEFAULT_OUT = Path("lastvit-eval-demo")  # in the current folder; the repository's .gitignore covers it


def where() -> str:
    """Where the bundled data and checkpoints are, and a command to paste that uses them."""
    import shlex

    from ..pipelines.demo import CHECKPOINTS, TRAINED_WITH, bundled

    data, ckpts = bundled()
    lines = [f"data root:   {data}  (ImageNet layout: train/, val/, VOC XML boxes in bbox/, meta/)"]
    for i, (c, trained) in enumerate(zip(ckpts, TRAINED_WITH, strict=True)):
        lines.append(f"{'checkpoints:' if i == 0 else '':<12} {c}  (tiny ViT trained with {trained} pooling)")
    last = ckpts[CHECKPOINTS.index("tiny_last.pth")]
    lines += ["try:", f"  lastvit-eval patch-hit -c {shlex.quote(str(last))} -r {shlex.quote(str(data))} -p last "
              "-o lastvit-eval-demo/patch-hit"]
    return "\n".join(lines)


@app.command("demo")
def demo(
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where to write the demo's results "
                                             "(default: lastvit-eval-demo/ in the current folder).")]
    = DEFAULT_OUT,
    device: o.Device = "auto",
    dtype: o.Dtype = "fp32",
    workers: o.Workers = None,
    no_progress: o.NoProgress = False,
    show_where: Annotated[bool, typer.Option("--where", help="Print where the bundled data and checkpoints are "
                                             "(and a command using them), then exit.")] = False,
) -> None:
    """Run patch-hit, k-NN, linear probe and classification for two bundled tiny ViTs (CLS- and LAST-trained)."""
    from ..errors import InputError

    if show_where:
        typer.echo(where())
        return
    if dtype not in ("fp32", "bf16", "fp16"):
        raise InputError(f"--dtype {dtype!r}: use fp32, bf16 or fp16")
    import pandas as pd

    from ..engine.device import EngineSpec
    from ..engine.distributed import session
    from ..pipelines.demo import demo_poolings, run_demo
    from ..report.console import console, pooling_caption
    from ..report.show import print_frame

    with session(device):
        out = run_demo(output_dir, EngineSpec(device=device, dtype=dtype, batch_size=64, workers=workers),
                       progress=not no_progress)
    if out is None:
        return  # a torch.distributed rank other than 0
    long = out.table
    shown = {"patch_hit.top1": "PiB top-1", "patch_hit.fg_above_bg": "fg>bg", "knn.k20.top1": "k-NN k20",
             "linear_probe.top1": "probe top-1", "classify.top1": "head top-1"}
    table = (long[long["metric"].isin(shown)].pivot_table(index=["checkpoint", "pooling"], columns="metric",
                                                          values="value", sort=False)
             .reindex(columns=list(shown)).rename(columns=shown).reset_index())
    table["checkpoint"] = table["checkpoint"].str.replace(".pth", "", regex=False)
    print_frame(table, title="demo: tiny ViTs on the bundled synthetic data (%, not the paper's ImageNet "
                "numbers; CIs in report.md)", console=console)
    console.print(f"poolings: {pooling_caption(demo_poolings())}. PiB top-1: images whose best-scoring patch lies "
                  "in the object box; fg>bg: images whose object patches score above the background on average.")
    keep = [r for r in out.summary if not str(r[0]).startswith(("metric", "A", "B")) or str(r[0]).startswith("B - A")]
    print_frame(pd.DataFrame(keep, columns=["", "value"]), title="PiB, paired: A = CLS-trained model (cls), "
                "B = LAST-trained model (last)", console=console)
    console.print(f"results in [bold]{output_dir.resolve()}[/]: report.md, report.csv, compare/, pictures/, one folder "
                  "per run", soft_wrap=True)
