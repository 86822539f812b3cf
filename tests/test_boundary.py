"""IRN's boundary affinities and random walk (wsss_fast.boundary) against IRN's
own formulation written out in float64 (wsss_fast.reference.irn: its path
indices, edge_to_affinity, dense transition matrix and T^(2^exp_times) by
squarings), gradients, and bad inputs."""
import math

import pytest
import torch

from wsss_fast import ops
from wsss_fast.boundary import boundary_affinity, boundary_random_walk, path_points, paths
from wsss_fast.pairs import offsets, pair_count
from wsss_fast.reference import irn as ref


def test_path_points_follow_irns_rule():
    assert path_points(0, 1) == ((0, 1), (0, 0))
    assert path_points(0, 3) == ((0, 3), (0, 2), (0, 1), (0, 0))
    assert set(path_points(1, 1)) == {(0, 0), (0, 1), (1, 0), (1, 1)} and path_points(1, 1)[0] == (1, 1)
    # (2, 2): the box 0..2 x 0..2 without the two corners off the diagonal (distance sqrt(2) >= 1)
    assert set(path_points(2, 2)) == {(y, x) for y in range(3) for x in range(3)} - {(0, 2), (2, 0)}
    assert set(path_points(2, -1)) == {(y, x) for y in range(3) for x in (-1, 0)}  # all within 0.9 cells
    assert path_points(2, -1)[0] == (2, -1) and path_points(2, -1)[-1] == (0, 0)
    with pytest.raises(ValueError, match="must not be"):
        path_points(0, 0)


@pytest.mark.parametrize("radius", [2, 5, 10])
def test_paths_are_irns(radius):
    index = ref.PathIndex(radius, (2 * radius + 3, 2 * radius + 3))
    assert sorted(index.directions) == sorted(offsets(radius))  # IRN's search directions are PSA's offsets
    irn_paths = {tuple(c[0]): sorted(ref.path_coords(tuple(c[0]))) for c in
                 [ref.path_coords(d) for d in ref.search_directions(radius)]}
    for (dy, dx), points in zip(offsets(radius), paths(radius)):
        assert sorted(points) == irn_paths[(dy, dx)]
        assert points[0] == (dy, dx) and (0, 0) in points


def to_irn_layout(aff: torch.Tensor, index: ref.PathIndex, size: tuple[int, int]) -> torch.Tensor:
    """(P, H, W) affinities in our layout -> (n_dirs, n_src) in IRN's order."""
    h, w = size
    f = index.floor
    rows, cols = h - f, w - 2 * f
    order = [offsets(index.radius).index(d) for d in index.directions]
    return aff[order][:, :rows, f:f + cols].reshape(len(order), -1)


@pytest.mark.parametrize("radius, size", [(5, (9, 11)), (5, (13, 8)), (10, (22, 25)), (3, (5, 7))])
def test_boundary_affinity_equals_edge_to_affinity(gen, radius, size):
    edge = torch.rand(2, 1, *size, generator=gen, dtype=torch.float64)
    aff = boundary_affinity(edge, radius)
    assert aff.shape == (2, pair_count(radius), *size) and aff.is_contiguous()
    index = ref.PathIndex(radius, size)
    for b in range(2):
        torch.testing.assert_close(to_irn_layout(aff[b], index, size), ref.edge_to_affinity(edge[b, 0], index),
                                   rtol=0, atol=0)


def test_boundary_affinity_outside_is_zero_and_ties():
    edge = torch.zeros(1, 1, 4, 6, dtype=torch.float64)
    aff = boundary_affinity(edge, 5)
    for k, (dy, dx) in enumerate(offsets(5)):
        inside = torch.zeros(4, 6, dtype=torch.bool)
        inside[max(0, -dy):4 - max(0, dy), max(0, -dx):6 - max(0, dx)] = True
        assert (aff[0, k][inside] == 1).all() and (aff[0, k][~inside] == 0).all()


@pytest.mark.parametrize("size", [(6, 7), (9, 11), (12, 5), (1, 9), (3, 3)])
@pytest.mark.parametrize("exp_times", [0, 3, 8])
def test_walk_equals_irns_dense_walk(gen, size, exp_times):
    """The sparse walk is IRN's propagate_to_edge: same pairs (its padding and
    crop), aff^beta both ways, 1 on the diagonal, columns normalised, 2^t steps."""
    edge = torch.rand(*size, generator=gen, dtype=torch.float64)
    cams = torch.rand(3, *size, generator=gen, dtype=torch.float64)
    want = ref.propagate_to_edge(cams, edge, radius=5, beta=10.0, exp_times=exp_times)
    got = boundary_random_walk(cams[None], edge[None, None], 5, 10.0, 2 ** exp_times)[0]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_walk_matches_dense_in_float32_and_other_settings(gen):
    edge = torch.rand(10, 13, generator=gen)
    cams = torch.rand(2, 10, 13, generator=gen)
    for radius, beta in [(5, 10.0), (3, 2.5), (7, 1.0)]:
        want = ref.propagate_to_edge(cams.double(), edge.double(), radius, beta, 5)
        got = boundary_random_walk(cams[None], edge[None, None], radius, beta, 32)[0]
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)  # 40 seeds: at most 2.3e-5


