"""AffinityNet's labels (CRF inputs, stride-8 label maps, labelled pairs),
its network and loss, and train-aff (loss goes down, exact resume, backbone
from a classifier, errors)."""
import json

import numpy as np
import pytest
import torch

from wsss_fast.stages import affinity_labels as al
from wsss_fast import cli
from wsss_fast.stages.affinity import (AugmentSettings, BackboneInit, build_affinity_net,
                                         psa_train_config, train_affinity)
from wsss_fast.data import VOCRoot, VOCSegmentation, make_demo_data
from wsss_fast.data.synthetic_cams import synthetic_cams
from wsss_fast.errors import DataError, UsageError
from wsss_fast.models import Classifier, build_backbone
from wsss_fast.models.affinity_net import AffinityNet, affinity_loss
from wsss_fast.models.checkpoints import load_affinity_net
from wsss_fast.pairs import offsets
from wsss_fast.storage import load_scores, save_scores
from wsss_fast.training import FINAL, Trainer
from wsss_fast.transforms import IMAGENET_MEAN, IMAGENET_STD, TrainAugment


# -- label map at feature stride ------------------------------------------------

def test_label_from_scores_hand_made():
    # 16 x 24 image, stride 8 -> 2 x 3 blocks; channels: bg, class 3, class 7.
    keys = torch.tensor([0, 3, 7])
    low = torch.zeros(3, 16, 24)
    high = torch.zeros(3, 16, 24)
    # block (0, 0): low says 3, high says 3 -> 3
    low[1, :8, :8] = 0.9; high[1, :8, :8] = 0.9
    # block (0, 1): low says background, high says 7 -> 255 (unsure)
    low[0, :8, 8:16] = 0.8; high[2, :8, 8:16] = 0.6
    # block (0, 2): high says background -> 0 (whatever low says)
    low[2, :8, 16:] = 0.9; high[0, :8, 16:] = 0.7
    # block (1, 0): the block mean decides, not the pixel count: class 3 leads
    # on 48 of the 64 pixels, but class 7 has the larger mean (0.25 vs 0.2)
    low[1, 8:, :8] = 0.2; low[2, 8:10, :8] = 1.0
    high[2, 8:, :8] = 0.5
    # block (1, 1): all scores 0 (crop padding) -> 255
    # block (1, 2): scores on 4 pixels only, background in both -> 0
    low[0, 8:10, 16:18] = 1.0; high[0, 8:10, 16:18] = 1.0
    label = al.label_from_scores(low, high, keys, 8)
    assert label.tolist() == [[3, 255, 0], [7, 255, 0]]


def test_label_from_scores_pads_like_block_reduce():
    # 10 x 9 -> 2 x 2 blocks; the edge blocks average over the full 8 x 8
    # window with zeros outside (skimage.block_reduce with cval 0).
    rng = np.random.default_rng(0)
    keys = torch.tensor([0, 2, 5])
    low = torch.from_numpy(rng.random((3, 10, 9)).astype(np.float32))
    high = torch.from_numpy(rng.random((3, 10, 9)).astype(np.float32))
    label = al.label_from_scores(low, high, keys, 8)
    expected = np.zeros((2, 2), np.int64)
    for by in range(2):
        for bx in range(2):
            block = (slice(None), slice(8 * by, 8 * by + 8), slice(8 * bx, 8 * bx + 8))
            lo = low[block].sum((1, 2)).numpy() / 64
            hi = high[block].sum((1, 2)).numpy() / 64
            value = keys[int(np.argmax(lo))].item()
            value = 255 if value == 0 else value
            expected[by, bx] = 0 if keys[int(np.argmax(hi))] == 0 else value
    assert label.tolist() == expected.tolist()


# -- labelled pairs ---------------------------------------------------------------

