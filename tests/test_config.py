"""Pipeline configs: loading, key=value overrides, and validation of every
key against the stage commands' own flags."""
from __future__ import annotations

import pytest

from wsss_fast.cli import build_parser
from wsss_fast.config import apply_override, load_config, options_to_argv
from wsss_fast.errors import UsageError
from wsss_fast.pipeline import STAGE_NAMES, _subparsers, validate


@pytest.fixture(scope="module")
def parsers():
    return _subparsers(build_parser())


def test_overrides_set_nested_keys_with_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("voc: /data\nstages:\n  train-cls: {epochs: 3}\n")
    config = load_config(path, ["stages.train-cls.epochs=5", "stages.make-cam.scales=[1.0, 0.5]", "out=runs/x",
                                "stages.train-cls.nesterov=false"])
    assert config == {"voc": "/data", "out": "runs/x",
                      "stages": {"train-cls": {"epochs": 5, "nesterov": False}, "make-cam": {"scales": [1.0, 0.5]}}}
    with pytest.raises(UsageError, match="not KEY=VALUE"):
        apply_override(config, "epochs")
    with pytest.raises(UsageError, match="'voc' is not a mapping"):
        apply_override(config, "voc.x=1")


def test_options_become_the_commands_flags(parsers):
    argv = options_to_argv(parsers["train-cls"], {
        "voc": "/d", "out": "o", "batch_size": 4, "resize-long": [96, 128], "nesterov": False, "resume": True,
        "no_jitter": False, "backbone_option": {"width": 8, "drs": "delta"}, "lr": None}, "stages.train-cls")
    assert argv == ["--voc", "/d", "--out", "o", "--batch-size", "4", "--resize-long", "96", "128",
                    "--no-nesterov", "--resume", "--backbone-option", "width=8", "--backbone-option", 'drs="delta"']
    args = parsers["train-cls"].parse_args(argv)
    assert args.backbone_option == [("width", 8), ("drs", "delta")] and args.nesterov is False


@pytest.mark.parametrize("config, message", [
    ({"voc": "/d", "epochs": 3}, "unknown config key(s) 'epochs'"),
    ({"out": "x"}, "no 'voc'"),
    ({"voc": "/d", "stages": {"train-cl": {}}}, "unknown stage(s) 'train-cl'"),
    ({"voc": "/d", "stages": {"train-cls": {"epochz": 3}}}, "stages.train-cls: unknown option 'epochz'"),
    ({"voc": "/d", "stages": {"train-cls": {"resume": "yes"}}}, "stages.train-cls.resume must be true or false"),
    ({"voc": "/d", "stages": {"train-cls": [1]}}, "stages.train-cls must be a mapping"),
])
def test_bad_configs_name_the_key(config, message):
    with pytest.raises(UsageError) as info:
        validate(config)
    assert message in str(info.value)


def test_stage_names_are_unique_and_every_stage_has_its_command(parsers):
    from wsss_fast.pipeline import STAGES

    assert len(set(STAGE_NAMES)) == len(STAGE_NAMES)
    missing = {s.command for s in STAGES} - set(parsers)
    assert not missing, f"stages without a command: {missing}"
