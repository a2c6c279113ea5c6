"""Write the bundled demo data set: a tiny ImageNet in the real on-disk formats the tool reads.

    python -m lastvit_eval.demo.make_data --out lastvit_eval/demo/data [--seed 0]

Layout (what ImageNet looks like after the usual val re-foldering, plus its box XML and label list):
    val/<wnid>/<image_id>.JPEG, train/<wnid>/<image_id>.JPEG    JPEG quality 85
    bbox/<image_id>.xml       ImageNet/VOC XML, one <object> per drawn object, for val and train
    meta/val.txt              `<image_id>.JPEG <label>` per val image
    meta/train.txt            `<wnid>/<image_id>.JPEG <label>` per train image
    meta/classes.tsv          `<label>\\t<wnid>\\t<name>`, label = index in sorted wnid order

Box convention (see synth.py): integer pixel-EDGE coordinates; the object occupies pixels x in
[xmin, xmax) and y in [ymin, ymax). Boxes come from the drawn mask before JPEG compression, so they are
exact. The same seed always gives byte-identical files.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from lxml import etree
from PIL import Image

from .synth import CLASSES, WNIDS, Sample, render

JPEG_QUALITY = 85
PER_CLASS = {"train": 30, "val": 12}


def voc_xml(image_id: str, folder: str, sample: Sample) -> bytes:
    """ImageNet-style VOC annotation for one image."""
    root = etree.Element("annotation")
    etree.SubElement(root, "folder").text = folder
    etree.SubElement(root, "filename").text = image_id
    etree.SubElement(etree.SubElement(root, "source"), "database").text = "lastvit_eval demo"
    size = etree.SubElement(root, "size")
    h, w, _ = sample.image.shape
    for tag, value in (("width", w), ("height", h), ("depth", 3)):
        etree.SubElement(size, tag).text = str(value)
    etree.SubElement(root, "segmented").text = "0"
    for box in sample.boxes:
        obj = etree.SubElement(root, "object")
        etree.SubElement(obj, "name").text = sample.wnid
        etree.SubElement(obj, "pose").text = "Unspecified"
        etree.SubElement(obj, "truncated").text = "0"
        etree.SubElement(obj, "difficult").text = "0"
        bnd = etree.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True):
            etree.SubElement(bnd, tag).text = str(value)
    return etree.tostring(root, pretty_print=True)


def write_dataset(out: Path, seed: int = 0, per_class: dict[str, int] = PER_CLASS) -> dict[str, int]:
    """Generate and write the demo split folders under `out` (replacing them); returns image counts."""
    for sub in ("train", "val", "bbox", "meta"):
        shutil.rmtree(out / sub, ignore_errors=True)
    (out / "bbox").mkdir(parents=True)
    (out / "meta").mkdir()
    (out / "meta" / "classes.tsv").write_text(
        "".join(f"{i}\t{wnid}\t{c[0]}\n" for i, (wnid, c) in enumerate(zip(WNIDS, CLASSES, strict=True))))
    counts = {}
    for split, n_per in per_class.items():
        lines = []
        for i in range(n_per * len(CLASSES)):
            sample = render(seed, split, i)
            image_id = f"demo_{split}_{i + 1:08d}"
            folder = out / split / sample.wnid
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(sample.image).save(folder / f"{image_id}.JPEG", quality=JPEG_QUALITY)
            (out / "bbox" / f"{image_id}.xml").write_bytes(voc_xml(image_id, split, sample))
            name = f"{image_id}.JPEG" if split == "val" else f"{sample.wnid}/{image_id}.JPEG"
            lines.append(f"{name} {sample.label}\n")
        (out / "meta" / f"{split}.txt").write_text("".join(lines))
        counts[split] = len(lines)
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    counts = write_dataset(args.out, args.seed)
    total = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"wrote {counts} images to {args.out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
