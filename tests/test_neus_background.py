"""NeuS's NeRF++ background: inverted-sphere coordinates against analytic values, sampling outside the sphere,
compositing order, and `model.background: nerf++` in a training step."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from test_neus import TINY
from test_neus_occupancy import SphereSDF

from ngraphics.data import load_dataset
from ngraphics.errors import ConfigError
from ngraphics.fields.background_field import (
    BackgroundField,
    BackgroundFieldConfig,
    inverted_sphere,
    outside_bins,
)
from ngraphics.methods.neus import Neus, NeusConfig
from ngraphics.rendering.alpha import accumulate_along_rays, composite_over, render_weight_from_alpha
from ngraphics.rendering.compositing import offsets_from_counts
from ngraphics.rendering.sdf import ray_sphere_range

SMALL_BACKGROUND = BackgroundFieldConfig(encoding={"n_levels": 4, "log2_hashmap_size": 10}, neurons=16,
                                         features=3, n_samples=8)


def test_inverted_sphere_coordinates():
    x = torch.tensor([[0.0, 0.0, 2.0], [3.0, 4.0, 0.0], [1e6, 0.0, 0.0], [0.1, 0.0, 0.0]])
    q = inverted_sphere(x, torch.zeros(3), 1.0)
    expected = torch.tensor([[0.0, 0.0, 1.0, 0.5], [0.6, 0.8, 0.0, 0.2], [1.0, 0.0, 0.0, 1e-6], [1.0, 0.0, 0.0, 1.0]])
    torch.testing.assert_close(q, expected)  # the last point lies inside: 1 / r clamps to the sphere
    centre = torch.tensor([1.0, 1.0, 1.0])  # another centre and radius: radii count in units of the radius
    q = inverted_sphere(torch.tensor([[1.0, 1.0, 5.0], [1.0, -5.0, 1.0]]), centre, 2.0)
    torch.testing.assert_close(q, torch.tensor([[0.0, 0.0, 1.0, 0.5], [0.0, -1.0, 0.0, 1.0 / 3.0]]))


def test_ray_sphere_range_and_outside_bins():
    origins = torch.tensor([[-3.0, 0.0, 0.0], [-3.0, 0.6, 0.0], [-3.0, 2.0, 0.0]])
    d = torch.tensor([[1.0, 0.0, 0.0]]).expand(3, 3)
    t0, t1, hit = ray_sphere_range(origins, d, torch.zeros(3), 1.0, near=0.1)
    assert hit.tolist() == [True, True, False]
    torch.testing.assert_close(t0[:2], torch.tensor([2.0, 2.2]))
    torch.testing.assert_close(t1, torch.tensor([4.0, 3.8, 3.0]))  # a miss: its closest approach
    edges = outside_bins(t1, 4, jitter=False)
    torch.testing.assert_close(edges[:, 0], t1)
    torch.testing.assert_close(edges[:, -1], t1 * 1000, rtol=1e-5, atol=0)
    inverse = 1.0 / edges  # evenly spaced in 1 / t
    torch.testing.assert_close(inverse[:, 1:] - inverse[:, :-1], (inverse[:, 1] - inverse[:, 0])[:, None].expand(3, 4))
    jittered = outside_bins(t1, 16, jitter=True)
    assert bool((jittered[:, 1:] > jittered[:, :-1]).all())


def test_compositing_order_front_then_back_then_colour():
    """composite_over(front, composite_over(back, colour)) equals compositing the front samples, then the back
    samples, along one ray (a float64 product), then the colour behind."""
    g = torch.Generator().manual_seed(0)
    n_front, n_back = 5, 4
    a_front, a_back = torch.rand(3, n_front, generator=g) * 0.5, torch.rand(3, n_back, generator=g)
    a_front[1] = 0.0  # a ray the foreground misses: the background shows
    a_front[2, 2] = 1.0  # an opaque foreground: the background is hidden
    c_front, c_back = torch.rand(3, n_front, 3, generator=g), torch.rand(3, n_back, 3, generator=g)
    colour = torch.tensor([0.2, 0.4, 0.9])

    def layer(alpha, rgb):
        n = alpha.shape[1]
        ri = torch.arange(3).repeat_interleave(n)
        w, _ = render_weight_from_alpha(alpha.reshape(-1), ri, offsets_from_counts(torch.full((3,), n)))
        return accumulate_along_rays(w, ri, 3, rgb.reshape(-1, 3)), accumulate_along_rays(w, ri, 3)

    front, front_alpha = layer(a_front, c_front)
    back, back_alpha = layer(a_back, c_back)
    got = composite_over(front, front_alpha, composite_over(back, back_alpha, colour))
    alphas = torch.cat([a_front, a_back], 1).double()
    colours = torch.cat([c_front, c_back], 1).double()
    T = torch.cat([torch.ones(3, 1, dtype=torch.float64), torch.cumprod(1 - alphas, 1)], 1)
    expected = ((T[:, :-1] * alphas)[..., None] * colours).sum(1) + T[:, -1:] * colour.double()
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(got[1], composite_over(back, back_alpha, colour)[1])
    torch.testing.assert_close(got[2], front[2], atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def scene():
    return load_dataset(None, "train", resolution=16, n_views=4)


def _nerfpp(scene):
    torch.manual_seed(0)
    return Neus(dataclasses.replace(TINY, background="nerf++", background_field=SMALL_BACKGROUND), scene, "cpu")


def test_the_background_field_sits_behind_the_surface(scene):
    """With a sharp sphere in front, rays that hit it keep their colour whatever the background field holds; rays
    that miss it show the background field (over the colour behind it)."""
    method = _nerfpp(scene)
    method.anneal = 1.0
    sphere = SphereSDF(radius=0.5)
    variance = torch.tensor(math.log(2000.0) / 10)
    origins, directions = scene.cameras.image_rays(0)
    samples, live = method.sample_rays(sphere, origins, directions, jitter=False)
    x = origins[samples.ray_indices] + directions[samples.ray_indices] * samples.t_starts[:, None]
    assert float((x - method.field.centre).norm(dim=-1)[live].max()) <= method.radius + 1e-4  # the inscribed sphere
    renders = []
    for scale in (0.0, 5.0):
        with torch.no_grad():
            method.background_field.density_net[-1].bias.fill_(scale)
            method.background_field.color_net[-1].bias.fill_(scale - 2.0)
        with torch.no_grad():
            renders.append(method.shade(sphere, variance, origins, directions, samples, live, torch.zeros(3),
                                        False, background_field=method.background_field))
    a, b = renders
    hit, miss = a["alpha"] > 0.999, a["alpha"] < 1e-3
    assert hit.any() and miss.any()
    torch.testing.assert_close(a["rgb"][hit], b["rgb"][hit], atol=2e-3, rtol=0)
    assert float((a["rgb"][miss] - b["rgb"][miss]).abs().min()) > 0.1
    torch.testing.assert_close(a["alpha"], b["alpha"])  # the opacity is the foreground's alone


def test_nerfpp_config_trains_and_round_trips(scene):
    method = _nerfpp(scene)
    sampler = method.sampler(scene, torch.device("cpu"))
    losses = []
    for step in range(6):
        batch = sampler.sample()
        batch.update(step=step, progress=step / 6)
        losses.append(float(method.train_step(batch)["loss"]))
    assert all(math.isfinite(v) for v in losses)
    assert method.background_field.encoding.params.grad is not None
    out = method.render(scene.cameras[:1], torch.zeros(3))
    other = _nerfpp(scene)
    other.load_state_dict(method.state_dict())
    torch.testing.assert_close(other.render(scene.cameras[:1], torch.zeros(3))["rgb"], out["rgb"])
    plain = Neus(TINY, scene, "cpu")
    with pytest.raises(ConfigError, match="checkpoint background_field: missing"):
        other.load_state_dict(plain.state_dict())
    with pytest.raises(ConfigError, match="did you mean nerf\\+\\+"):
        NeusConfig(background="nerf+").validate("model")
    assert isinstance(method.background_field, BackgroundField)
