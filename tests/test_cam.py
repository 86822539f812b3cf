"""CAM inference: the batched engine against the one-image-at-a-time
reference loop, normalisation, label masking, DRS max fusion, resume,
sharding, checkpoints and the make-cam command."""
import copy
import json
import re

import numpy as np
import pytest
import torch

from cam_fixtures import NUM_CLASSES, classifier, demo_root, one_thread, save_classifier  # noqa: F401
from dist_utils import torchrun
from wsss_fast import cli
from wsss_fast.inference import CamSettings
from wsss_fast.stages.cam import batch_cams, fused_maps, make_cams, resolve_settings
from wsss_fast.inference import batches_by_size
from wsss_fast.data import VOCSegmentation
from wsss_fast.errors import DataError, UsageError
from wsss_fast.models import load_cam_model, load_classifier
from wsss_fast.reference.cam import cam_loop
from wsss_fast.storage import load_scores
from wsss_fast.transforms import normalize

pytestmark = pytest.mark.usefixtures("one_thread")

# Batched and per-image forwards differ by float32 rounding of the convolutions
# (about 1e-6 of the largest output), which the max-normalisation of a weakly
# activated class map magnifies by (largest output / that map's maximum). So the
# loop test bounds each map's difference relative to that map's maximum: over
# 500 random batches per setting (AMD EPYC, 1 thread) at most 2.8e-4 (psa-max),
# 1.3e-4 (drs), 3e-6 (psa) and 8e-6 (unnormalised maps).
MAP_RTOL = 1e-3
# float16 storage adds up to half a unit in the last place: 2^-11 at 1.0.
FLOAT16_ATOL = 2 ** -11

