"""wsss_fast.ops.drs and wsss_fast.nn.DRS against the reference composition.

Tolerances: forward outputs are compared for equality (the kernels compute the
same float operations as the reference); gradients within 1e-5 relative to the
largest reference gradient in float32 and 1e-12 in float64 (the kernels sum in
another order than torch's reductions).
"""
from __future__ import annotations

import pytest
import torch

import wsss_fast
from wsss_fast import _backend, ops, reference

pytestmark = pytest.mark.skipif(not wsss_fast.backend_info()["compiled"],
                                reason="compiled extension not built")

RTOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 1e-2, torch.bfloat16: 2e-2}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / (scale if scale > 0 else 1.0)


def run_both(x, gate, grad_out):
    """Output and gradients (x, and gate if a tensor) of the op and of the reference."""
    results = []
    for fn in (ops.drs, reference.drs):
        xi = x.detach().clone().requires_grad_()
        gi = gate.detach().clone().requires_grad_() if isinstance(gate, torch.Tensor) else gate
        out = fn(xi, gi)
        inputs = (xi, gi) if isinstance(gi, torch.Tensor) else (xi,)
        grads = torch.autograd.grad(out, inputs, grad_out)
        results.append((out.detach(), *grads))
    return results


def assert_matches(x, gate, gen, dtype_tol=None):
    grad_out = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.device, x.dtype)
    (out, *grads), (ref_out, *ref_grads) = run_both(x, gate, grad_out)
    assert out.shape == ref_out.shape and out.is_contiguous()
    assert torch.equal(out, ref_out), f"forward differs: max {(out - ref_out).abs().max()}"
    tol = dtype_tol or RTOL[x.dtype]
    for name, g, r in zip(("x", "gate"), grads, ref_grads):
        assert g.shape == r.shape
        assert rel_err(g.double(), r.double()) <= tol, f"grad_{name} rel err {rel_err(g, r):.3g}"


def randn(gen, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def rand_gate(gen, n, c, dtype=torch.float32):
    return torch.rand(n, c, generator=gen, dtype=torch.float64).to(dtype)


# ------------------------------------------------------------ forward/backward


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 4, 7, 5), (3, 2, 1, 1), (2, 3, 41, 41),
                                   (1, 2, 81, 83), (1, 1, 321, 321)])
def test_matches_reference_tensor_gate(gen, dtype, shape):
    x = randn(gen, *shape, dtype=dtype)
    assert_matches(x, rand_gate(gen, *shape[:2], dtype=dtype), gen)


@pytest.mark.parametrize("delta", [0.0, 0.55, 1.0, 1.5])
def test_matches_reference_constant_gate(gen, delta):
    assert_matches(randn(gen, 2, 5, 13, 17), delta, gen)


@pytest.mark.parametrize("gate_value", [0.0, 1.0])
def test_gate_zero_and_one(gen, gate_value):
    x = randn(gen, 2, 4, 9, 11)
    assert_matches(x, torch.full((2, 4), gate_value), gen)
    assert_matches(x, gate_value, gen)


def test_channels_entirely_negative(gen):
    x = randn(gen, 2, 6, 10, 10)
    x[:, ::2] = -x[:, ::2].abs() - 0.1
    x[0, 1] = 0.0  # all zero: relu max 0, every element ties with t = 0
    assert_matches(x, rand_gate(gen, 2, 6), gen)
    assert torch.equal(ops.drs(x, rand_gate(gen, 2, 6))[:, ::2], torch.zeros(2, 3, 10, 10))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_ties(gen, dtype):
    # Values on a 0.25 grid: many elements equal the max (max-pool gradient to
    # the first one only) and equal t = M * g exactly (min gradient split 1/2-1/2).
    x = (torch.randint(-4, 9, (3, 4, 6, 7), generator=gen) * 0.25).to(dtype)
    gate = torch.tensor([0.0, 0.5, 1.0, 0.75], dtype=dtype).repeat(3, 1)
    ties = (x.clamp_min(0) == x.clamp_min(0).amax((2, 3), keepdim=True) * gate[..., None, None])
    assert ties.sum() > 20
    assert_matches(x, gate, gen)
    assert_matches(x, 0.5, gen)


def test_non_contiguous_and_channels_last(gen):
    base = randn(gen, 4, 6, 12, 10)
    gate = rand_gate(gen, 4, 4).t()  # non-contiguous gate
    assert_matches(base.transpose(0, 1)[:4], gate, gen)
    assert_matches(base[:, :, ::2, 1::3], rand_gate(gen, 4, 6), gen)
    assert_matches(base.contiguous(memory_format=torch.channels_last), rand_gate(gen, 4, 6), gen)


