"""README "Reproducing the references": every row of the table of deliberate
differences names a flag that the shipped VOC configs pass to their stages
(directly, or through --reference, which must stand for exactly the flags
the commands document), and the configs pass --check."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from wsss_fast.cli import build_parser, main
from wsss_fast.config import CONFIG_DIR
from wsss_fast.data.demo import make_demo_data

README = Path(__file__).resolve().parent.parent / "README.md"
HEADER = "| setting | reference code | wsss-fast default | why | restores the reference | configs |"


def table_rows() -> list[dict]:
    lines = README.read_text().splitlines()
    start = lines.index(HEADER) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        assert len(cells) == 6, line
        restore = re.search(r"`([^`]+)`", cells[4]).group(1).split()
        targets = [(config.strip(), stage.strip()) for part in cells[5].split(";")
                   for config, stages in [part.split(":")] for stage in stages.split(",")]
        rows.append({"setting": cells[0], "command": restore[0], "flags": restore[1:], "targets": targets})
    return rows


@pytest.fixture(scope="module")
def printed(tmp_path_factory) -> dict[str, dict[str, list[str]]]:
    """config name -> stage -> the argv --check prints for it."""
    tmp = tmp_path_factory.mktemp("table")
    make_demo_data(tmp / "data", n_train=8, n_val=4, size=32, progress=False)
    out = {}
    for name in ("voc_sccam", "voc_drs"):
        import contextlib
        import io

        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            assert main(["run", str(CONFIG_DIR / f"{name}.yaml"), f"voc={tmp / 'data'}", f"out={tmp / name}",
                         "train_split=train", "eval_split=train", "--check"]) == 0
        stages = {}
        for line in buffer.getvalue().splitlines():
            m = re.match(r"\[(\S+)\] wsss-fast (\S+) (.*)", line)
            if m:
                stages[m.group(1)] = [m.group(2), *shlex.split(m.group(3))]
        out[name] = stages
    return out


def reference_flags(command: str, argv: list[str]) -> tuple[str, ...]:
    from wsss_fast.commands import infer_seg, train_cls, train_refine, train_seg

    if command == "train-cls":
        return train_cls.REFERENCE_FLAGS[argv[argv.index("--method") + 1] if "--method" in argv else "cam"]
    return {"train-refine": train_refine.REFERENCE_FLAGS, "train-seg": train_seg.REFERENCE_FLAGS,
            "infer-seg": infer_seg.REFERENCE_FLAGS}.get(command, ())


def contains(sequence, part) -> bool:
    return any(list(sequence[i:i + len(part)]) == list(part) for i in range(len(sequence) - len(part) + 1))


def test_the_table_has_its_rows():
    rows = table_rows()
    assert len(rows) >= 17
    assert {r["command"] for r in rows} == {"rw", "train-aff", "train-cls", "train-refine", "eval-cam",
                                            "train-seg", "infer-seg"}


@pytest.mark.parametrize("row", table_rows(), ids=lambda r: r["setting"])
def test_every_row_is_restored_by_the_configs(row, printed):
    parser_commands = build_parser()._subparsers._group_actions[0].choices
    options = parser_commands[row["command"]]._option_string_actions
    assert all(f in options for f in row["flags"] if f.startswith("--")), row["flags"]
    for config, stage in row["targets"]:
        argv = printed[config][stage]
        assert argv[0] == row["command"], (config, stage, argv[0])
        given = contains(argv, row["flags"])
        through = "--reference" in argv and contains(reference_flags(row["command"], argv), row["flags"])
        assert given or through, f"{config} {stage}: {' '.join(argv)} lacks {' '.join(row['flags'])}"


def effective(command: str, argv: list[str]):
    """The settings a command line amounts to, as each command resolves them."""
    from wsss_fast.commands import infer_seg, train_cls, train_refine, train_seg

    args = build_parser().parse_args([command, *argv])
    if command == "train-cls":
        return train_cls.preset_from_args(args)
    if command == "train-refine":
        return train_refine.settings_from_args(args)
    if command == "train-seg":
        return train_seg.recipe_from_args(args)
    return infer_seg.msc_from_args(args)


@pytest.mark.parametrize("command, base", [
    ("train-cls", ["--voc", "v", "--out", "o", "--method", "drs"]),
    ("train-cls", ["--voc", "v", "--out", "o", "--method", "cam"]),
    ("train-cls", ["--voc", "v", "--out", "o", "--method", "sccam"]),
    ("train-refine", ["--classifier", "c", "--cams", "m", "--voc", "v", "--out", "o"]),
    ("train-seg", ["--voc", "v", "--labels", "l", "--out", "o"]),
    ("infer-seg", ["--model", "m", "--voc", "v", "--out", "o"]),
])
def test_reference_stands_for_its_documented_flags(command, base):
    flags = list(reference_flags(command, base))
    with_switch, spelled_out = effective(command, base + ["--reference"]), effective(command, base + flags)
    assert with_switch == spelled_out
    assert (with_switch != effective(command, base)) == bool(flags)
