"""Recognition datasets: ImageNet splits, ImageFolder, CSV lists, few-shot subsets, class order."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_jpeg

from lastvit_eval.data.recognition import class_list, few_shot, from_csv, from_folder, from_imagenet
from lastvit_eval.errors import InputError


def _tree(root, classes, per):
    for c in classes:
        for i in range(per):
            write_jpeg(root / c / f"{c}_{i}.jpg", (20, 16), seed=i)


def test_imagefolder_and_csv_agree(tmp_path):
    _tree(tmp_path / "train", ["b", "a", "c"], 3)
    folder = from_folder(tmp_path / "train")
    assert class_list(folder) == ["a", "b", "c"]
    assert list(folder.labels(class_list(folder))) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    csv = tmp_path / "train.csv"
    csv.write_text("path,label\n" + "".join(f"train/{p.parent.name}/{p.name},{p.parent.name}\n" for p in folder.paths))
    listed = from_csv(csv)
    assert listed.names == folder.names and [p.resolve() for p in listed.paths] == [p.resolve() for p in folder.paths]


def test_test_classes_must_exist_in_train(tmp_path):
    _tree(tmp_path / "train", ["a", "b"], 1)
    _tree(tmp_path / "val", ["a", "z"], 1)
    classes = class_list(from_folder(tmp_path / "train"))
    with pytest.raises(InputError, match="not present in the training set: z"):
        from_folder(tmp_path / "val").labels(classes)


def test_imagenet_train_and_val_share_sorted_wnids(tmp_path):
    _tree(tmp_path / "in" / "train", ["n02", "n01"], 2)
    _tree(tmp_path / "in" / "val", ["n01", "n02"], 1)
    train, val = from_imagenet(tmp_path / "in", "train"), from_imagenet(tmp_path / "in", "val")
    classes = class_list(train)
    assert classes == ["n01", "n02"] and list(val.labels(classes)) == [0, 1]


def test_few_shot_is_seeded_and_bounded(tmp_path):
    _tree(tmp_path / "t", ["a", "b", "c"], 5)
    data = from_folder(tmp_path / "t")
    a, b = few_shot(data, 2, seed=1), few_shot(data, 2, seed=1)
    assert a.ids == b.ids and len(a) == 6
    assert np.bincount(a.labels(class_list(data))).tolist() == [2, 2, 2]
    assert few_shot(data, 2, seed=2).ids != a.ids  # the seed matters


def test_csv_errors(tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text("file,cls\na.jpg,1\n")
    with pytest.raises(InputError, match="expected columns path,label"):
        from_csv(bad)
    bad.write_text("path,label\nmissing.jpg,1\n")
    with pytest.raises(InputError, match="do not exist"):
        from_csv(bad)
