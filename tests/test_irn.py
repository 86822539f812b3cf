"""IRN's stages: make-ir-labels against IRN's cam_to_ir_label written out
with pydensecrf, the boundary network (shapes, frozen backbone, IRN's
flip-averaged inference), train-irn's labels and loss against IRN's
AffinityDisplacementLoss affinity terms (its path index at radius 10, its
label extraction), ``rw --method irn`` against IRN's make_sem_seg_labels steps
with the dense float64 walk, and the commands end to end (resume, errors)."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cam_fixtures import demo_with_synthetic_cams
from wsss_fast import cli
from wsss_fast.errors import UsageError
from wsss_fast.models import build_backbone
from wsss_fast.models.checkpoints import load_boundary_net
from wsss_fast.models.initial import BackboneInit
from wsss_fast.models.irn import BoundaryNet
from wsss_fast.reference import irn as ref
from wsss_fast.stages.ir_labels import make_ir_labels
from wsss_fast.stages.irn import boundary_loss_fn, irn_train_config, IRNAugmentSettings, reduce_labels, train_irn
from wsss_fast.stages.random_walk import (IRNWalkSettings, otsu_cam_threshold, propagate_irn, run_random_walk,
                                          walk_settings)
from wsss_fast.storage import load_label_png, load_scores, save_scores
from wsss_fast.training import load_final
from wsss_fast.transforms import normalize

pytest.importorskip("pydensecrf.densecrf")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Demo data, synthetic CAMs, IR labels and a one-epoch boundary network."""
    base = tmp_path_factory.mktemp("irn")
    voc = demo_with_synthetic_cams(base)
    make_ir_labels(voc, voc.split("train"), base / "cam", base / "ir", workers=1, progress=False)
    train_irn(voc, "train", base / "ir", base / "net", BackboneInit(name="scratch", options={"width": 4}),
              cfg=irn_train_config(epochs=1, batch_size=4, num_workers=0), augment=IRNAugmentSettings(crop=48),
              radius=5, progress=False)
    return voc, base


# -- make-ir-labels -----------------------------------------------------------------------