def brute_force_pairs(label: np.ndarray, radius: int, border: str):
    b, h, w = label.shape
    offs = offsets(radius)
    out = np.zeros((3, b, len(offs), h, w), bool)
    m = radius - 1
    for n in range(b):
        for k, (dy, dx) in enumerate(offs):
            for y in range(h):
                for x in range(w):
                    ty, tx = y + dy, x + dx
                    if not (0 <= ty < h and 0 <= tx < w):
                        continue
                    if border == "psa" and not (y < h - m and m <= x < w - m):
                        continue
                    a, c = label[n, y, x], label[n, ty, tx]
                    if a == 255 or c == 255:
                        continue
                    kind = 2 if a != c else (0 if a == 0 else 1)
                    out[kind, n, k, y, x] = True
    return out


@pytest.mark.parametrize("border", ["all", "psa"])
@pytest.mark.parametrize("radius", [2, 5])
def test_pair_labels_match_brute_force(gen, border, radius):
    h, w = torch.randint(1, 12, (2,), generator=gen).tolist()
    label = torch.randint(0, 4, (2, h, w), generator=gen)
    label[torch.rand(2, h, w, generator=gen) < 0.2] = 255
    got = al.pair_labels(label, radius, border)
    expected = brute_force_pairs(label.numpy(), radius, border)
    for g, e in zip(got, expected):
        assert g.dtype == torch.bool and g.shape == (2, len(offsets(radius)), h, w)
        assert np.array_equal(g.numpy(), e)


def test_pair_labels_hand_made():
    # One row: bg bg 1 1 255 2 with radius 2 (offsets (0,1), (1,-1), (1,0), (1,1)).
    label = torch.tensor([[[0, 0, 1, 1, 255, 2]]])
    bg, fg, neg = al.pair_labels(label, 2)
    right = 0  # offset (0, 1)
    assert bg[0, right, 0].tolist() == [True, False, False, False, False, False]
    assert fg[0, right, 0].tolist() == [False, False, True, False, False, False]
    assert neg[0, right, 0].tolist() == [False, True, False, False, False, False]
    assert not (bg[:, 1:].any() or fg[:, 1:].any() or neg[:, 1:].any())  # no second row


# -- loss -------------------------------------------------------------------------

def test_affinity_loss_hand_made():
    aff = torch.tensor([0.9, 0.5, 0.2, 0.7, 0.1]).view(1, 5, 1, 1)
    bg = torch.tensor([1, 1, 0, 0, 0], dtype=torch.bool).view(1, 5, 1, 1)
    fg = torch.tensor([0, 0, 1, 0, 0], dtype=torch.bool).view(1, 5, 1, 1)
    neg = torch.tensor([0, 0, 0, 1, 1], dtype=torch.bool).view(1, 5, 1, 1)
    loss, metrics = affinity_loss(aff, bg, fg, neg)
    e = 1e-5
    bg_loss = -(np.log(0.9 + e) + np.log(0.5 + e)) / (2 + e)
    fg_loss = -np.log(0.2 + e) / (1 + e)
    neg_loss = -(np.log(1 - 0.7 + e) + np.log(1 - 0.1 + e)) / (2 + e)
    assert loss.item() == pytest.approx(bg_loss / 4 + fg_loss / 4 + neg_loss / 2, rel=1e-5)
    assert metrics["fg_loss"] == pytest.approx(fg_loss, rel=1e-5)
    assert (metrics["bg_pairs"], metrics["fg_pairs"], metrics["neg_pairs"]) == (2, 1, 2)
    # No pairs of a kind: that term is 0, not NaN.
    loss, _ = affinity_loss(aff, bg, torch.zeros_like(fg), neg)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(bg_loss / 4 + neg_loss / 2, rel=1e-5)


# -- network ----------------------------------------------------------------------

