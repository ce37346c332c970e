"""NeuS rendering primitives against float64 loops and analytic cases."""

from __future__ import annotations

import math

import torch

from ngraphics.rendering.alpha import accumulate_along_rays, render_weight_from_alpha
from ngraphics.rendering.compositing import offsets_from_counts
from ngraphics.rendering.sdf import (importance_weights, neus_alpha, neus_alpha_midpoint, ray_box_range,
                                     sample_pdf, stratified_bins)


def _packed(counts):
    counts = torch.tensor(counts)
    return torch.repeat_interleave(torch.arange(len(counts)), counts), offsets_from_counts(counts)


def test_weights_from_alpha_match_a_float64_loop():
    g = torch.Generator().manual_seed(0)
    ray_indices, offsets = _packed([3, 0, 5, 1])
    alphas = torch.rand(9, generator=g)
    alphas[4] = 1.0  # an opaque sample ends its ray
    weights, T = render_weight_from_alpha(alphas, ray_indices, offsets)
    for r in range(4):
        keep = 1.0
        for i in range(int(offsets[r]), int(offsets[r + 1])):
            a = float(alphas[i])
            assert math.isclose(float(T[i]), keep, abs_tol=1e-6)
            assert math.isclose(float(weights[i]), keep * a, abs_tol=1e-6)
            keep *= 1.0 - a
    assert float(weights[5:8].abs().max()) < 1e-6  # behind the opaque sample
    acc = accumulate_along_rays(weights, ray_indices, 4)
    assert acc[1] == 0.0 and torch.all(acc <= 1.0 + 1e-6)
    values = torch.rand(9, 3, generator=g)
    sums = accumulate_along_rays(weights, ray_indices, 4, values)
    expected = torch.zeros(4, 3, dtype=torch.float64).index_add(0, ray_indices, weights.double()[:, None] * values.double())
    torch.testing.assert_close(sums.double(), expected, atol=1e-6, rtol=0)


def test_weight_gradient_matches_a_float64_product():
    """Gradient of a weighted sum through the packed scan vs the same sum as an explicit float64 product."""
    ray_indices, offsets = _packed([4])
    alphas = torch.tensor([0.2, 0.5, 0.3, 0.7], requires_grad=True)
    values = torch.tensor([1.0, -2.0, 0.5, 3.0])
    (render_weight_from_alpha(alphas, ray_indices, offsets)[0] * values).sum().backward()
    a = alphas.detach().double().requires_grad_(True)
    keep = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - a, 0)[:-1]])
    (keep * a * values.double()).sum().backward()
    torch.testing.assert_close(alphas.grad.double(), a.grad, atol=1e-5, rtol=0)


def test_neus_alpha_is_the_logistic_cdf_ratio():
    prev, nxt, s = torch.tensor([0.1, 0.05, -0.2]), torch.tensor([0.02, 0.1, -0.3]), 20.0
    phi = lambda v: 1.0 / (1.0 + math.exp(-s * v))  # noqa: E731
    for i in range(3):
        expected = max((phi(float(prev[i])) - phi(float(nxt[i]))) / phi(float(prev[i])), 0.0)
        assert abs(float(neus_alpha(prev, nxt, s)[i]) - expected) < 1e-4


def test_a_sharp_plane_is_hit_once_at_its_depth():
    """A plane at t = 1 along a ray, sdf = 1 - t: the weights of many small sections concentrate there and
    sum to ~1 (NeuS's unbiasedness), and the expected depth is the plane's."""
    edges = torch.linspace(0.0, 2.0, 401)[None]
    mids = 0.5 * (edges[:, 1:] + edges[:, :-1])[0]
    deltas = (edges[:, 1:] - edges[:, :-1])[0]
    sdf = 1.0 - mids
    alpha = neus_alpha_midpoint(sdf, torch.full_like(sdf, -1.0), deltas, 200.0)
    ray_indices, offsets = _packed([400])
    weights, _ = render_weight_from_alpha(alpha, ray_indices, offsets)
    assert abs(float(weights.sum()) - 1.0) < 1e-3
    depth = float((weights * mids).sum() / weights.sum())
    assert abs(depth - 1.0) < 5e-3
    # the midpoint estimate equals the two-ended formula for a linear SDF
    two_ended = neus_alpha(1.0 - edges[0, :-1], 1.0 - edges[0, 1:], 200.0)
    torch.testing.assert_close(alpha, two_ended, atol=1e-5, rtol=0)


def test_ray_box_range_and_sampling():
    origins = torch.tensor([[-3.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    dirs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    aabb = torch.tensor([[-1.0] * 3, [1.0] * 3])
    t0, t1, hit = ray_box_range(origins, dirs, aabb, near=0.1)
    assert hit.tolist() == [True, True, False]
    torch.testing.assert_close(t0[:2], torch.tensor([2.0, 0.1]))
    torch.testing.assert_close(t1[:2], torch.tensor([4.0, 1.0]))
    edges = stratified_bins(t0, t1, 8, jitter=True, generator=torch.Generator().manual_seed(1))
    assert torch.all(edges[:, 1:] >= edges[:, :-1]) and torch.allclose(edges[:, 0], t0)
    # a pdf with all its mass in one bin puts every sample in that bin
    edges = torch.linspace(0.0, 1.0, 5)[None]
    t = sample_pdf(edges, torch.tensor([[0.0, 0.0, 1e4, 0.0]]), 16, jitter=False)
    assert torch.all((t >= 0.5) & (t <= 0.75)) and torch.all(t[:, 1:] >= t[:, :-1])


def test_importance_weights_peak_at_the_zero_crossing():
    t = torch.linspace(0.0, 2.0, 33)[None]
    w = importance_weights(t, 0.7 - t, 64.0)
    crossing = int(w.argmax())
    assert float(t[0, crossing]) <= 0.7 <= float(t[0, crossing + 1])
