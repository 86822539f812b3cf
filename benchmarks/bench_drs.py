"""Fused DRS (wsss_fast.ops.drs) against the eager reference composition and
torch.compile of it, forward + backward, at the VGG-16 DRS shapes.

    python benchmarks/bench_drs.py [--device cuda] [--dtype float32 ...] [--no-compile]

Every contender computes the output and the gradients for x and a learnable
(N, C) gate from the same inputs. Times are medians; "speedup" is the eager
reference's time over the contender's. On CUDA it also measures a
device-to-device copy and reports the fused kernels' achieved bandwidth
(minimal traffic: forward reads x and writes out, backward reads x and grad_out
and writes grad_x; 5 tensor-sized transfers in all) as a fraction of it.
Results: benchmarks/results/drs-<cpu|cuda>.json; default dtypes float32 on the CPU,
float32, float16 and bfloat16 on CUDA.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import measure, print_table, write_results  # noqa: E402

import wsss_fast  # noqa: E402
from wsss_fast import ops, reference  # noqa: E402

# VGG-16 DRS layers at a 321 px crop, batch 5.
SHAPES = [(5, 64, 321, 321), (5, 128, 161, 161), (5, 256, 81, 81), (5, 512, 41, 41)]


def fwd_bwd(fn, x, gate, grad_out):
    def step():
        out = fn(x, gate)
        return torch.autograd.grad(out, (x, gate), grad_out)
    return step


def fwd_only(fn, x, gate):
    def step():
        with torch.no_grad():
            return fn(x, gate)
    return step


def copy_bandwidth(x: torch.Tensor, reps: int) -> float:
    """GB/s of a device-to-device copy of x (bytes read + bytes written)."""
    dst = torch.empty_like(x)
    t = measure(lambda: dst.copy_(x), x.device, warmup=3, reps=reps)
    return 2 * x.numel() * x.element_size() / (t["median_ms"] * 1e-3) / 1e9


def run(device: torch.device, dtype: torch.dtype, compile_ref: bool, reps: int) -> list[dict]:
    # One graph per shape, dtype and grad mode: more than dynamo's default of 8
    # recompilations of reference.drs, after which it would silently run eager.
    torch._dynamo.config.cache_size_limit = 64
    compiled = torch.compile(reference.drs, dynamic=False) if compile_ref else None
    records = []
    gen = torch.Generator().manual_seed(0)
    for shape in SHAPES:
        x = torch.randn(shape, generator=gen).to(device, dtype).requires_grad_()
        gate = torch.rand(shape[:2], generator=gen).to(device, dtype).requires_grad_()
        grad_out = torch.randn(shape, generator=gen).to(device, dtype)
        rec = {"shape": "x".join(map(str, shape)), "dtype": str(dtype).replace("torch.", "")}
        contenders = {"fused": ops.drs, "eager": reference.drs}
        if compiled is not None:
            contenders["compile"] = compiled
        for name, fn in contenders.items():
            try:
                rec[f"{name}_fwd_bwd_ms"] = measure(fwd_bwd(fn, x, gate, grad_out), device,
                                                    warmup=2, reps=reps)["median_ms"]
                rec[f"{name}_fwd_ms"] = measure(fwd_only(fn, x, gate), device, warmup=2,
                                                reps=reps)["median_ms"]
            except Exception as exc:  # torch.compile may not work everywhere: record why
                rec[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:300]
        for name in contenders:
            if f"{name}_fwd_bwd_ms" in rec:
                rec[f"{name}_speedup"] = rec["eager_fwd_bwd_ms"] / rec[f"{name}_fwd_bwd_ms"]
        if device.type == "cuda":
            gbs = copy_bandwidth(x.detach(), reps)
            nbytes = x.numel() * x.element_size()
            rec["copy_GBps"] = gbs
            rec["fused_fwd_GBps"] = 2 * nbytes / (rec["fused_fwd_ms"] * 1e-3) / 1e9
            rec["fused_fwd_bwd_GBps"] = 5 * nbytes / (rec["fused_fwd_bwd_ms"] * 1e-3) / 1e9
            rec["fused_fwd_bwd_vs_copy"] = rec["fused_fwd_bwd_GBps"] / gbs
        records.append(rec)
        del x, gate, grad_out
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", nargs="+", choices=["float32", "float16", "bfloat16", "float64"],
                        help="default: float32 on the CPU, float32 float16 bfloat16 on CUDA")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default 10 CPU, 50 CUDA)")
    args = parser.parse_args()
    device = torch.device(args.device)
    reps = args.reps or (50 if device.type == "cuda" else 10)
    dtypes = args.dtype or (["float32", "float16", "bfloat16"] if device.type == "cuda" else ["float32"])
    print(f"backend: {wsss_fast.backend_info()}")
    records = [rec for dtype in dtypes
               for rec in run(device, getattr(torch, dtype), not args.no_compile, reps)]
    columns = ["shape", "dtype", "fused_fwd_bwd_ms", "eager_fwd_bwd_ms", "compile_fwd_bwd_ms", "fused_speedup",
               "compile_speedup", "fused_fwd_ms", "eager_fwd_ms"]
    if device.type == "cuda":
        columns += ["fused_fwd_bwd_GBps", "copy_GBps", "fused_fwd_bwd_vs_copy"]
    print_table(records, columns)
    for rec in records:
        for key, value in rec.items():
            if key.endswith("_error"):
                print(f"{rec['shape']} {key}: {value}")
    path = write_results("drs", device, records, dtypes=dtypes, reps=reps)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