def irn_ir_label(image: np.ndarray, cams: np.ndarray, keys: np.ndarray, fg=0.30, bg=0.05) -> np.ndarray:
    """IRN's step/cam_to_ir_label.py for one image, with its crf_inference_label."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_labels

    keys = np.pad(keys, (1, 0))
    h, w = image.shape[:2]

    def crf_label(labels):
        d = dcrf.DenseCRF2D(w, h, len(keys))
        d.setUnaryEnergy(unary_from_labels(labels, len(keys), gt_prob=0.7, zero_unsure=False))
        d.addPairwiseGaussian(sxy=3, compat=3)
        d.addPairwiseBilateral(sxy=50, srgb=5, rgbim=np.ascontiguousarray(np.copy(image)), compat=10)
        return np.argmax(np.array(d.inference(10)).reshape(len(keys), h, w), axis=0)

    fg_conf = keys[crf_label(np.argmax(np.pad(cams, ((1, 0), (0, 0), (0, 0)), constant_values=fg), 0))]
    bg_conf = keys[crf_label(np.argmax(np.pad(cams, ((1, 0), (0, 0), (0, 0)), constant_values=bg), 0))]
    conf = fg_conf.copy()
    conf[fg_conf == 0] = 255
    conf[bg_conf + fg_conf == 0] = 0
    return conf


@pytest.mark.parametrize("backend", ["auto", "wsss", "pydensecrf"])
def test_ir_labels_are_irns(data, backend, tmp_path):
    voc, base = data
    out = base / "ir" if backend == "auto" else tmp_path / "ir"  # the fixture's ran on auto
    if backend != "auto":
        make_ir_labels(voc, voc.split("train"), base / "cam", out, workers=1, crf_backend=backend,
                       device="cpu", progress=False)
    for name in voc.split("train"):
        cams = load_scores(base / "cam" / f"{name}.npz")
        want = irn_ir_label(voc.load_image(name), np.clip(cams.data, 0, 1), cams.keys)
        got = load_label_png(out / f"{name}.png")
        assert got.dtype == np.uint8 and got.shape == (48, 48)
        np.testing.assert_array_equal(got, want)
        assert set(np.unique(got)) <= {0, 255, *cams.keys.tolist()}


def test_ir_labels_resume_other_thresholds_and_no_class(data, tmp_path):
    voc, base = data
    names = voc.split("train")
    cams = tmp_path / "cam"
    for name in names:
        c = load_scores(base / "cam" / f"{name}.npz")
        save_scores(cams / f"{name}.npz", c.keys, c.data)
    save_scores(cams / f"{names[2]}.npz", np.zeros(0), np.zeros((0, 48, 48)))  # no class
    out = tmp_path / "ir"
    assert make_ir_labels(voc, names, cams, out, thresholds=(0.5, 0.1), workers=1, progress=False)["written"] == 8
    assert (load_label_png(out / f"{names[2]}.png") == 0).all()
    c = load_scores(cams / f"{names[0]}.npz")
    want = irn_ir_label(voc.load_image(names[0]), np.clip(c.data, 0, 1), c.keys, fg=0.5, bg=0.1)
    np.testing.assert_array_equal(load_label_png(out / f"{names[0]}.png"), want)
    stamp = (out / f"{names[1]}.png").stat().st_mtime_ns
    (out / f"{names[4]}.png").unlink()
    summary = make_ir_labels(voc, names, cams, out, thresholds=(0.5, 0.1), workers=1, progress=False)
    assert (summary["written"], summary["skipped"]) == (1, 7)
    assert (out / f"{names[4]}.png").is_file() and (out / f"{names[1]}.png").stat().st_mtime_ns == stamp
    with pytest.raises(UsageError, match="bg threshold < fg threshold"):
        make_ir_labels(voc, names, cams, out, thresholds=(0.1, 0.2))


# -- the boundary network ------------------------------------------------------------------

@pytest.mark.parametrize("name, options", [("scratch", {"width": 4}), ("resnet50", {})])
def test_boundary_net_shapes_and_frozen_backbone(name, options):
    torch.manual_seed(0)
    net = BoundaryNet(build_backbone(name, **options))
    x = torch.randn(2, 3, 37, 50)
    logits = net(x)
    assert logits.shape == (2, 1, 10, 13)
    net.train()
    assert not net.backbone.training and net.fuse.training
    logits.sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in net.backbone.parameters())
    assert all(p.grad is not None for p in [*net.branches.parameters(), *net.fuse.parameters()])
    groups = net.param_groups()
    assert not groups["pretrained_weight"] and not groups["pretrained_bias"]
    n = len(net.branches)  # conv and GroupNorm weights, GroupNorm biases, the fusion conv
    assert len(groups["new_weight"]) == 2 * n + 1 and len(groups["new_bias"]) == n + 1


def test_boundary_net_needs_a_stride_4_pyramid():
    with pytest.raises(UsageError, match="starts at stride 4.*Use resnet50"):
        BoundaryNet(build_backbone("vgg16_d1"))


def test_efficientnet_lite0_pyramid_feeds_the_boundary_branch(gen):
    """Stage 2's stride-4 map, then the same stride-8 maps as forward_stages."""
    torch.manual_seed(0)
    backbone = build_backbone("efficientnet_lite0", frozen_blocks=3).eval()
    x = torch.randn(2, 3, 37, 50, generator=gen)
    pyramid = backbone.forward_pyramid(x)
    assert backbone.pyramid_strides == (4, 8, 8, 8) and backbone.pyramid_channels == (24, 40, 80, 112)
    assert [tuple(m.shape[1:]) for m in pyramid] == [(24, 10, 13), (40, 5, 7), (80, 5, 7), (112, 5, 7)]
    for a, b in zip(pyramid[1:], backbone.forward_stages(x)):
        assert torch.equal(a, b)
    net = BoundaryNet(backbone).eval()
    assert net(torch.randn(1, 3, 48, 48, generator=gen)).shape == (1, 1, 12, 12)