def test_batch_one(gen):
    assert_matches(randn(gen, 1, 3, 5, 9), rand_gate(gen, 1, 3), gen)


def test_nan_propagates_like_reference(gen):
    x = randn(gen, 1, 3, 4, 4)
    x[0, 1, 2, 3] = float("nan")
    out, ref = ops.drs(x, 0.5), reference.drs(x, 0.5)
    assert torch.isnan(out[0, 1]).all() and torch.equal(out.isnan(), ref.isnan())
    assert torch.equal(out[0, [0, 2]], ref[0, [0, 2]])


def test_a_nan_gate_makes_its_plane_nan_like_the_reference(gen):
    """A NaN in a gate tensor (a diverged DRS controller) is not refused (that
    would cost a device sync in every DRS layer on a GPU) and not hidden: its
    plane comes out NaN, as the reference composition gives, and training
    stops at the non-finite loss. A NaN float delta, a configuration value,
    is refused."""
    x, gate = randn(gen, 2, 3, 4, 5), rand_gate(gen, 2, 3)
    gate[1, 2] = float("nan")
    out, ref = ops.drs(x, gate), reference.drs(x, gate)
    assert torch.isnan(out[1, 2]).all() and torch.equal(out.isnan(), ref.isnan())
    assert torch.equal(out[~out.isnan()], ref[~ref.isnan()])


def test_direct_op_call_matches():
    x, gate = torch.randn(2, 3, 5, 5), torch.rand(2, 3)
    assert torch.equal(torch.ops.wsss_fast.drs(x, gate), reference.drs(x, gate))
    assert torch.equal(torch.ops.wsss_fast.drs_delta(x, 0.3), reference.drs(x, 0.3))


# ------------------------------------------------------------ gradcheck / opcheck


