"""scripts/gpu_check.sh and scripts/gpu_regressions.py without a GPU: the dry
run (phases 3-4's harness on the CPU) passes, the harness fails when a kernel
is wrong, and with WSSS_REQUIRE_CUDA=1 a skipped cuda test is a failure."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wsss_fast import ops

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_regressions  # noqa: E402


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          cwd=ROOT)


@pytest.mark.slow
def test_dry_run_passes():
    proc = run_script("--dry-run")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert re.search(r"^(\d+) cuda tests collected", out, re.M)
    assert len(re.findall(r"^\d+ passed, 0 failed$", out, re.M)) == 2  # full and --tiny
    assert len(re.findall(r"^=== phase .*: ok in \d+ s$", out, re.M)) == 2
    assert "gpu_check: all phases passed" in out


def test_bad_options():
    proc = run_script("--frobnicate")
    assert proc.returncode == 2 and "unknown option '--frobnicate'" in proc.stderr
    proc = run_script("--out")
    assert proc.returncode == 2 and "--out needs a folder" in proc.stderr
    assert "phases 1-5" in run_script("--help").stdout


def test_harness_lists_and_rejects_unknown_checks(capsys):
    assert gpu_regressions.main(["--device", "cpu", "--list"]) == 0
    names = capsys.readouterr().out.split()
    assert {"drs.window_48k", "affinity.d448", "random_walk.irn", "kmeans.k6000_float64"} <= set(names)
    with pytest.raises(SystemExit):
        gpu_regressions.main(["--device", "cpu", "--only", "nonesuch"])


def test_harness_fails_on_a_wrong_kernel(monkeypatch, capsys):
    real_walk, real_drs = ops.random_walk, ops.drs

    def walk_off_in_float32(cam, *args, **kwargs):
        out = real_walk(cam, *args, **kwargs)
        return out * 1.001 if cam.dtype == torch.float32 else out

    monkeypatch.setattr(ops, "random_walk", walk_off_in_float32)
    monkeypatch.setattr(ops, "drs", lambda x, gate: real_drs(x, gate) * 0.999)
    assert gpu_regressions.main(["--device", "cpu", "--seed", "1", "--only",
                                 "random_walk.small", "drs.repeatable", "drs.chunk"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^FAIL random_walk.small_images .*rel error", out, re.M)
    assert re.search(r"^FAIL drs.chunk_ties_nan .*forward differs", out, re.M)
    assert re.search(r"^ok   drs.repeatable_backward", out, re.M)  # still deterministic
    assert "1 passed, 2 failed" in out


def test_skipped_cuda_test_fails_when_cuda_is_required(tmp_path):
    """tests/conftest.py's hook, with cuda_ready() forced true (as on a GPU host)."""
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    cuda: probe\n")
    (tmp_path / "test_probe.py").write_text(
        "import conftest, pytest\n"
        "conftest.cuda_ready = lambda: True\n"
        "@pytest.mark.cuda\n"
        "def test_skips_inside():\n    pytest.skip('no kernel')\n"
        "@pytest.mark.cuda\n@pytest.mark.skipif(True, reason='marker')\n"
        "def test_skipif():\n    pass\n"
        "def test_plain_skip():\n    pytest.skip('not cuda: may skip')\n")

    def pytest_run(required: str) -> str:
        env = {**os.environ, "WSSS_REQUIRE_CUDA": required, "PYTHONPATH": str(ROOT)}
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               str(tmp_path)], capture_output=True, text=True, env=env,
                              cwd=tmp_path).stdout

    assert re.search(r"^3 skipped", pytest_run("0"), re.M)
    out = pytest_run("1")
    assert "skipped with WSSS_REQUIRE_CUDA=1: Skipped: no kernel" in out, out[-2000:]
    assert "skipped with WSSS_REQUIRE_CUDA=1: Skipped: marker" in out
    assert re.search(r"^1 failed, 1 skipped, 1 error in", out, re.M), out[-2000:]
