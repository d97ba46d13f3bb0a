"""Per-client data of the multi-task setting, and the file-based datasets in their real on-disk
formats (Flowers102's jpg/ + .mat files, Intel's Kaggle class folders)."""

import numpy as np
import pytest

from fedssl.config import ConfigError, DataConfig
from fedssl.data.client_images import ImageDataset, client_task, subsample, task_in_chans
from fedssl.data.datasets import DatasetNotFoundError, build_dataset


def test_flowers102_real_format_is_read_with_its_splits(tiny_flowers):
    train = build_dataset("flower102", "train", root=tiny_flowers)
    test = build_dataset("flower102", "test", root=tiny_flowers)
    assert len(train) == 15 and len(test) == 15  # trnid + valid / tstid
    # labels are 0-based and follow imagelabels.mat (image i has label (i-1) % 3)
    assert train.labels.tolist() == [(i - 1) % 3 for i in range(1, 16)]
    assert train.paths[0].endswith("jpg/image_00001.jpg")
    img = train.pil(0)
    assert img.mode == "RGB" and img.size == (40, 32)
    assert train.num_classes == 3 and train.in_chans == 3


def test_flowers102_missing_names_the_path_and_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        build_dataset("flower102", "train", root=tmp_path / "nowhere")
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg and "imagelabels.mat" in msg and "Flowers102" in msg


def test_flowers102_incomplete_folder_is_reported(tiny_flowers, tmp_path):
    import shutil

    broken = tmp_path / "flowers-102"
    shutil.copytree(tiny_flowers / "flowers-102", broken)
    (broken / "jpg" / "image_00003.jpg").unlink()
    with pytest.raises(DatasetNotFoundError, match="image_00003.jpg"):
        build_dataset("flower102", "all", root=tmp_path)


def test_intel_scene_kaggle_layout(tiny_intel):
    train = build_dataset("intel_scene", "train", root=tiny_intel)
    test = build_dataset("intel_scene", "test", root=tiny_intel)
    assert len(train) == 24 and len(test) == 12
    assert np.bincount(train.labels).tolist() == [4] * 6
    assert train.classes[0] == "buildings" and "seg_train" in train.paths[0]
    assert train.pil(5).mode == "RGB"


def test_intel_scene_missing_names_the_path_and_archive(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        build_dataset("intel_scene", "train", root=tmp_path)
    assert str(tmp_path) in str(err.value) and "seg_train" in str(err.value)
    assert "intel-image-classification" in str(err.value)


def test_unreadable_image_names_the_file(tiny_intel, tmp_path):
    import shutil

    root = tmp_path / "intel"
    shutil.copytree(tiny_intel, root)
    bad = sorted((root / "seg_train" / "seg_train" / "buildings").glob("*.jpg"))[0]
    bad.write_bytes(b"not a jpeg")
    ds = build_dataset("intel_scene", "train", root=root)
    with pytest.raises(ValueError, match=bad.name):
        ds.pil(0)


def _cfg(**kw) -> DataConfig:
    return DataConfig(**kw)


def test_client_task_split_is_stratified_disjoint_and_deterministic(tiny_fashion, tiny_intel):
    cfg = _cfg(
        clients=["fashion_mnist", "intel_scene"],
        root=str(tiny_fashion),
        roots={"intel_scene": str(tiny_intel)},
        labeled_fraction=0.25,
    )
    t0 = client_task(cfg, 0)
    assert t0.name == "fashion_mnist" and len(t0.labeled) + len(t0.unlabeled) == 600
    assert not set(t0.labeled) & set(t0.unlabeled)
    assert t0.histogram("labeled") == [15] * 10  # 25% of 60 per class
    assert t0.histogram("test") == np.bincount(t0.test.labels, minlength=10).tolist()
    t1 = client_task(cfg, 1)
    assert t1.name == "intel_scene" and len(t1.labeled) == 6  # one of four per class
    again = client_task(DataConfig(**vars(cfg)), 0)
    assert np.array_equal(again.labeled, t0.labeled)
    capped = client_task(
        _cfg(clients=["fashion_mnist"], root=str(tiny_fashion), max_per_client=200), 0
    )
    assert len(capped.labeled) + len(capped.unlabeled) == 200
    assert capped.histogram("labeled") == [5] * 10
    assert task_in_chans(cfg) == 3


def test_client_task_errors():
    with pytest.raises(ConfigError, match="data.clients is empty"):
        client_task(_cfg(), 0)
    with pytest.raises(ConfigError, match="unknown dataset 'cifar'"):
        client_task(_cfg(clients=["cifar"]), 0)
    with pytest.raises(ValueError, match="partition-id 3"):
        client_task(_cfg(clients=["mnist"]), 3)


def test_subsample_is_stratified():
    labels = np.repeat(np.arange(4), 50)
    idx = subsample(labels, 40, seed=0)
    assert np.bincount(labels[idx]).tolist() == [10] * 4
    assert len(subsample(labels, 0, seed=0)) == 200


def test_image_dataset_converts_mode(tiny_fashion):
    ds = build_dataset("fashion_mnist", "test", root=tiny_fashion)
    item, label = ImageDataset(ds, np.array([3]), lambda im: im, mode="RGB")[0]
    assert item.mode == "RGB" and int(label) == int(ds.labels[3])


def test_a_dataset_listed_twice_is_split_into_disjoint_shards(tiny_fashion):
    cfg = _cfg(clients=["fashion_mnist", "fashion_mnist"], root=str(tiny_fashion))
    a, b = client_task(cfg, 0), client_task(cfg, 1)
    ia = set(a.labeled) | set(a.unlabeled)
    ib = set(b.labeled) | set(b.unlabeled)
    assert len(ia) == len(ib) == 300 and not ia & ib