def separated_input(gen, n, c, h, w):
    """float64 x with distinct values 0.1 apart (none at 0) and a gate whose
    threshold lies 0.025 from every value: no tie within gradcheck's eps."""
    s = h * w
    k = torch.stack([torch.randperm(s, generator=gen) for _ in range(n * c)]).double()
    x = ((k - (s * 3) // 10 + 0.5) * 0.1).reshape(n, c, h, w)
    m = x.amax((2, 3))
    j = torch.randint(0, max(1, s // 2), (n, c), generator=gen).double()
    gate = ((m / 0.1 - 0.5 - j).clamp_min(0) * 0.1 + 0.025) / m
    return x, gate


def test_gradcheck_tensor_gate(gen):
    x, gate = separated_input(gen, 2, 3, 5, 4)
    x.requires_grad_(), gate.requires_grad_()
    assert torch.autograd.gradcheck(torch.ops.wsss_fast.drs, (x, gate))
    assert torch.autograd.gradcheck(ops.drs, (x, gate))


def test_gradcheck_constant_gate(gen):
    x, _ = separated_input(gen, 2, 2, 6, 3)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ops.drs(t, 0.55), (x,))


def test_opcheck(gen):
    x = randn(gen, 2, 3, 6, 5).requires_grad_()
    gate = rand_gate(gen, 2, 3).requires_grad_()
    torch.library.opcheck(torch.ops.wsss_fast.drs.default, (x, gate))
    torch.library.opcheck(torch.ops.wsss_fast.drs_delta.default, (x, 0.55))
    grad = randn(gen, 2, 3, 6, 5)
    torch.library.opcheck(torch.ops.wsss_fast.drs_backward.default, (grad, x.detach(), gate.detach()))
    torch.library.opcheck(torch.ops.wsss_fast.drs_delta_backward.default, (grad, x.detach(), 0.55))


# ------------------------------------------------------------ bad and empty inputs


@pytest.mark.parametrize("x, gate, error, match", [
    (torch.randn(3, 4, 5), 0.5, ValueError, "x must be a 4-D"),
    (torch.randn(2, 3, 4, 4), torch.rand(3, 2), ValueError, r"gate must have shape \(N, C\) = \(2, 3\)"),
    (torch.randn(2, 3, 4, 4), torch.rand(2, 3, 1), ValueError, "gate must have shape"),
    (torch.ones(2, 3, 4, 4, dtype=torch.int64), 0.5, TypeError, "x on cpu must be one of"),
    (torch.randn(2, 3, 4, 4).half(), 0.5, TypeError, "x on cpu must be one of float32, float64"),
    (torch.randn(2, 3, 4, 4), torch.rand(2, 3, dtype=torch.float64), TypeError, "gate must have the dtype of x"),
    (torch.randn(2, 3, 4, 4), torch.rand(2, 3, device="meta"), ValueError, "gate must be on the device of x"),
    (torch.randn(2, 3, 4, 4), "0.5", TypeError, "gate must be a"),
    (torch.randn(2, 3, 4, 4), True, TypeError, "gate must be a"),
    (torch.randn(2, 3, 4, 4), float("nan"), ValueError, "gate must be finite"),
    ([[1.0]], 0.5, TypeError, "x must be a torch.Tensor"),
    (torch.randn(2, 3, 0, 4), 0.5, ValueError, "H > 0 and W > 0"),
])
def test_bad_inputs_name_the_argument(x, gate, error, match):
    with pytest.raises(error, match=match):
        ops.drs(x, gate)


@pytest.mark.parametrize("call, match", [
    (lambda: torch.ops.wsss_fast.drs(torch.randn(3, 4, 5), torch.rand(3, 4)), "drs: x must be a 4-D"),
    (lambda: torch.ops.wsss_fast.drs(torch.randn(2, 3, 4, 4), torch.rand(3)), "drs: gate must have shape"),
    (lambda: torch.ops.wsss_fast.drs_delta(torch.ones(1, 1, 2, 2, dtype=torch.int32), 0.5),
     "drs_delta: x must be a floating-point"),
    (lambda: torch.ops.wsss_fast.drs_delta(torch.ones(1, 1, 2, 2).bfloat16(), 0.5),
     "drs_delta: x on CPU must be float32 or float64"),
    (lambda: torch.ops.wsss_fast.drs_backward(torch.randn(1, 1, 2, 3), torch.randn(1, 1, 2, 2),
                                              torch.rand(1, 1)), "drs_backward: grad_out must have the shape"),
    (lambda: torch.ops.wsss_fast.drs_delta(torch.randn(1, 2, 0, 3), 0.5), "H > 0 and W > 0"),
])
def test_direct_op_errors_name_the_argument(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 0, 4, 4), (0, 0, 0, 0)])
def test_empty_batch_or_channels(shape):
    x = torch.randn(shape, requires_grad=True)
    gate = torch.rand(shape[:2], requires_grad=True)
    out = ops.drs(x, gate)
    assert out.shape == shape
    out.sum().backward()
    assert x.grad.shape == shape and gate.grad.shape == shape[:2]
    assert torch.ops.wsss_fast.drs(x.detach(), gate.detach()).shape == shape
    grads = torch.ops.wsss_fast.drs_backward(torch.zeros(shape), x.detach(), gate.detach())
    assert grads[0].shape == shape and grads[1].shape == shape[:2]


# ------------------------------------------------------------ fallback and backend


def test_missing_kernel_falls_back_with_one_warning(gen, monkeypatch):
    monkeypatch.setattr(_backend, "has_kernel", lambda op, device_type: False)
    monkeypatch.setattr(_backend, "_warned", set())
    x, gate = randn(gen, 2, 3, 5, 5), rand_gate(gen, 2, 3)
    with pytest.warns(wsss_fast.BackendWarning, match="wsss_fast.ops.drs: .*pure-PyTorch reference"):
        out = ops.drs(x, gate)
    assert torch.equal(out, reference.drs(x, gate))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.drs(x, gate)  # said once only


def test_backend_info_reports_the_build():
    info = wsss_fast.backend_info()
    assert info["compiled"] and info["cpu"] and info["import_error"] is None
    assert {"drs", "drs_delta", "drs_backward", "drs_delta_backward"} <= set(info["ops"])
    assert info["torch_version"] == torch.__version__
    assert info["built_with_torch"] == torch.__version__
    assert info["cuda"] == bool(info["cuda_arch_list"])
    assert torch._C._dispatch_has_kernel_for_dispatch_key("wsss_fast::drs", "CPU")


# ------------------------------------------------------------ nn.DRS


def reference_module(x, weight, delta):
    r = torch.relu(x)
    if delta is not None:
        return reference.drs(x, delta)
    gate = torch.sigmoid(r.mean((2, 3)) @ weight.t())
    return reference.drs(x, gate)


@pytest.mark.parametrize("delta", [None, 0.55])
def test_drs_module_matches_reference(gen, delta):
    module = wsss_fast.nn.DRS(6, delta=delta).double()
    x = randn(gen, 2, 6, 9, 7, dtype=torch.float64).requires_grad_()
    out = module(x)
    weight = module.controller.weight if delta is None else None
    x_ref = x.detach().clone().requires_grad_()
    ref = reference_module(x_ref, weight, delta)
    assert torch.allclose(out, ref, rtol=0, atol=1e-14)
    grad = randn(gen, *out.shape, dtype=torch.float64)
    params = [x] + ([module.controller.weight] if delta is None else [])
    ref_params = [x_ref] + ([weight] if delta is None else [])
    for g, r in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(ref, ref_params, grad)):
        assert rel_err(g, r) <= 1e-12