def test_predict_is_irns_edge_displacement(gen):
    """net/resnet50_irn.py EdgeDisplacement: pad to the crop, crop the logits
    to the image's cells, average with the mirrored pass, sigmoid."""
    torch.manual_seed(0)
    net = BoundaryNet(build_backbone("scratch", width=4)).eval()
    x = torch.randn(1, 3, 30, 41, generator=gen)
    got = net.predict(x, pad_to=64)
    with torch.no_grad():
        both = F.pad(torch.cat([x, x.flip(-1)]), [0, 64 - 41, 0, 64 - 30])
        out = net(both)[..., :8, :11]
    want = torch.sigmoid(out[0] / 2 + out[1].flip(-1) / 2)
    torch.testing.assert_close(got[0], want)
    assert got.shape == (1, 1, 8, 11) and not torch.allclose(net.predict(x), got)


# -- train-irn -----------------------------------------------------------------------------

def test_reduce_labels_is_pils_nearest_quarter():
    label = np.random.default_rng(0).integers(0, 21, (64, 48)).astype(np.uint8)
    want = np.asarray(Image.fromarray(label).resize((12, 16), Image.NEAREST))
    np.testing.assert_array_equal(reduce_labels(torch.from_numpy(label), 4).numpy(), want)
    assert reduce_labels(torch.zeros(2, 30, 31), 4).shape == (2, 8, 8)


def test_loss_is_irns_affinity_loss(gen):
    """IRN's AffinityDisplacementLoss affinity terms with its path index at
    radius 10 on a 32 x 32 grid and GetAffinityLabelFromIndices' labels."""
    h = w = 32
    logits = torch.randn(2, 1, h, w, generator=gen, dtype=torch.float64)
    label = torch.randint(0, 4, (2, h, w), generator=gen)
    label[torch.rand(2, h, w, generator=gen) < 0.2] = 255
    got, metrics = boundary_loss_fn(10)(lambda image: image, {"image": logits, "ir_label": label})

    index = ref.PathIndex(10, (h, w))
    totals = []
    for b in range(2):
        aff = ref.edge_to_affinity(torch.sigmoid(logits[b, 0]), index)
        flat = label[b].reshape(-1)
        src, dst = flat[index.src][None], flat[index.dst]
        valid = (src < 21) & (dst < 21)
        pos = (src == dst) & valid
        totals.append(((pos & (src == 0)), (pos & (src > 0)), (src != dst) & valid, aff))
    bg, fg, neg, aff = (torch.cat([t[i].reshape(-1) for t in totals]) for i in range(4))
    pos_loss, neg_loss = -torch.log(aff + 1e-5), -torch.log(1 + 1e-5 - aff)
    bg_l = (bg * pos_loss).sum() / (bg.sum() + 1e-5)
    fg_l = (fg * pos_loss).sum() / (fg.sum() + 1e-5)
    neg_l = (neg * neg_loss).sum() / (neg.sum() + 1e-5)
    want = (bg_l / 2 + fg_l / 2 + neg_l) / 2
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)  # the loss runs in float32
    assert metrics["bg_pairs"] == bg.sum() and metrics["neg_pairs"] == neg.sum() > 0


def test_train_irn_writes_irns_model(data):
    voc, base = data
    payload = load_final(base / "net")
    meta = payload["metadata"]
    assert (meta["kind"], meta["radius"], meta["crop"], meta["stride"], meta["backbone"]) == \
        ("irn", 5, 48, 4, "scratch")
    assert payload["config"]["bias_decay"] and payload["config"]["momentum"] == 1e-4
    net, meta = load_boundary_net(base / "net")
    assert isinstance(net, BoundaryNet) and not net.training
    epochs = [json.loads(line) for line in open(base / "net" / "log.jsonl") if '"event": "epoch"' in line]
    assert len(epochs) == 1 and np.isfinite(epochs[0]["loss"]) and epochs[0]["neg_pairs"] > 0


