"""The random-walk stage: PSA's infer_aff steps (background row, padding,
pooling, dense walk, upsampling, crop) against an explicit dense version,
batching, and ``wsss-fast rw`` end to end (labels that wsss_fast.eval reads,
score files, CRF, resume, sharding, errors)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cam_fixtures import demo_with_synthetic_cams
from wsss_fast import cli, distributed
from wsss_fast.stages.affinity import AugmentSettings, BackboneInit, psa_train_config, train_affinity
from wsss_fast.stages.affinity_labels import make_affinity_labels
from wsss_fast.data import VOCSegmentation
from wsss_fast.eval import evaluate_label_dirs
from wsss_fast.models import build_backbone
from wsss_fast.models.affinity_net import AffinityNet
from wsss_fast.reference.random_walk import random_walk_dense
from wsss_fast.stages.random_walk import WalkSettings, propagate
from wsss_fast.storage import load_label_png, load_scores, save_scores
from wsss_fast.training import FINAL
from wsss_fast.transforms import normalize


def small_net(seed=0):
    torch.manual_seed(seed)
    return AffinityNet(build_backbone("scratch", width=4)).eval()


def psa_steps(net, image, cams, settings):
    """infer_aff's steps for one image, written out: (K + 1, H, W) numpy."""
    _, h, w = image.shape
    full = np.concatenate([(1 - cams.max(0, initial=0.0))[None] ** settings.alpha, cams])
    ph, pw = -(-h // 8) * 8, -(-w // 8) * 8
    padded = np.pad(full, ((0, 0), (0, ph - h), (0, pw - w)))
    pooled = padded.reshape(len(full), ph // 8, 8, pw // 8, 8).mean((2, 4))
    x = F.pad(normalize(torch.from_numpy(image))[None], (0, pw - w, 0, ph - h))
    with torch.no_grad():
        aff = net(x).double()
    walked = random_walk_dense(torch.from_numpy(pooled)[None], aff, 5, settings.beta, settings.n_steps,
                               settings.border)
    up = F.interpolate(walked, size=(ph, pw), mode="bilinear", align_corners=False)
    return up[0, :, :h, :w].numpy()


@pytest.mark.parametrize("border", ["all", "psa"])
def test_propagate_follows_psa(gen, border):
    net = small_net()
    image = torch.randint(0, 256, (3, 37, 50), dtype=torch.uint8, generator=gen)
    cams = torch.rand(2, 37, 50, generator=gen, dtype=torch.float64).numpy()
    cams /= cams.max((1, 2), keepdims=True)
    settings = WalkSettings(n_steps=32, border=border)
    got = propagate(net, image[None], torch.from_numpy(cams)[None], settings)
    assert got.shape == (1, 3, 37, 50)
    np.testing.assert_allclose(got[0].numpy(), psa_steps(net, image.numpy(), cams, settings),
                               rtol=2e-4, atol=1e-6)


def test_propagate_batches_images_with_different_class_counts(gen):
    net = small_net()
    images = torch.randint(0, 256, (2, 3, 24, 40), dtype=torch.uint8, generator=gen)
    cams = torch.rand(2, 3, 24, 40, generator=gen)
    cams[1, 1:] = 0  # the second image has one class
    settings = WalkSettings(n_steps=16)
    both = propagate(net, images, cams, settings)
    first = propagate(net, images[:1], cams[:1], settings)
    second = propagate(net, images[1:], cams[1:, :1], settings)
    torch.testing.assert_close(both[:1], first, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(both[1:, :2], second, rtol=1e-5, atol=1e-6)
    assert (both[1, 2:] == 0).all()


def test_propagate_takes_another_walk(gen):
    net = small_net()
    images = torch.randint(0, 256, (2, 3, 20, 27), dtype=torch.uint8, generator=gen)
    cams = torch.rand(2, 2, 20, 27, generator=gen)
    settings = WalkSettings(n_steps=16)
    sparse = propagate(net, images, cams, settings)
    dense = propagate(net, images, cams, settings, walk=random_walk_dense)
    torch.testing.assert_close(dense, sparse, rtol=1e-4, atol=1e-6)
    no_walk = propagate(net, images, cams, settings, walk=lambda maps, *_: maps)
    torch.testing.assert_close(no_walk, propagate(net, images, cams, WalkSettings(n_steps=0)))
    assert not torch.allclose(no_walk, sparse)


def test_no_class_means_background(gen):
    net = small_net()
    image = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8, generator=gen)
    out = propagate(net, image, torch.zeros(1, 0, 16, 16), WalkSettings(n_steps=4))
    assert out.shape == (1, 1, 16, 16) and torch.allclose(out, torch.ones_like(out))


# -- wsss-fast rw end to end -------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Demo data, synthetic CAMs, affinity labels and a one-epoch AffinityNet."""
    base = tmp_path_factory.mktemp("rw")
    voc = demo_with_synthetic_cams(base)
    make_affinity_labels(voc, voc.split("train"), base / "cam", base / "labels", workers=1, progress=False)
    train_affinity(VOCSegmentation(voc, "train", labels=False), base / "labels", base / "net",
                   BackboneInit(name="scratch", options={"width": 4}),
                   cfg=psa_train_config(epochs=1, batch_size=4, num_workers=0), augment=AugmentSettings(crop=48),
                   progress=False)
    return voc, base


def rw_argv(voc, base, out, *extra):
    return ["rw", "--voc", str(voc.root), "--split", "train", "--model", str(base / "net" / FINAL),
            "--cam", str(base / "cam"), "--out", str(out), "--steps", "64", "--num-workers", "0",
            "--device", "cpu", "--no-progress", *extra]


def test_rw_writes_labels_eval_reads_and_resumes(trained, tmp_path, capsys):
    voc, base = trained
    names = voc.split("train")
    out, scores = tmp_path / "rw", tmp_path / "scores"
    assert cli.main(rw_argv(voc, base, out, "--scores", str(scores), "--batch-size", "3")) == 0
    assert "rw: 8 images" in capsys.readouterr().out
    for name in names:
        cams = load_scores(base / "cam" / f"{name}.npz")
        label = load_label_png(out / f"{name}.png")
        assert label.shape == (48, 48)
        assert set(np.unique(label)) <= {0, *cams.keys.tolist()}
        walked = load_scores(scores / f"{name}.npz")
        assert walked.keys.tolist() == [0, *cams.keys.tolist()] and walked.data.shape[1:] == (48, 48)
        top2 = np.sort(walked.data, 0)[-2:]
        clear = top2[1] - top2[0] > 1e-2  # float16 files round near-ties
        assert np.array_equal(label[clear], walked.keys[walked.data.argmax(0)][clear])
    result = evaluate_label_dirs(out, voc.root / "SegmentationClass", 11, progress=False)
    assert result["num_images"] == 8 and 0 <= result["miou"] <= 1

    stamp = (out / f"{names[0]}.png").stat().st_mtime_ns
    (out / f"{names[3]}.png").unlink()
    assert cli.main(rw_argv(voc, base, out, "--scores", str(scores))) == 0
    printed = capsys.readouterr().out
    assert "rw: 1 images" in printed and "7 already done" in printed
    assert (out / f"{names[3]}.png").is_file()
    assert (out / f"{names[0]}.png").stat().st_mtime_ns == stamp


def test_rw_with_crf_and_psa_border(trained, tmp_path):
    voc, base = trained
    out = tmp_path / "crf"
    assert cli.main(rw_argv(voc, base, out, "--crf", "psa", "--crf-workers", "1", "--border", "psa")) == 0
    for name in voc.split("train"):
        keys = load_scores(base / "cam" / f"{name}.npz").keys
        assert set(np.unique(load_label_png(out / f"{name}.png"))) <= {0, *keys.tolist()}


def test_rw_shards_over_ranks(trained, tmp_path, monkeypatch):
    voc, base = trained
    names = voc.split("train")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(distributed, "barrier", lambda: None)  # no process group: rank 1 alone
    assert cli.main(rw_argv(voc, base, tmp_path, "--batch-size", "2")) == 0
    # whole batches of 2 (the demo images share one size) go to the ranks in turn
    assert sorted(p.stem for p in tmp_path.glob("*.png")) == sorted(n for i, n in enumerate(names) if i // 2 % 2)


def test_rw_bad_inputs(trained, tmp_path, capsys):
    voc, base = trained
    name = voc.split("train")[0]
    argv = rw_argv(voc, base, tmp_path / "o")
    missing = [*argv]
    missing[missing.index("--cam") + 1] = str(tmp_path / "nocam")
    assert cli.main(missing) == 2
    assert f"missing CAM files '{name}.npz'" in capsys.readouterr().err

    bad_cam = tmp_path / "badcam"
    for n in voc.split("train"):
        save_scores(bad_cam / f"{n}.npz", [1], np.ones((1, 40, 48)))
    wrong = [*argv]
    wrong[wrong.index("--cam") + 1] = str(bad_cam)
    wrong[wrong.index("--num-workers") + 1] = "1"  # raised in a loader worker: still one line
    assert cli.main(wrong) == 2
    err = capsys.readouterr().err
    assert "is 48x40 but its image is 48x48" in err and err.count("\n") == 1

    not_aff = [*argv]
    not_aff[not_aff.index("--model") + 1] = str(tmp_path / "nomodel")
    assert cli.main(not_aff) == 2
    assert "no trained model" in capsys.readouterr().err