SETTINGS = {
    "psa": resolve_settings("psa"),
    "drs": resolve_settings("drs", sizes=(40, 56)),
    "drs-flip": resolve_settings("drs", sizes=(40, 56), flip=True),
    "psa-max": resolve_settings("psa", scales=(1.0, 0.5), fuse="max"),
    "refine-drs": resolve_settings("drs", sizes=(40, 56), normalize=False),
    "refine-sum": resolve_settings("psa", scales=(1.0, 1.5), normalize=False),
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return demo_root(tmp_path_factory.mktemp("cam") / "demo", n_train=6, size=40)


@pytest.fixture(scope="module")
def model():
    return classifier(head_scale=100.0)


def assert_maps_close(maps, expected, atol=0.0):
    """(K, H, W) maps within MAP_RTOL of each expected map's maximum, plus ``atol``."""
    assert maps.shape == expected.shape
    bound = MAP_RTOL * np.abs(expected).max(axis=(1, 2), keepdims=True) + atol
    excess = np.abs(maps.astype(np.float64) - expected) - bound
    assert not (excess > 0).any(), f"{(excess > 0).sum()} values beyond the bound, by up to {excess.max():.2e}"


def random_batch(gen, n, height, width):
    images = torch.randint(0, 256, (n, 3, height, width), generator=gen, dtype=torch.uint8)
    labels = (torch.rand(n, NUM_CLASSES, generator=gen) < 0.3).float()
    labels[0] = 0  # an image without classes
    labels[1, 2] = 1
    return images, labels


@pytest.mark.parametrize("name", SETTINGS)
def test_batch_equals_per_image_loop(model, gen, name):
    settings = SETTINGS[name]
    images, labels = random_batch(gen, 4, 37, 50)
    out = batch_cams(model, images, labels, settings)
    for image, label, (keys, maps) in zip(images, labels, out):
        expected = cam_loop(model.class_maps, normalize(image), label, settings)
        assert keys.tolist() == (label.nonzero().flatten() + 1).tolist()
        assert maps.shape == (len(keys), 37, 50)
        assert_maps_close(maps, expected[keys - 1])
        absent = np.setdiff1d(np.arange(NUM_CLASSES), keys - 1)
        assert not expected[absent].any()  # the loop zeroes what the engine leaves out


def test_bfloat16_engine_is_close_to_the_float32_loop_and_not_equal(model, gen):
    """bfloat16 autocast with channels_last really runs (the maps move by bfloat16's
    rounding, not more), the maps come out float32, and the float32 model is untouched.

    Bounds from 61 random batches (AMD EPYC, 2 threads): mean |difference| at most 0.0032,
    its 99.9th percentile at most 0.039, its maximum 0.017 typically and 0.054 once (an
    isolated pixel, where rounding moves a map's maximum, which every value is divided by)."""
    from wsss_fast.cpu import prepare_model

    settings = SETTINGS["psa"]
    images, labels = random_batch(gen, 3, 37, 50)
    fast = prepare_model(copy.deepcopy(model), "bfloat16")
    out = batch_cams(fast, images, labels, settings, precision="bfloat16")
    differences = []
    for image, label, (keys, maps) in zip(images, labels, out):
        expected = cam_loop(model.class_maps, normalize(image), label, settings)[keys - 1]
        assert maps.dtype == np.float32 and maps.shape == expected.shape
        differences.append(np.abs(maps - expected).ravel())
    differences = np.concatenate(differences)
    assert differences.mean() < 0.01 and np.quantile(differences, 0.999) < 0.05 and differences.max() < 0.1
    assert differences.max() > 1e-4  # the network ran in bfloat16
    assert next(model.parameters()).is_contiguous()  # the float32 model kept its layout


def test_make_cams_records_its_precision(demo, model, tmp_path):
    dataset = VOCSegmentation(demo, "train")
    settings = resolve_settings("drs", sizes=(32,))
    make_cams(copy.deepcopy(model), dataset, tmp_path / "cam", settings, num_workers=0, progress=False,
              precision="bfloat16")
    recorded = json.loads((tmp_path / "cam" / "provenance.json").read_text())
    assert recorded["settings"]["precision"] == "bfloat16"
    with pytest.raises(UsageError):  # a resume in the other precision would mix outputs
        make_cams(copy.deepcopy(model), dataset, tmp_path / "cam", settings, num_workers=0, progress=False)


def test_normalisation_and_fusion_rules():
    """An identity 'network' (maps = the input's channels) makes every rule visible."""
    x = torch.randn(2, 3, 8, 12, generator=torch.Generator().manual_seed(0))
    channels = torch.tensor([[0, 2], [2, 1]])  # per image
    relu = x.clamp(min=0).gather(1, channels[:, :, None, None].expand(-1, -1, 8, 12))

    def one_scale(**kw):
        return fused_maps(lambda t: t.clamp(min=0), x, channels, CamSettings(scales=(1.0,), **kw))

    expected = relu / (relu.amax(dim=(2, 3), keepdim=True) + 1e-5)
    torch.testing.assert_close(one_scale(flip=False), expected)  # sum, then max-normalised per map
    twice = 2 * relu
    torch.testing.assert_close(one_scale(flip=True), twice / (twice.amax(dim=(2, 3), keepdim=True) + 1e-5))
    torch.testing.assert_close(one_scale(flip=True, fuse="max"), expected)  # each pass normalised, then max
    raw = fused_maps(lambda t: t, x, channels, CamSettings(scales=(1.0,), flip=True, normalize=False))
    torch.testing.assert_close(raw, relu)  # refinement maps: mean of the passes, clamped at 0


def test_drs_max_fusion_is_the_maximum_over_sizes(model, gen):
    images = normalize(torch.randint(0, 256, (3, 3, 33, 45), generator=gen, dtype=torch.uint8))
    channels = torch.arange(NUM_CLASSES).repeat(3, 1)
    single = [fused_maps(model.class_maps, images, channels, resolve_settings("drs", sizes=(s,)))
              for s in (32, 48, 64)]
    fused = fused_maps(model.class_maps, images, channels, resolve_settings("drs", sizes=(32, 48, 64)))
    torch.testing.assert_close(fused, torch.stack(single).amax(dim=0))
    # each size max-normalised on its own (+1e-5), and bilinear resizing back to 33 x 45 mixes
    # values convexly, so every peak is in [0, 1]; how close to 1 depends on where the resized
    # grid samples (an isolated peak can lose 15%), so the exact check is on a square image below
    peaks = fused.amax(dim=(2, 3))
    assert ((peaks >= 0) & (peaks <= 1)).all() and (peaks > 0.99).any()
    # a 48 x 48 image is not resized back at size 48: there each map peaks at exactly
    # m / (m + 1e-5) for its raw maximum m, and the fusion keeps at least that
    square = normalize(torch.randint(0, 256, (3, 3, 48, 48), generator=gen, dtype=torch.uint8))
    raw = fused_maps(model.class_maps, square, channels,
                     resolve_settings("drs", sizes=(48,), normalize=False)).amax(dim=(2, 3))
    at_48 = fused_maps(model.class_maps, square, channels,
                       resolve_settings("drs", sizes=(48,))).amax(dim=(2, 3))
    torch.testing.assert_close(at_48, raw / (raw + 1e-5))
    peaks = fused_maps(model.class_maps, square, channels,
                       resolve_settings("drs", sizes=(32, 48, 64))).amax(dim=(2, 3))
    assert (peaks >= at_48).all() and (peaks <= 1).all() and (raw > 0).any()
    summed = fused_maps(model.class_maps, images, channels, resolve_settings("drs", sizes=(32, 48, 64),
                                                                             fuse="sum"))
    assert not torch.allclose(summed, fused, atol=1e-3)


def test_batches_by_size_of_given_indices():
    sizes = [(3, 4), (4, 3), (3, 4), (3, 4), (4, 3)]
    assert batches_by_size(sizes, 2, [10, 11, 12, 13, 14]) == [[10, 12], [13], [11, 14]]
    with pytest.raises(UsageError):
        batches_by_size(sizes, 0)


def test_make_cams_matches_loop_and_keeps_label_classes(demo, model, tmp_path):
    dataset = VOCSegmentation(demo, "train")
    settings = resolve_settings("psa", scales=(1.0, 0.5))
    summary = make_cams(model, dataset, tmp_path / "cam", settings, batch_size=4, num_workers=0,
                        progress=False)
    assert sorted(summary["written"]) == sorted(dataset.names) and summary["skipped"] == 0
    for index, name in enumerate(dataset.names):
        item = dataset[index]
        stored = load_scores(tmp_path / "cam" / f"{name}.npz")
        assert stored.keys.tolist() == (item["label"].nonzero().flatten() + 1).tolist()
        assert stored.data.shape[1:] == tuple(item["image"].shape[1:])
        expected = cam_loop(model.class_maps, normalize(item["image"]), item["label"], settings)
        assert_maps_close(stored.data, expected[stored.keys - 1], atol=FLOAT16_ATOL)
        assert stored.data.min() >= 0 and stored.data.max() <= 1
    recorded = json.loads((tmp_path / "cam" / "provenance.json").read_text())
    assert recorded["command"] == "make-cam" and recorded["settings"]["scales"] == [1.0, 0.5]


def test_resume_skips_whole_outputs_recomputes_damaged_ones_and_refuses_other_settings(
        demo, model, tmp_path, capsys):
    dataset = VOCSegmentation(demo, "train")
    settings = resolve_settings("drs", sizes=(32,))
    out = tmp_path / "cam"
    make_cams(model, dataset, out, settings, num_workers=0, progress=False)
    missing, truncated, kept = (out / f"{n}.npz" for n in dataset.names[:3])
    whole, untouched = truncated.read_bytes(), kept.stat().st_mtime_ns
    missing.unlink()
    truncated.write_bytes(whole[: len(whole) // 2])  # e.g. a full disk during a copy
    summary = make_cams(model, dataset, out, settings, num_workers=0, progress=False)
    assert sorted(summary["written"]) == sorted(dataset.names[:2])
    assert summary["skipped"] == len(dataset) - 2
    assert truncated.read_bytes() == whole and kept.stat().st_mtime_ns == untouched
    assert f"recomputed: {truncated.name}" in capsys.readouterr().err
    with pytest.raises(UsageError, match=r"another make-cam run \(sizes \[32\] -> \[48\]\)"):
        make_cams(model, dataset, out, resolve_settings("drs", sizes=(48,)), num_workers=0, progress=False)


def test_resume_with_another_model_is_refused(demo, model, tmp_path):
    dataset = VOCSegmentation(demo, "train")
    settings = resolve_settings("psa", scales=(1.0,))
    first, second = save_classifier(tmp_path / "a.pt", model), tmp_path / "b.pt"
    make_cams(model, dataset, tmp_path / "cam", settings, num_workers=0, progress=False, inputs={"model": first})
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    save_classifier(second, other)
    with pytest.raises(UsageError, match="model sha256:"):
        make_cams(model, dataset, tmp_path / "cam", settings, num_workers=0, progress=False,
                  inputs={"model": second})


@pytest.mark.slow
def test_two_torchrun_ranks_cover_every_image_once(demo, model, tmp_path):
    save_classifier(tmp_path / "cls.pt", model)
    run = torchrun("make-cam", "--model", tmp_path / "cls.pt", "--voc", demo, "--out", tmp_path / "cam",
                   "--scales", "1", "--workers", "0", "--batch-size", "3", "--no-progress")
    assert run.returncode == 0, run.stderr
    counts = sorted(int(m) for m in re.findall(r"rank \d/2\): (\d+) images", run.stdout))
    assert counts == [3, 3], run.stdout
    names = sorted(VOCSegmentation(demo, "train").names)
    assert sorted(p.stem for p in (tmp_path / "cam").glob("*.npz")) == names


def test_load_classifier_round_trip_and_errors(model, tmp_path):
    path = save_classifier(tmp_path / "run" / "final.pt", model, method="drs")
    loaded = load_classifier(tmp_path / "run")  # the folder works too
    x = torch.randn(1, 3, 24, 24)
    torch.testing.assert_close(loaded.class_maps(x), model.class_maps(x))
    assert load_cam_model(path)[1]["method"] == "drs"
    with pytest.raises(UsageError, match="missing.pt"):
        load_classifier(tmp_path / "missing.pt")
    refine = save_classifier(tmp_path / "refine.pt", model, kind="refine")
    with pytest.raises(UsageError, match=r"refine\.pt holds a 'refine' model; expected 'classifier'"):
        load_classifier(refine)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(UsageError, match="plain.pt is not a wsss-fast trained model"):
        load_classifier(tmp_path / "plain.pt")
    other = classifier(width=8)
    payload = torch.load(path, weights_only=True)
    payload["model"] = other.state_dict()
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(UsageError, match="mismatch.pt: its weights do not fit"):
        load_classifier(tmp_path / "mismatch.pt")


def test_bad_settings_and_inputs(demo, model, tmp_path):
    with pytest.raises(UsageError, match="scales or sizes"):
        CamSettings(scales=(1.0,), sizes=(32,))
    with pytest.raises(UsageError, match="not both"):
        resolve_settings("psa", scales=(1.0,), sizes=(32,))
    (demo / "ImageSets" / "Segmentation" / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty"):
        VOCSegmentation(demo, "empty")
    with pytest.raises(UsageError, match="labels"):
        make_cams(model, VOCSegmentation(demo, "train", labels=False), tmp_path, resolve_settings("psa"))


def test_make_cam_command_then_eval_cam(demo, model, tmp_path, capsys):
    save_classifier(tmp_path / "cls" / "final.pt", model, method="drs")
    out = tmp_path / "cam"
    argv = ["make-cam", "--model", str(tmp_path / "cls"), "--voc", str(demo), "--out", str(out),
            "--sizes", "32", "48", "--workers", "0", "--no-progress"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "6 images" in printed and "drs: sizes 32 48, no flip, max" in printed
    assert cli.main(argv) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert cli.main(["eval-cam", "--cam", str(out), "--gt", str(demo / "SegmentationClass"),
                     "--no-progress"]) == 0
    assert "images 6" in capsys.readouterr().out
    assert cli.main(["make-cam", "--model", str(tmp_path / "nope.pt"), "--voc", str(demo), "--out",
                     str(out), "--no-progress"]) == 2
    assert "nope.pt" in capsys.readouterr().err