def test_train_irn_cli_resumes_and_checks(data, tmp_path, capsys):
    voc, base = data
    argv = ["train-irn", "--voc", str(voc.root), "--split", "train", "--labels", str(base / "ir"),
            "--out", str(tmp_path / "net"), "--backbone", "scratch", "--backbone-option", "width=4",
            "--epochs", "1", "--batch-size", "4", "--crop", "48", "--radius", "5", "--num-workers", "0",
            "--device", "cpu", "--no-progress"]
    assert cli.main(argv) == 0
    assert load_final(tmp_path / "net")["metadata"]["radius"] == 5
    assert cli.main(argv) == 2
    assert "already holds a training run" in capsys.readouterr().err
    small = [*argv]
    small[small.index("--radius") + 1] = "10"
    small[small.index("--out") + 1] = str(tmp_path / "r10")
    assert cli.main(small) == 2
    assert "crop 48 gives a 12 x 12 grid at stride 4, too small for pairs of radius 10" in capsys.readouterr().err
    assert cli.main(small + ["--border", "all"]) == 0
    assert cli.main(argv + ["--resume"]) == 0
    missing = [*argv]
    missing[missing.index("--labels") + 1] = str(tmp_path / "none")
    missing[missing.index("--out") + 1] = str(tmp_path / "other")
    assert cli.main(missing) == 2
    assert "is not a directory" in capsys.readouterr().err
    vgg = [*argv[:argv.index("--backbone")], "--backbone", "vgg16_d1", "--out", str(tmp_path / "vgg"),
           "--epochs", "1", "--num-workers", "0", "--no-progress"]
    vgg[vgg.index("--out") + 1] = str(tmp_path / "vgg")
    assert cli.main(vgg) == 2
    assert "starts at stride 4" in capsys.readouterr().err


# -- rw --method irn -----------------------------------------------------------------------

def irn_sem_seg(net, image, cams, keys, settings):
    """IRN's step/make_sem_seg_labels.py for one image (dense float64 walk):
    scores (K + 1, H, W) and the label."""
    _, h, w = image.shape
    edge = net.predict(normalize(image)[None], settings.pad_to)[0].double()
    h4, w4 = edge.shape[-2:]
    strided = F.interpolate(torch.from_numpy(cams)[None].float(), size=(h4, w4), mode="bilinear",
                            align_corners=False)[0].double()
    strided /= strided.amax((1, 2), keepdim=True) + 1e-5
    rw = ref.propagate_to_edge(strided, edge[0], settings.radius, settings.beta, int(np.log2(settings.n_steps)))
    rw_up = F.interpolate(rw[:, None], scale_factor=4, mode="bilinear", align_corners=False)[:, 0, :h, :w]
    rw_up = rw_up / torch.max(rw_up)
    scores = F.pad(rw_up, (0, 0, 0, 0, 1, 0), value=settings.threshold)
    return scores.numpy(), np.pad(keys, (1, 0))[scores.argmax(0).numpy()]


def test_propagate_irn_follows_irn(data):
    voc, base = data
    net, _ = load_boundary_net(base / "net")
    settings = IRNWalkSettings(n_steps=16, pad_to=48)
    names = voc.split("train")[:3]
    images = torch.stack([torch.from_numpy(voc.load_image(n)).permute(2, 0, 1) for n in names])
    loaded = [load_scores(base / "cam" / f"{n}.npz") for n in names]
    k = max(len(c.keys) for c in loaded)
    cams = torch.zeros(3, k, 48, 48)
    for i, c in enumerate(loaded):
        cams[i, :len(c.keys)] = torch.from_numpy(np.clip(c.data, 0, 1))
    got = propagate_irn(net, images, cams, settings)
    assert got.shape == (3, k + 1, 48, 48)
    for i, c in enumerate(loaded):
        scores, label = irn_sem_seg(net, images[i], np.clip(c.data, 0, 1), c.keys, settings)
        np.testing.assert_allclose(got[i, :len(c.keys) + 1].numpy(), scores, rtol=1e-4, atol=1e-5)
        assert (got[i, len(c.keys) + 1:] == 0).all()


def test_propagate_irn_without_classes_is_background(data):
    voc, base = data
    net, _ = load_boundary_net(base / "net")
    image = torch.from_numpy(voc.load_image(voc.split("train")[0])).permute(2, 0, 1)[None]
    out = propagate_irn(net, image, torch.zeros(1, 0, 48, 48), IRNWalkSettings(n_steps=4))
    assert out.shape == (1, 1, 48, 48) and (out == 0.25).all()


