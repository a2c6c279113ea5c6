"""The shipped COCO20k list (LOST's `datasets/coco_20k_filenames.txt`): complete, parseable, reachable as
`--image-list coco20k`, and the only list a report calls `coco20k`."""

from __future__ import annotations

import json
import re
from fnmatch import fnmatch
from pathlib import Path

import pytest
from typer.testing import CliRunner

import lastvit_eval
from lastvit_eval.app import app
from lastvit_eval.data.coco_subset import describe_image_list, read_image_list
from lastvit_eval.errors import InputError
from lastvit_eval.report.reference import dataset_key

ASSET = Path(lastvit_eval.__file__).parent / "assets" / "coco_20k_filenames.txt"
LINE = re.compile(r"^train2014/COCO_train2014_(\d{12})\.jpg$")


def _shipped_ids() -> list[int]:
    lines = ASSET.read_text(encoding="utf-8").splitlines()
    ids = []
    for line in lines:
        m = LINE.match(line)
        assert m, line
        ids.append(int(m.group(1)))
    return ids


def test_shipped_list_is_lost_s_19817_train2014_images():
    assert ASSET.stat().st_size < 5 * 2**20
    ids = _shipped_ids()
    assert len(ids) == 19817 and len(set(ids)) == 19817
    assert ids[:3] == [560992, 396626, 537231]  # LOST's file order, first lines of the published file
    assert read_image_list("coco20k") == ids
    pyproject = (Path(lastvit_eval.__file__).parents[1] / "pyproject.toml").read_text()  # no tomllib on 3.10
    section = pyproject.split("[tool.setuptools.package-data]", 1)[1]
    globs = re.findall(r'"([^"]+)"', re.search(r"^lastvit_eval\s*=\s*\[(.*?)\]", section, re.M | re.S).group(1))
    assert any(fnmatch("assets/coco_20k_filenames.txt", g) for g in globs)


def test_a_file_named_coco20k_is_read_when_written_as_a_path(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "coco20k").write_text("7\n9\n")
    assert read_image_list("./coco20k") == [7, 9]
    assert read_image_list(tmp_path / "coco20k") == [7, 9]
    with pytest.raises(InputError, match="names the shipped COCO20k list"):
        read_image_list("coco20k.txt")


def _record(image_list: dict) -> dict:
    return {"provenance": {"dataset": {"name": "coco", "test": "/data/coco/instances_train2014.json (x)",
                                       "image_list": image_list}}}


def test_only_the_coco20k_subset_is_called_coco20k(tmp_path: Path):
    ids = _shipped_ids()
    shipped = describe_image_list("coco20k", read_image_list("coco20k"))
    assert shipped["coco20k"] and shipped["images"] == 19817
    assert dataset_key("corloc.hit", _record(shipped)) == "coco20k"
    # the same ids as bare integers, another order, a file name without "20k": still COCO20k (content, not name)
    same = tmp_path / "subset.txt"
    same.write_text("".join(f"{i}\n" for i in sorted(ids)))
    rec = describe_image_list(same, read_image_list(same))
    assert rec["coco20k"] and dataset_key("corloc.hit", _record(rec)) == "coco20k"
    # a custom list, even one named like it, is not: nor is the list less one image
    custom = tmp_path / "my_coco_20k_filenames.txt"
    custom.write_text("train2014/COCO_train2014_000000560992.jpg\ntrain2014/COCO_train2014_000000396626.jpg\n")
    rec = describe_image_list(custom, read_image_list(custom))
    assert not rec["coco20k"] and dataset_key("corloc.hit", _record(rec)) == "coco"
    short = tmp_path / "coco20k_less_one.txt"
    short.write_text("".join(f"{i}\n" for i in ids[1:]))
    assert dataset_key("corloc.hit", _record(describe_image_list(short, read_image_list(short)))) == "coco"
    assert dataset_key("corloc.hit", {"provenance": {"dataset": {"test": "/data/coco20k/instances.json"}}}) == "coco"


def test_image_list_coco20k_resolves_through_the_cli(tmp_path: Path, forwarded):
    """With annotations that hold none of its ids, the run stops (exit 2, before any forward) naming all 19,817."""
    root = tmp_path / "train2014"
    root.mkdir()
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps({"images": [{"id": 2, "file_name": "a.jpg", "width": 4, "height": 4}],
                               "annotations": [], "categories": [{"id": 1, "name": "x"}]}))
    import torch
    from tiny_models import tiny_timm

    ckpt = tmp_path / "dino.pth"
    torch.save(tiny_timm(seed=0).state_dict(), ckpt)
    r = CliRunner().invoke(app, ["corloc", "-c", str(ckpt), "--coco-root", str(root), "--coco-annotations", str(ann),
                                 "--image-list", "coco20k", "--method", "lost", "-o", str(tmp_path / "o"),
                                 "--no-progress"])
    assert r.exit_code == 2, r.output
    assert "19817 listed image ids are not in this file (first: 560992)" in r.output
    assert len(r.output.strip().splitlines()) == 1 and forwarded == []
    r = CliRunner().invoke(app, ["corloc", "-c", str(ckpt), "--coco-root", str(root), "--coco-annotations", str(ann),
                                 "--image-list", str(tmp_path / "nope.txt"), "--method", "lost", "-o",
                                 str(tmp_path / "o"), "--no-progress"])
    assert r.exit_code == 2 and "image list file does not exist" in r.output, r.output