@pytest.mark.parametrize("head_norm", ["gn", "none"])
def test_affinity_net_shapes_and_groups(gen, head_norm):
    torch.manual_seed(0)
    net = AffinityNet(build_backbone("scratch", width=4), head_norm=head_norm)
    x = torch.randn(2, 3, 37, 50, generator=gen)
    feats = net.features(x)
    assert feats.shape == (2, 448, 5, 7)
    aff = net(x)
    assert aff.shape == (2, 34, 5, 7) and aff.dtype == torch.float32
    assert (aff >= 0).all() and (aff <= 1).all()
    assert (aff[:, 0, :, -1] == 0).all()  # the (0, 1) neighbour of the last column is outside
    groups = net.param_groups()
    new_weights = {id(p) for p in groups["new_weight"]}
    assert all(id(c.weight) in new_weights for c in [*net.proj, net.fuse])
    if head_norm == "gn":
        assert all(id(n.weight) not in new_weights for n in net.norms)
    aff.sum().backward()
    assert net.proj[0].weight.grad is not None


def test_affinity_net_needs_three_stages():
    backbone = build_backbone("scratch", width=4)
    backbone.stage_channels = (8, 16)
    with pytest.raises(ValueError, match="3 stages"):
        AffinityNet(backbone)


# -- augmentation of the marginals with the image ---------------------------------

def test_train_augment_moves_scores_with_the_image(gen):
    image = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8, generator=gen)
    scores = image[:1].float() / 255 + 1e-3  # > 0 wherever the image is
    augment = TrainAugment(40, jitter=None, label_keys=(), score_keys=("s",))
    for seed in range(4):
        out = augment({"image": image, "s": scores}, np.random.default_rng(seed))
        assert out["s"].shape == (1, 40, 40)
        inside = out["s"][0] > 0
        assert inside.sum() == 20 * 30  # 0 padding, nothing lost
        red = out["image"][0] * IMAGENET_STD[0] * 255 + IMAGENET_MEAN[0] * 255
        assert torch.allclose(red[inside], (out["s"][0][inside] - 1e-3) * 255, atol=1e-3)