def test_drs_module_is_a_relu_replacement_shape_and_repr():
    module = wsss_fast.nn.DRS(4)
    assert module(torch.randn(1, 4, 3, 3)).shape == (1, 4, 3, 3)
    assert "learnable" in repr(module) and "delta=0.55" in repr(wsss_fast.nn.DRS(4, 0.55))
    assert module.controller.bias is None


@pytest.mark.parametrize("kwargs, match", [({"channels": 0}, "channels"), ({"channels": 4, "delta": 1.5}, "delta"),
                                           ({"channels": 4, "delta": float("nan")}, "delta")])
def test_drs_module_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        wsss_fast.nn.DRS(**kwargs)


def test_drs_module_wrong_channels():
    with pytest.raises(ValueError, match=r"expected an \(N, 4, H, W\) input"):
        wsss_fast.nn.DRS(4)(torch.randn(1, 3, 5, 5))


# ------------------------------------------------------------ CUDA


CUDA_SHAPES = [(2, 3, 7, 5), (2, 4, 41, 41), (1, 3, 161, 161), (1, 2, 321, 321), (1, 1, 600, 700)]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", CUDA_SHAPES)
def test_cuda_matches_reference(gen, dtype, shape):
    x = randn(gen, *shape).to("cuda", dtype)
    assert_matches(x, rand_gate(gen, *shape[:2]).to("cuda", dtype), gen)
    assert_matches(x, 0.55, gen)


# Issue 15: planes whose dynamic shared memory is exactly 48 KiB, so that only
# the plane kernels' static scratch puts them over the default limit (they
# failed with "invalid argument" before the kernels opted in for them).
WINDOW_CASES = [((2, 3, 96, 128), torch.float32), ((2, 3, 48, 256), torch.float32),
                ((2, 3, 64, 192), torch.float32), ((2, 3, 128, 192), torch.float16),
                ((2, 3, 128, 192), torch.bfloat16)]


@pytest.mark.cuda
@pytest.mark.parametrize("shape, dtype", WINDOW_CASES,
                         ids=[f"{s[2]}x{s[3]}-{str(d)[6:]}" for s, d in WINDOW_CASES])
def test_cuda_48k_window_shapes(gen, shape, dtype):
    x = randn(gen, *shape).to("cuda", dtype)
    assert_matches(x, rand_gate(gen, *shape[:2]).to("cuda", dtype), gen)
    assert_matches(x, 0.55, gen)


@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(64, 512, 6, 5), (32768, 1, 2, 3)])
def test_cuda_n_times_c_32768(gen, shape):
    """N * C = 32768 planes, refused before issue 15 (N * C had to be <= 32766)."""
    x = randn(gen, *shape).cuda()
    assert_matches(x, rand_gate(gen, *shape[:2]).cuda(), gen)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_1200x1100_chunk_path(gen, dtype):
    """A plane far above the shared memory of a block: 645 chunks per plane, the
    last one partial."""
    x = randn(gen, 2, 2, 1200, 1100).to("cuda", dtype)
    assert_matches(x, rand_gate(gen, 2, 2).to("cuda", dtype), gen)


@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(3, 4, 6, 7), (1, 2, 330, 330)])
def test_cuda_exact_ties_and_negative_planes(gen, shape):
    x = (torch.randint(-4, 9, shape, generator=gen) * 0.25).cuda()
    x[:, 0] = -1.0
    gate = torch.tensor([0.0, 0.5, 1.0, 0.75])[: shape[1]].repeat(shape[0], 1)
    assert_matches(x, gate.cuda(), gen)


@pytest.mark.cuda
def test_cuda_non_contiguous_channels_last_and_opcheck(gen):
    base = randn(gen, 4, 6, 40, 30).cuda()
    assert_matches(base.contiguous(memory_format=torch.channels_last), rand_gate(gen, 4, 6).cuda(), gen)
    assert_matches(base[:, :, ::2, 1::3], rand_gate(gen, 4, 6).cuda(), gen)
    x = base.requires_grad_()
    gate = rand_gate(gen, 4, 6).cuda().requires_grad_()
    torch.library.opcheck(torch.ops.wsss_fast.drs.default, (x, gate))
    torch.library.opcheck(torch.ops.wsss_fast.drs_delta.default, (x, 0.55))


@pytest.mark.cuda
def test_cuda_bad_dtype_and_device():
    with pytest.raises(TypeError, match="x on cuda must be one of float32, float16, bfloat16"):
        ops.drs(torch.randn(1, 1, 2, 2, dtype=torch.float64, device="cuda"), 0.5)
    with pytest.raises(ValueError, match="gate must be on the device of x"):
        ops.drs(torch.randn(1, 1, 2, 2, device="cuda"), torch.rand(1, 1))
