"""Dataset classes -> output indices of a head (or of a zero-shot text classifier), never by position.

A head's output i is some class; a dataset's label i is its i-th class in sorted order. The two agree
only by accident (a 4-wnid subset of ImageNet is labelled 0..3, while its head indices are, say, 1, 7,
390, 954), so the mapping is always explicit, in this order of precedence:

1. `--class-map FILE`: one `<class> <index>` per line (whitespace or tab separated), every class listed.
2. ImageNet-1k wnids on a 1000-way output: the standard synset order (timm ships the list).
3. The dataset's own label file (`meta/classes.tsv`: `<label> <wnid> [name]`), whose labels are the indices.
4. Class names that are integers (`meta/val.txt` labels) are the indices.

Anything else is an error naming the classes that could not be placed. The mapping used is written
into metrics.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class ClassMap:
    indices: np.ndarray  # dataset class index -> output index
    source: str
    outputs: int

    def describe(self, classes: list[str]) -> dict:
        pairs = {c: int(i) for c, i in zip(classes, self.indices, strict=True)}
        return {"source": self.source, "outputs": self.outputs, "classes": len(classes),
                "mapping": pairs if len(pairs) <= 100 else dict(list(pairs.items())[:100])}


def read_class_map(path: Path) -> dict[str, int]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: class map file not found")
    out: dict[str, int] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not parts[1].isdigit():
            raise InputError(f"{path}:{n}: expected '<class> <non-negative index>', got {line.strip()!r}")
        out[parts[0].strip()] = int(parts[1])
    if not out:
        raise InputError(f"{path}: no '<class> <index>' lines")
    return out


def imagenet_wnids() -> list[str]:
    """timm's ImageNet-1k synset list, read from timm's data file without importing timm (importing it costs
    a command on stored features seconds: it imports torchvision and torch._dynamo); the import otherwise."""
    import importlib.util

    spec = importlib.util.find_spec("timm")  # locates the package, runs none of it
    if spec is not None and spec.origin:
        synsets = Path(spec.origin).parent / "data" / "_info" / "imagenet_synsets.txt"
        if synsets.is_file():
            return [w.strip() for w in synsets.read_text().splitlines() if w.strip()]
    from timm.data import ImageNetInfo

    return list(ImageNetInfo().label_names())


def declared_labels(root: Path | None) -> dict[str, int] | None:
    """`meta/classes.tsv` of a dataset root: the label index it declares for each class."""
    if root is None:
        return None
    tsv = Path(root) / "meta" / "classes.tsv"
    if not tsv.is_file():
        return None
    from .data.labels import read_classes_tsv

    return {w: i for i, w in enumerate(read_classes_tsv(tsv))}


def map_classes(classes: list[str], outputs: int, what: str, class_map: Path | None = None,
                declared: dict[str, int] | None = None) -> ClassMap:
    """How each dataset class lands on `outputs` head/classifier indices (see the module docstring)."""
    if class_map is not None:
        given = read_class_map(class_map)
        missing = [c for c in classes if c not in given]
        if missing:
            raise InputError(f"{class_map}: no index for {len(missing)} dataset classes (e.g. {', '.join(missing[:3])})")
        return _checked(classes, [given[c] for c in classes], outputs, what, f"--class-map {class_map}")
    if outputs == 1000:
        order = {w: i for i, w in enumerate(imagenet_wnids())}
        if classes and all(c in order for c in classes):
            return _checked(classes, [order[c] for c in classes], outputs, what, "ImageNet-1k wnid order")
    if declared and all(c in declared for c in classes):
        return _checked(classes, [declared[c] for c in classes], outputs, what, "the dataset's meta/classes.tsv labels")
    if classes and all(c.isdigit() for c in classes):
        return _checked(classes, [int(c) for c in classes], outputs, what, "integer class labels")
    raise InputError(f"{what}: cannot map the dataset's {len(classes)} classes (e.g. {', '.join(classes[:3])}) onto "
                     f"its {outputs} outputs; give --class-map FILE ('<class> <index>' per line)")


def _checked(classes: list[str], idx: list[int], outputs: int, what: str, source: str) -> ClassMap:
    bad = [(c, i) for c, i in zip(classes, idx, strict=True) if not 0 <= i < outputs]
    if bad:
        c, i = bad[0]
        raise InputError(f"{what}: class {c!r} maps to index {i} ({source}) but there are only {outputs} outputs")
    return ClassMap(np.asarray(idx, dtype=np.int64), source, outputs)
