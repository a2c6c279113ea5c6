"""The paper's point-in-box table: `report RUNS... --paper-table pib`.

Rows are the supervision (label-supervised, DINO, CLIP), columns Baseline, + Register, LAST and the ResNet
reference; each cell is the measured `patch_hit.top1` with its interval beside the published number. The
cell comes from what a run's `metrics.json` records, never from its file or folder name:

* row: `supervision()` of the recorded model (as `report --reference` matches it);
* column, from the recorded architecture and pooling:
  - a CNN (`ResNet-<depth>` / CLIP `RN50`) with its own pooling (GAP; the attention pool, `map`, for CLIP
    ResNets) -> ResNet;
  - a ViT with registers pooled by its own summary token (`cls`; `gap` / `map` when it has no class token)
    -> + Register;
  - a ViT without registers: `cls` -> Baseline, `last` -> LAST.

Anything else (LAST on a registers model or a CNN, GAP on a plain ViT, a run without `patch_hit.top1`, two
runs claiming one cell) is listed as not placed, with the reason. A placed run whose setting differs from the
paper's (architecture, dataset other than the 1000-class ImageNet val, PiB filter or hit rule) keeps its cell
and gets a numbered note: the number is measured, the comparison is the reader's call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .reference import arch_key, dataset_key, load_reference, supervision

METRIC = "patch_hit.top1"
ROWS = {"label": "label-supervised", "dino": "DINO", "clip": "CLIP"}
COLUMNS = ("Baseline", "+ Register", "LAST", "ResNet")
# The published cell: (claim in paper_reference.csv, its architecture, which value column)
PAPER_CELL = {"Baseline": ("pib", "ViT-B/16", "baseline"), "LAST": ("pib", "ViT-B/16", "last"),
              "+ Register": ("pib-registers", "ViT-B/16+reg", "baseline"),
              "ResNet": ("pib-cnn", "ResNet-50", "baseline")}
PAPER_FILTER = {"single_object": True, "max_box_area": 0.25}
CSV_COLUMNS = ["supervision", "column", "run", "checkpoint", "pooling", "arch", "dataset", "value", "ci_low",
               "ci_high", "n", "paper", "paper_arch", "note"]


@dataclass
class Placed:
    run: str
    checkpoint: str
    pooling: str
    supervision: str = ""
    column: str = ""
    arch: str = ""
    dataset: str = ""
    value: float = float("nan")
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    n: int | None = None
    notes: list[str] = field(default_factory=list)  # placed: how the setting differs; unplaced: the reason


@dataclass
class PibTable:
    cells: dict[tuple[str, str], Placed]  # (supervision, column) -> the one run there
    unplaced: list[Placed]
    paper: dict[tuple[str, str], float]  # (supervision, column) -> published value (absent where none)

    def cell_text(self, sup: str, col: str, marks: dict[tuple[str, str], int]) -> str:
        from .aggregate import format_cell

        paper = self.paper.get((sup, col))
        tail = f"(paper {paper:.1f})" if paper is not None else "(paper —)"
        p = self.cells.get((sup, col))
        if p is None:
            return f"— {tail}"
        mark = f" [{marks[(sup, col)]}]" if (sup, col) in marks else ""
        return f"{format_cell(p.value, p.ci_low, p.ci_high, 1)} {tail}{mark}"

    def marks(self) -> dict[tuple[str, str], int]:
        keys = [(s, c) for s in ROWS for c in COLUMNS if (s, c) in self.cells and self.cells[(s, c)].notes]
        return {k: i + 1 for i, k in enumerate(keys)}

    def display(self) -> pd.DataFrame:
        marks = self.marks()
        rows = [{"supervision": ROWS[s], **{c: self.cell_text(s, c, marks) for c in COLUMNS}} for s in ROWS]
        return pd.DataFrame(rows, columns=["supervision", *COLUMNS])

    def note_lines(self) -> list[str]:
        marks = self.marks()
        lines = []
        for (sup, col), i in marks.items():
            p = self.cells[(sup, col)]
            lines.append(f"[{i}] {ROWS[sup]} / {col}: run {p.run} ({p.checkpoint}, {p.pooling}): {'; '.join(p.notes)}")
        return lines

    def unplaced_lines(self) -> list[str]:
        return [f"{p.run} ({p.checkpoint}, {p.pooling}): {'; '.join(p.notes)}" for p in self.unplaced]

    def frame(self) -> pd.DataFrame:
        """The machine-readable form: one row per cell (all twelve), then one per run that was not placed."""
        out = []
        for sup in ROWS:
            for col in COLUMNS:
                p = self.cells.get((sup, col))
                base = {"supervision": sup, "column": col, "paper": self.paper.get((sup, col)),
                        "paper_arch": PAPER_CELL[col][1]}
                if p is None:
                    out.append(base)
                else:
                    out.append({**base, **_fields(p), "note": "; ".join(p.notes)})
        for p in self.unplaced:
            out.append({**_fields(p), "supervision": p.supervision, "column": "", "note": "not placed: "
                        + "; ".join(p.notes)})
        df = pd.DataFrame(out, columns=CSV_COLUMNS)
        df["n"] = pd.to_numeric(df["n"], errors="coerce").astype("Int64")
        return df


def _fields(p: Placed) -> dict:
    return {"run": p.run, "checkpoint": p.checkpoint, "pooling": p.pooling, "arch": p.arch, "dataset": p.dataset,
            "value": p.value, "ci_low": p.ci_low, "ci_high": p.ci_high, "n": p.n}


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def place(record: dict) -> Placed:
    """Where one run goes; `column` stays empty (and `notes` says why) when it has no cell."""
    prov = record.get("provenance") or {}
    model, pooling = prov.get("model") or {}, prov.get("pooling") or {}
    arch = model.get("arch") or {}
    p = Placed(run=str(record.get("run", "")), checkpoint=str(model.get("name") or ""),
               pooling=str(pooling.get("name") or ""), arch=arch_key(arch),
               dataset=dataset_key(METRIC, record) or str((prov.get("dataset") or {}).get("name") or ""))
    metric = (record.get("metrics") or {}).get(METRIC)
    if metric is None:
        p.notes.append(f"no {METRIC} (run it with -e patch-hit)")
        return p
    p.value, p.ci_low, p.ci_high, p.n = _num(metric.get("value")), _num(metric.get("ci_low")), \
        _num(metric.get("ci_high")), metric.get("n")
    if not arch:
        p.notes.append("no model architecture recorded (a run from feature files?)")
        return p
    p.supervision = supervision(model)
    if p.supervision not in ROWS:
        p.notes.append(f"{p.supervision} pre-training: the paper's PiB table has rows for "
                       f"{', '.join(ROWS.values())} models only")
        return p
    kind = str(pooling.get("kind") or "")  # the PoolingSpec the pipeline records: cls, gap, map, last
    registers = int(arch.get("num_registers") or 0)
    has_cls = int(arch.get("num_prefix_tokens") or 0) - registers >= 1
    if p.arch.startswith("ResNet"):
        own = "map" if model.get("family") == "openclip" else "gap"
        if kind == own:
            p.column = "ResNet"
        else:
            p.notes.append(f"a CNN with {kind} pooling: the ResNet column is the CNN with its own pooling "
                           f"({own})")
    elif registers > 0:
        own = ("cls",) if has_cls else ("gap", "map")
        if kind in own:
            p.column = "+ Register"
        else:
            p.notes.append(f"{registers} registers with {kind} pooling: the + Register column is the registers "
                           f"model with its own pooling ({' or '.join(own)})")
    elif kind == "cls":
        p.column = "Baseline"
    elif kind == "last":
        p.column = "LAST"
    else:
        p.notes.append(f"a ViT without registers with {kind} pooling: Baseline is cls pooling, LAST is last")
    if p.column:
        p.notes.extend(_differences(p, record))
    return p


def _differences(p: Placed, record: dict) -> list[str]:
    notes = []
    paper_arch = PAPER_CELL[p.column][1]
    if p.arch != paper_arch:
        notes.append(f"{p.arch or 'unknown architecture'}, the paper's is {paper_arch}")
    if p.dataset != "imagenet-val":
        ds = (record.get("provenance") or {}).get("dataset") or {}
        notes.append(f"dataset {ds.get('name') or '?'} ({ds.get('classes', '?')} classes), the paper's is "
                     "ImageNet-1k val")
    info = (record.get("info") or {}).get("patch-hit") or {}
    filt = info.get("filter")
    if isinstance(filt, dict) and any(filt.get(k) != v for k, v in PAPER_FILTER.items()):
        notes.append(f"PiB filter {filt}, the paper's is {PAPER_FILTER}")
    rule = info.get("hit_rule")
    if rule is not None and rule != "any":
        notes.append(f"hit rule {rule}, the paper's is any")
    return notes


def pib_table(records: list[dict], reference: pd.DataFrame | None = None) -> PibTable:
    """Place every run; a cell two runs claim is left empty and both are listed (choosing would be a guess)."""
    reference = load_reference("paper") if reference is None else reference
    claims: dict[tuple[str, str], list[Placed]] = {}
    unplaced: list[Placed] = []
    for rec in records:
        p = place(rec)
        if p.column:
            claims.setdefault((p.supervision, p.column), []).append(p)
        else:
            unplaced.append(p)
    cells = {}
    for key, ps in claims.items():
        if len(ps) == 1:
            cells[key] = ps[0]
            continue
        names = ", ".join(p.run for p in ps)
        for p in ps:
            p.notes = [f"{len(ps)} runs for {ROWS[key[0]]} / {key[1]} ({names}): pass report only one"]
            unplaced.append(p)
    paper = {}
    for sup in ROWS:
        for col, (claim, arch, value_col) in PAPER_CELL.items():
            hit = reference[(reference["claim"] == claim) & (reference["metric"] == METRIC)
                            & (reference["supervision"] == sup) & (reference["arch"] == arch)]
            if len(hit) and not pd.isna(hit.iloc[0][value_col]):
                paper[(sup, col)] = float(hit.iloc[0][value_col])
    unplaced.sort(key=lambda p: (p.run, p.checkpoint, p.pooling))
    return PibTable(cells=cells, unplaced=unplaced, paper=paper)


def markdown(table: PibTable) -> str:
    from .write import to_markdown

    text = ("Point-in-box top-1 (%), measured [95% CI] (paper), patch_hit.top1; LaSt-ViT (CVPR 2026) PiB "
            "table.\n\n" + to_markdown(table.display()))
    if table.note_lines():
        text += "\nNotes (the run's setting differs from the paper's):\n\n" + "".join(
            f"- {line}\n" for line in table.note_lines())
    if table.unplaced:
        text += "\nNot placed:\n\n" + "".join(f"- {line}\n" for line in table.unplaced_lines())
    return text


def write_pib_table(table: PibTable, out_dir: str | Path) -> dict[str, Path]:
    from .aggregate import CSV_FLOAT
    from .write import staged_writes

    out_dir = Path(out_dir)
    paths = {"csv": out_dir / "pib_table.csv", "md": out_dir / "pib_table.md"}
    with staged_writes() as w:
        w.text(paths["csv"], table.frame().to_csv(index=False, float_format=CSV_FLOAT, lineterminator="\n"))
        w.text(paths["md"], markdown(table))
    return paths