def test_walk_batches_and_takes_strided_inputs(gen):
    edge = torch.rand(3, 1, 8, 14, generator=gen, dtype=torch.float64)
    cams = torch.rand(3, 2, 14, 8, generator=gen, dtype=torch.float64).transpose(-1, -2)  # non-contiguous
    both = boundary_random_walk(cams, edge, n_steps=16)
    for b in range(3):
        one = boundary_random_walk(cams[b:b + 1].contiguous(), edge[b:b + 1].contiguous(), n_steps=16)
        torch.testing.assert_close(both[b:b + 1], one, rtol=0, atol=0)


def test_boundary_affinity_gradient(gen):
    small = torch.rand(1, 1, 4, 5, generator=gen, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda e: boundary_affinity(e, 3), (small,))
    edge = torch.rand(2, 1, 6, 7, generator=gen, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda e: boundary_affinity(e, 5), (edge,), fast_mode=True)


def test_boundary_affinity_gradient_goes_to_the_path_maximum():
    edge = torch.zeros(1, 1, 1, 4, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        edge[0, 0, 0, 2] = 0.5
    aff = boundary_affinity(edge, 2)  # one offset, (0, 1)
    aff[0, 0, 0, 1].backward()        # the pair (0, 1) -> (0, 2): max at (0, 2)
    assert edge.grad.tolist() == [[[[0.0, 0.0, -1.0, 0.0]]]]


def test_boundary_affinity_gradient_equals_irns(gen):
    """A loss's gradient equals autograd through IRN's formulation (the max of
    the gathered path values), on a map without ties; IRN's path index has
    only the cropped sources, so only their affinities are weighted."""
    size = (11, 12)
    edge = torch.rand(1, 1, *size, generator=gen, dtype=torch.float64, requires_grad=True)
    weights = torch.zeros(1, pair_count(5), *size, dtype=torch.float64)
    weights[..., :size[0] - 4, 4:size[1] - 4] = torch.rand(1, pair_count(5), size[0] - 4, size[1] - 8,
                                                           generator=gen, dtype=torch.float64)
    index = ref.PathIndex(5, size)
    (boundary_affinity(edge, 5) * weights).sum().backward()
    ours, edge.grad = edge.grad.clone(), None
    (ref.edge_to_affinity(edge[0, 0], index) * to_irn_layout(weights[0], index, size)).sum().backward()
    torch.testing.assert_close(ours, edge.grad)
    assert (ours != 0).sum() > 20


@pytest.mark.parametrize("bad, message", [
    (lambda: boundary_affinity(torch.rand(2, 6, 7), 5), r"\(B, 1, H, W\)"),
    (lambda: boundary_affinity(torch.rand(1, 2, 6, 7), 5), r"\(B, 1, H, W\)"),
    (lambda: boundary_affinity(torch.rand(1, 1, 6, 7, dtype=torch.float16), 5), "float32 or float64"),
    (lambda: boundary_affinity(torch.rand(1, 1, 6, 7) + 1, 5), r"\[0, 1\]"),
    (lambda: boundary_affinity(torch.full((1, 1, 6, 7), math.nan), 5), "NaN"),
    (lambda: boundary_affinity(torch.rand(1, 1, 0, 7), 5), "H, W >= 1"),
    (lambda: boundary_affinity(torch.rand(1, 1, 6, 7), 0), "radius"),
    (lambda: boundary_affinity(torch.rand(1, 1, 6, 7), 17), "radius"),
    (lambda: boundary_affinity([[0.5]], 5), "torch.Tensor"),
    (lambda: boundary_random_walk(torch.rand(1, 2, 6, 7), torch.rand(1, 1, 6, 8)), "boundary"),
])
def test_bad_inputs(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        bad()


def test_empty_batch_and_radius_one():
    assert boundary_affinity(torch.rand(0, 1, 5, 5), 5).shape == (0, 34, 5, 5)
    assert boundary_affinity(torch.rand(2, 1, 5, 5), 1).shape == (2, 0, 5, 5)


@pytest.mark.parametrize("border", ["all", "psa"])
def test_walk_is_the_random_walk_op_on_the_boundary_affinities(gen, border):
    edge = torch.rand(1, 1, 9, 9, generator=gen)
    cams = torch.rand(1, 2, 9, 9, generator=gen)
    want = ops.random_walk(cams * (1 - edge), boundary_affinity(edge, 5), 5, 10.0, 64, border)
    torch.testing.assert_close(boundary_random_walk(cams, edge, 5, 10.0, 64, border), want, rtol=0, atol=0)


@pytest.mark.cuda
def test_affinity_and_walk_on_cuda_equal_cpu(gen):
    edge = torch.rand(2, 1, 30, 41, generator=gen)
    cams = torch.rand(2, 3, 30, 41, generator=gen)
    torch.testing.assert_close(boundary_affinity(edge.cuda(), 10).cpu(), boundary_affinity(edge, 10))
    torch.testing.assert_close(boundary_random_walk(cams.cuda(), edge.cuda()).cpu(), boundary_random_walk(cams, edge),
                               rtol=1e-5, atol=1e-6)
    grad = edge.cuda().requires_grad_()
    boundary_affinity(grad, 5).sum().backward()
    cpu = edge.clone().requires_grad_()
    boundary_affinity(cpu, 5).sum().backward()
    torch.testing.assert_close(grad.grad.cpu(), cpu.grad)
