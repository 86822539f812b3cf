"""The CPU runtime policy (wsss_fast.cpu): cores from the affinity mask and
the cgroup quota, torch threads, OpenMP's wait policy set by the command line
before torch loads, the allocator, and bfloat16 chosen from the CPU flags."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wsss_fast import cpu
from wsss_fast.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize("given", [{}, {"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "10000"},
                                   {"KMP_BLOCKTIME": "1"}, {"THP_MEM_ALLOC_ENABLE": "0"}])
def test_prepare_environment_sets_passive_waiting_and_huge_pages_unless_chosen(given):
    environ = dict(given)
    changes = cpu.prepare_environment(environ)
    expected = {"OMP_WAIT_POLICY": "PASSIVE", "THP_MEM_ALLOC_ENABLE": "1"}
    for name, value in expected.items():
        if name in given or (name == "OMP_WAIT_POLICY" and set(given) & set(cpu.WAIT_VARIABLES)):
            assert name not in changes and environ.get(name) == given.get(name)
        else:
            assert changes[name] == value == environ[name]


def test_cgroup_v2_quota_smallest_up_the_hierarchy(tmp_path):
    write(tmp_path / "cgroup.controllers", "cpu")
    write(tmp_path / "a" / "cpu.max", "250000 100000\n")
    write(tmp_path / "a" / "b" / "cpu.max", "max 100000\n")
    assert cpu.cgroup_cpu_limit("0::/a/b\n", tmp_path) == 2.5
    write(tmp_path / "cpu.max", "150000 100000\n")
    assert cpu.cgroup_cpu_limit("0::/a/b\n", tmp_path) == 1.5
    assert cpu.cgroup_cpu_limit("0::/other\n", tmp_path) == 1.5  # namespaced path: the mount's own files


def test_cgroup_v2_without_quota_and_hybrid_mount(tmp_path):
    write(tmp_path / "cgroup.controllers", "cpu")
    write(tmp_path / "cpu.max", "max 100000\n")
    assert cpu.cgroup_cpu_limit("0::/\n", tmp_path) is None
    hybrid = tmp_path / "hybrid"
    write(hybrid / "unified" / "cpu.max", "50000 100000\n")  # cgroup v2 under unified/, v1 beside it
    assert cpu.cgroup_cpu_limit("0::/\n", hybrid) == 0.5


def test_cgroup_v1_quota(tmp_path):
    write(tmp_path / "cpu,cpuacct" / "job" / "cpu.cfs_quota_us", "300000\n")
    write(tmp_path / "cpu,cpuacct" / "job" / "cpu.cfs_period_us", "100000\n")
    assert cpu.cgroup_cpu_limit("4:cpu,cpuacct:/job\n1:name=systemd:/\n", tmp_path) == 3.0
    write(tmp_path / "cpu" / "cpu.cfs_quota_us", "-1\n")
    write(tmp_path / "cpu" / "cpu.cfs_period_us", "100000\n")
    assert cpu.cgroup_cpu_limit("1:cpu:/\n", tmp_path) is None
    assert cpu.cgroup_cpu_limit("", tmp_path) is None


@pytest.mark.parametrize("affinity, limit, cores", [({0, 1, 2, 3}, None, 4), ({0, 1, 2, 3}, 1.5, 2),
                                                     ({0, 1, 2, 3}, 0.2, 1), ({5}, 8.0, 1)])
def test_available_cores_from_affinity_and_quota(affinity, limit, cores):
    assert cpu.available_cores(affinity, limit) == cores


def test_available_cores_of_this_process():
    assert 1 <= cpu.available_cores() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize("environ, cores, threads", [
    ({}, 8, 8), ({"LOCAL_WORLD_SIZE": "2"}, 8, 4), ({"LOCAL_WORLD_SIZE": "4"}, 2, 1),
    ({"OMP_NUM_THREADS": "3"}, 8, 3), ({"OMP_NUM_THREADS": "1", "LOCAL_WORLD_SIZE": "2"}, 8, 1),
    ({"OMP_NUM_THREADS": "6,2"}, 2, 6)])
def test_compute_threads(environ, cores, threads):
    assert cpu.compute_threads(environ, cores) == threads


@pytest.mark.parametrize("value", ["0", "many"])
def test_compute_threads_refuses_a_bad_omp_num_threads(value):
    with pytest.raises(UsageError, match="OMP_NUM_THREADS"):
        cpu.compute_threads({"OMP_NUM_THREADS": value}, 4)


def test_configure_torch_sets_the_threads():
    before = torch.get_num_threads()
    try:
        settings = cpu.configure_torch({"OMP_NUM_THREADS": "1"})
        assert settings["threads"] == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_retain_freed_memory_on_glibc():
    import platform

    assert cpu.retain_freed_memory() is (platform.libc_ver()[0] == "glibc")


CPUINFO = """processor\t: 0
vendor_id\t: {vendor}
flags\t\t: fpu sse sse2 avx avx2 avx512f {extra}
bogomips\t: 5192.28
"""


@pytest.mark.parametrize("extra, native", [("", False), ("avx512_vnni", False), ("avx512_bf16", True),
                                           ("amx_tile amx_bf16 amx_int8", True)])
def test_bfloat16_chosen_from_the_cpu_flags(extra, native):
    flags = cpu.cpu_flags(CPUINFO.format(vendor="X", extra=extra))
    assert "avx2" in flags and cpu.native_bf16(flags) is native
    assert cpu.resolve_precision("auto", "cpu", flags) == ("bfloat16" if native else "float32")
    assert cpu.resolve_precision("float32", "cpu", flags) == "float32"
    assert cpu.resolve_precision("bfloat16", "cpu", flags) == "bfloat16"  # forced, even where emulated
    assert cpu.resolve_precision("auto", "cuda", flags) == "float32"


def test_arm_features_line_and_bad_choice():
    assert cpu.cpu_flags("processor : 0\nFeatures : fp asimd bf16\n") == {"fp", "asimd", "bf16"}
    assert cpu.cpu_flags("nothing here\n") == frozenset()
    with pytest.raises(UsageError, match="precision"):
        cpu.resolve_precision("half", "cpu", frozenset())


def test_inference_context_runs_convolutions_in_bfloat16_channels_last():
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 3, 9, 9)
    with cpu.inference_context("float32") as layout:
        assert layout(x) is x and conv(layout(x)).dtype == torch.float32
    model = cpu.prepare_model(conv, "bfloat16")
    assert model.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), cpu.inference_context("bfloat16") as layout:
        assert layout(x).is_contiguous(memory_format=torch.channels_last)
        out = model(layout(x))
    assert out.dtype == torch.bfloat16
    assert cpu.prepare_model(conv, "float32") is conv


def test_cli_sets_openmp_waiting_before_torch_loads():
    """The policy in force at the moment torch (and libgomp) is first imported."""
    code = ("import os, sys\n"
            "class Spy:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch':\n"
            "            print('torch loads with', os.environ.get('OMP_WAIT_POLICY'))\n"
            "sys.meta_path.insert(0, Spy())\n"
            "from wsss_fast import cli\n"
            "try:\n    cli.main(['--version'])\nexcept SystemExit:\n    pass\n")
    env = {k: v for k, v in os.environ.items() if k not in cpu.WAIT_VARIABLES}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == "torch loads with PASSIVE"
    kept = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**env, "OMP_WAIT_POLICY": "ACTIVE"})
    assert kept.stdout.splitlines()[0] == "torch loads with ACTIVE"


def test_package_import_leaves_torch_unloaded_until_used():
    code = ("import sys, wsss_fast\nprint('torch' in sys.modules)\n"
            "print(wsss_fast.backend_info()['torch_version'] is not None, 'torch' in sys.modules)\n"
            "from wsss_fast import BackendWarning, ops\nprint(issubclass(BackendWarning, Warning))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "True", "True", "True"]
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        import wsss_fast

        wsss_fast.nothing