# -- make-aff-labels ----------------------------------------------------------------

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A tiny demo dataset with synthetic CAMs of its training images."""
    root = tmp_path_factory.mktemp("aff") / "demo"
    make_demo_data(root, n_train=8, n_val=0, size=48, progress=False)
    voc = VOCRoot(root)
    cam_dir = root.parent / "cam"
    for i, name in enumerate(voc.split("train")):
        save_scores(cam_dir / f"{name}.npz", *synthetic_cams(voc.load_mask(name), np.random.default_rng(i)))
    return voc, cam_dir


def fake_crf(pairs, preset, *, total=None, progress=True, **backend):
    """The inputs normalised over the channels, in order (stands in for the CRF)."""
    for _, probs in pairs:
        yield probs / probs.sum(0, keepdims=True)


def test_make_affinity_labels_stores_low_then_high(demo, tmp_path, monkeypatch):
    voc, cam_dir = demo
    monkeypatch.setattr(al, "imap_dense_crf", fake_crf)
    names = voc.split("train")[:3]
    summary = al.make_affinity_labels(voc, names, cam_dir, tmp_path, encoding="float16", progress=False)
    assert summary["written"] == 3 and summary["skipped"] == 0
    for name in names:
        cams = load_scores(cam_dir / f"{name}.npz")
        keys, low, high = al.load_label_scores(tmp_path, name)
        assert keys.tolist() == [0] + cams.keys.tolist()
        for alpha, got in ((4, low), (32, high)):
            probs = al.crf_inputs(cams, alpha)
            assert probs[0] == pytest.approx(np.clip(1 - cams.data.max(0), 0, 1) ** alpha, abs=1e-6)
            np.testing.assert_allclose(got, probs / probs.sum(0), atol=2e-3)


def test_make_affinity_labels_with_the_crf_resumes(demo, tmp_path):
    voc, cam_dir = demo
    names = voc.split("train")
    first = al.make_affinity_labels(voc, names[:5], cam_dir, tmp_path, workers=1, progress=False)
    assert first["written"] == 5
    stamp = (tmp_path / "la" / f"{names[0]}.npz").stat().st_mtime_ns
    (tmp_path / "ha" / f"{names[1]}.npz").unlink()  # an interrupted image
    again = al.make_affinity_labels(voc, names, cam_dir, tmp_path, workers=1, progress=False)
    assert (again["written"], again["skipped"]) == (4, 4)
    assert (tmp_path / "la" / f"{names[0]}.npz").stat().st_mtime_ns == stamp
    for name in names:
        keys, low, high = al.load_label_scores(tmp_path, name)
        assert low.shape == (len(keys), 48, 48)
        assert np.allclose(low.sum(0), 1, atol=0.02) and np.allclose(high.sum(0), 1, atol=0.02)
        # the high alpha shrinks the background
        assert low[0].sum() >= high[0].sum()


def test_make_affinity_labels_bad_inputs(demo, tmp_path):
    voc, cam_dir = demo
    name = voc.split("train")[0]
    with pytest.raises(DataError, match="missing CAM files 'nope.npz'"):
        al.make_affinity_labels(voc, ["nope"], cam_dir, tmp_path, workers=1, progress=False)
    bad = tmp_path / "badcam"
    save_scores(bad / f"{name}.npz", [1], np.ones((1, 10, 10)))
    with pytest.raises(DataError, match="is 10x10 but its image is 48x48"):
        al.make_affinity_labels(voc, [name], bad, tmp_path / "o1", workers=1, progress=False)
    save_scores(bad / f"{name}.npz", [1], np.full((1, 48, 48), 3.0))
    with pytest.raises(DataError, match=r"max-normalised to \[0, 1\]"):
        al.make_affinity_labels(voc, [name], bad, tmp_path / "o2", workers=1, progress=False)
    save_scores(bad / f"{name}.npz", [0, 1], np.ones((2, 48, 48)) / 2)
    with pytest.raises(DataError, match="holds key 0"):
        al.make_affinity_labels(voc, [name], bad, tmp_path / "o3", workers=1, progress=False)
    with pytest.raises(DataError, match="low alpha < high alpha"):
        al.make_affinity_labels(voc, [name], cam_dir, tmp_path / "o4", alphas=(32, 4), progress=False)


# -- train-aff ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def labels(demo, tmp_path_factory):
    voc, cam_dir = demo
    out = tmp_path_factory.mktemp("labels")
    al.make_affinity_labels(voc, voc.split("train"), cam_dir, out, workers=1, progress=False)
    return out


SCRATCH = BackboneInit(name="scratch", options={"width": 4})


def small_config(**changes):
    return psa_train_config(**{"batch_size": 4, "num_workers": 0, "log_every": 1, **changes})


def epoch_losses(out_dir):
    records = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["event"] == "epoch"]


@pytest.mark.slow
def test_train_affinity_lowers_the_loss_and_resumes_exactly(demo, labels, tmp_path, monkeypatch):
    voc, _ = demo
    images = VOCSegmentation(voc, "train", labels=False)
    cfg = small_config(epochs=8)
    augment = AugmentSettings(crop=48)
    straight = train_affinity(images, labels, tmp_path / "a", SCRATCH, cfg=cfg, augment=augment,
                              progress=False)
    losses = epoch_losses(tmp_path / "a")
    assert len(losses) == 8 and max(losses[-2:]) < 0.8 * losses[0]

    # Interrupted after its fourth epoch's checkpoint, then resumed.
    save = Trainer._save_checkpoint

    def save_then_stop(self, epoch):
        save(self, epoch)
        if epoch == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_affinity(images, labels, tmp_path / "b", SCRATCH, cfg=cfg, augment=augment, progress=False)
    monkeypatch.setattr(Trainer, "_save_checkpoint", save)
    resumed = train_affinity(images, labels, tmp_path / "b", SCRATCH, cfg=cfg, augment=augment,
                             resume=True, progress=False)
    a, b = torch.load(straight)["model"], torch.load(resumed)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    meta = torch.load(straight)["metadata"]
    assert meta["kind"] == "affinity" and meta["backbone"] == "scratch"
    assert meta["backbone_options"] == {"width": 4} and meta["radius"] == 5 and meta["stride"] == 8
    assert meta["num_classes"] == 5 and meta["class_names"] == list(voc.class_names)
    net = load_affinity_net(tmp_path / "a")
    assert not net.training and net.head_norm == "gn"


def test_train_aff_cli_one_epoch(demo, labels, tmp_path, capsys):
    voc, _ = demo
    argv = ["train-aff", "--voc", str(voc.root), "--split", "train", "--labels", str(labels),
            "--out", str(tmp_path), "--backbone", "scratch", "--backbone-option", "width=4",
            "--epochs", "1", "--batch-size", "4", "--crop", "32", "--head-norm", "none",
            "--border", "psa", "--num-workers", "0", "--device", "cpu", "--no-progress"]
    assert cli.main(argv) == 0
    assert f"wrote {tmp_path / FINAL}" in capsys.readouterr().out
    meta = torch.load(tmp_path / FINAL)["metadata"]
    assert (meta["head_norm"], meta["border"]) == ("none", "psa")
    assert cli.main(argv) == 2  # an existing run is not overwritten without --resume
    assert "--resume" in capsys.readouterr().err


def save_classifier(path, width=4, kind="classifier"):
    torch.manual_seed(1)
    model = Classifier(build_backbone("scratch", width=width), 10)
    meta = {"kind": kind, "backbone": "scratch", "backbone_options": {"width": width}, "num_classes": 10,
            "subcategories": 0, "dropout": 0.0, "class_names": [], "method": "cam"}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "metadata": meta, "config": {}}, path)
    return model


def test_backbone_from_classifier(tmp_path):
    classifier = save_classifier(tmp_path / "cls" / FINAL)
    for init in (BackboneInit(classifier=str(tmp_path / "cls")),
                 BackboneInit(name="scratch", classifier=str(tmp_path / "cls"))):
        net, meta, how = build_affinity_net(init, radius=5)
        assert meta == {"backbone": "scratch", "backbone_options": {"width": 4}}
        assert "all keys matched" in how and net.head_norm == "gn"
        own = net.backbone.state_dict()
        assert all(torch.equal(own[k], v) for k, v in classifier.backbone.state_dict().items())


def test_backbone_init_errors(tmp_path):
    save_classifier(tmp_path / "cls" / FINAL)
    cls = str(tmp_path / "cls")
    with pytest.raises(UsageError, match="differs from the backbone of classifier"):
        build_affinity_net(BackboneInit(name="vgg16_d1", classifier=cls), radius=5)
    with pytest.raises(UsageError, match="would change the classifier's backbone"):
        build_affinity_net(BackboneInit(options={"width": 8}, classifier=cls), radius=5)
    with pytest.raises(UsageError, match="name a backbone"):
        build_affinity_net(BackboneInit(), radius=5)
    save_classifier(tmp_path / "aff" / FINAL, kind="affinity")
    with pytest.raises(UsageError, match="expected 'classifier'"):
        build_affinity_net(BackboneInit(classifier=str(tmp_path / "aff")), radius=5)
    with pytest.raises(UsageError, match="no trained model"):
        build_affinity_net(BackboneInit(classifier=str(tmp_path / "none")), radius=5)
    with pytest.raises(UsageError, match="expected 'affinity'"):
        load_affinity_net(tmp_path / "cls")


def test_train_aff_without_labels_is_a_clear_error(demo, tmp_path, capsys):
    voc, _ = demo
    argv = ["train-aff", "--voc", str(voc.root), "--split", "train", "--labels", str(tmp_path / "none"),
            "--out", str(tmp_path / "out"), "--backbone", "scratch", "--num-workers", "0"]
    assert cli.main(argv) == 2
    assert "run wsss-fast make-aff-labels first" in capsys.readouterr().err
