"""The random walk's "auto" settings for CAMs and images unlike PSA's:
the background exponent from the CAMs' Otsu threshold and the walk length
scaled to the image."""
import math

import numpy as np
import pytest
import torch

from test_rw_stage import rw_argv, small_net, trained  # noqa: F401  (fixture)
from wsss_fast import cli
from wsss_fast.eval import cam_maximum_histogram, otsu_threshold
from wsss_fast.stages.random_walk import (WalkSettings, alpha_for_threshold, auto_steps, otsu_cam_threshold,
                                          propagate)
from wsss_fast.storage import load_label_png


def test_otsu_splits_two_modes():
    rng = np.random.default_rng(0)
    low, high = rng.normal(0.1, 0.04, 40000), rng.normal(0.7, 0.08, 10000)
    hist = np.histogram(np.clip(np.concatenate([low, high]), 0, 1), bins=256, range=(0, 1))[0]
    t = otsu_threshold(hist)
    assert 0.25 < t < 0.55
    # the definition, by brute force over the bin edges
    centres = (np.arange(256) + 0.5) / 256

    def between(i):
        a, b = hist[:i], hist[i:]
        if a.sum() == 0 or b.sum() == 0:
            return -1
        w0, w1 = a.sum() / hist.sum(), b.sum() / hist.sum()
        return w0 * w1 * ((a * centres[:i]).sum() / a.sum() - (b * centres[i:]).sum() / b.sum()) ** 2

    assert t == max(range(1, 256), key=between) / 256


def test_otsu_bad_histograms():
    for bad in (np.zeros(8), np.ones(1), -np.ones(4)):
        with pytest.raises(ValueError, match="histogram"):
            otsu_threshold(bad)


@pytest.mark.parametrize("t", [0.05, 0.1228, 0.3, 0.6])
def test_alpha_puts_the_background_at_the_threshold(t):
    alpha = alpha_for_threshold(t)
    assert (1 - t) ** alpha == pytest.approx(t)
    below, above = t * 0.9, min(t * 1.1, 0.99)
    assert (1 - below) ** alpha > below and (1 - above) ** alpha < above
    with pytest.raises(ValueError, match="threshold"):
        alpha_for_threshold(1.0)


def test_psa_alpha_16_is_a_threshold_of_0_123():
    assert alpha_for_threshold(0.12283) == pytest.approx(16, rel=1e-3)


def test_auto_steps_scale_with_the_image():
    assert auto_steps(375, 500) == 256
    assert auto_steps(128, 128) == 22
    assert auto_steps(1, 1) == 1
    assert auto_steps(750, 1000) == 1024


def test_auto_steps_in_the_walk(gen):
    net = small_net()
    image = torch.randint(0, 256, (1, 3, 40, 48), dtype=torch.uint8, generator=gen)
    cams = torch.rand(1, 2, 40, 48, generator=gen)
    auto = propagate(net, image, cams, WalkSettings(n_steps="auto"))
    fixed = propagate(net, image, cams, WalkSettings(n_steps=auto_steps(40, 48)))
    assert torch.equal(auto, fixed)


def test_rw_alpha_auto(trained, tmp_path, capsys):  # noqa: F811
    voc, base = trained
    names = voc.split("train")
    threshold = otsu_cam_threshold(base / "cam", names)
    alpha = alpha_for_threshold(threshold)
    hist = cam_maximum_histogram(base / "cam", names)
    assert hist.sum() == 8 * 48 * 48 and threshold == otsu_threshold(hist)
    assert cli.main(rw_argv(voc, base, tmp_path / "auto", "--alpha", "auto", "--steps", "auto")) == 0
    assert f"alpha {alpha:.3f}: the CAMs' Otsu threshold {threshold:.3f}" in capsys.readouterr().out
    assert cli.main(rw_argv(voc, base, tmp_path / "given", "--alpha", repr(alpha), "--steps",
                            str(auto_steps(48, 48)))) == 0
    for name in names:
        assert np.array_equal(load_label_png(tmp_path / "auto" / f"{name}.png"),
                              load_label_png(tmp_path / "given" / f"{name}.png"))
    with pytest.raises(SystemExit):
        cli.main(rw_argv(voc, base, tmp_path / "x", "--alpha", "sometimes"))
    assert "argument --alpha: 'sometimes' is not a number" in capsys.readouterr().err
    assert cli.main(rw_argv(voc, base, tmp_path / "x", "--threshold", "auto")) == 2
    assert "threshold: used by the irn random walk only" in capsys.readouterr().err
    assert math.isfinite(alpha)