def rw_argv(voc, base, out, *extra):
    return ["rw", "--method", "irn", "--voc", str(voc.root), "--split", "train", "--model", str(base / "net"),
            "--cam", str(base / "cam"), "--out", str(out), "--num-workers", "0", "--device", "cpu",
            "--no-progress", *extra]


def test_rw_irn_writes_labels_and_resumes(data, tmp_path, capsys):
    voc, base = data
    names = voc.split("train")
    out, scores = tmp_path / "rw", tmp_path / "scores"
    assert cli.main(rw_argv(voc, base, out, "--scores", str(scores), "--steps", "16", "--batch-size", "3")) == 0
    assert "rw: 8 images" in capsys.readouterr().out
    net, _ = load_boundary_net(base / "net")
    for name in names:
        cams = load_scores(base / "cam" / f"{name}.npz")
        label = load_label_png(out / f"{name}.png")
        walked = load_scores(scores / f"{name}.npz")
        assert walked.keys.tolist() == [0, *cams.keys.tolist()]
        assert np.allclose(walked.data[0], 0.25, atol=1e-3) and walked.data[1:].max() == pytest.approx(1, abs=1e-3)
        image = torch.from_numpy(voc.load_image(name)).permute(2, 0, 1)
        _, want = irn_sem_seg(net, image, np.clip(cams.data, 0, 1), cams.keys, IRNWalkSettings(n_steps=16, pad_to=48))
        top2 = np.sort(walked.data, 0)[-2:]
        clear = top2[1] - top2[0] > 1e-2  # float16 files round near-ties
        assert np.array_equal(label[clear], want[clear])
    (out / f"{names[5]}.png").unlink()
    assert cli.main(rw_argv(voc, base, out, "--scores", str(scores), "--steps", "16")) == 0
    assert "rw: 1 images" in capsys.readouterr().out


def test_rw_irn_threshold_auto_is_the_cams_otsu_threshold(data, tmp_path, capsys):
    """--threshold auto: the background score at the Otsu threshold of the largest CAM value over
    the split (printed), the same labels as giving that number; the API refuses it unresolved."""
    voc, base = data
    names = voc.split("train")
    threshold = otsu_cam_threshold(base / "cam", names)
    assert 0 < threshold < 1
    assert cli.main(rw_argv(voc, base, tmp_path / "auto", "--steps", "16", "--threshold", "auto")) == 0
    assert f"rw: background threshold {threshold:.3f}: the CAMs' Otsu threshold" in capsys.readouterr().out
    assert cli.main(rw_argv(voc, base, tmp_path / "given", "--steps", "16", "--threshold", repr(threshold))) == 0
    for name in names:
        assert np.array_equal(load_label_png(tmp_path / "auto" / f"{name}.png"),
                              load_label_png(tmp_path / "given" / f"{name}.png"))
    net, _ = load_boundary_net(base / "net")
    with pytest.raises(UsageError, match="threshold 'auto' needs the whole split's CAMs"):
        run_random_walk(net, voc, names, base / "cam", tmp_path / "api", IRNWalkSettings(threshold="auto"))
    with pytest.raises(SystemExit):
        cli.main(rw_argv(voc, base, tmp_path / "x", "--threshold", "often"))
    assert "argument --threshold: 'often' is not a number" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--alpha", "8"], "alpha: used by the psa random walk only"),
    (["--alpha", "auto"], "alpha: used by the psa random walk only"),
])
def test_rw_irn_rejects_psa_options(data, tmp_path, capsys, extra, message):
    voc, base = data
    assert cli.main(rw_argv(voc, base, tmp_path, *extra)) == 2
    assert message in capsys.readouterr().err


def test_rw_method_and_model_must_agree(data, tmp_path, capsys):
    voc, base = data
    argv = rw_argv(voc, base, tmp_path)
    argv[argv.index("irn")] = "psa"
    assert cli.main(argv) == 2
    assert "holds a 'irn' model; expected 'affinity'" in capsys.readouterr().err
    with pytest.raises(UsageError, match="threshold, pad_to: used by the irn random walk only"):
        walk_settings("psa", threshold=0.3, pad_to=8)
    assert walk_settings("irn") == IRNWalkSettings() and walk_settings("irn", beta=4.0).beta == 4.0
