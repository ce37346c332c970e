"""SDF field: sphere initialisation, gradients vs finite differences, progressive levels, double backward."""

from __future__ import annotations

import torch

from ngraphics.fields.sdf_field import SDFField, SDFFieldConfig

SMALL = SDFFieldConfig(encoding={"n_levels": 4, "log2_hashmap_size": 12, "base_resolution": 4}, max_resolution=32,
                       init_radius=0.6, geometry_features=3, color_neurons=16)
AABB = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def _field(config=SMALL):
    torch.manual_seed(0)
    return SDFField(config, AABB)


def test_initial_sdf_is_a_sphere():
    """One hidden layer of 64 softplus units gives a rough sphere (its directions are 64 random features):
    ~0.07 mean deviation on the surface, and a surface between the inner and the outer shell everywhere."""
    field = _field()
    d = torch.nn.functional.normalize(torch.randn(2000, 3, generator=torch.Generator().manual_seed(1)), dim=-1)
    with torch.no_grad():
        on, outside, inside = field.sdf(0.6 * d), field.sdf(0.95 * d), field.sdf(0.25 * d)
    assert float(on.abs().mean()) < 0.1 and float(on.abs().max()) < 0.35
    assert bool((outside > 0).all()) and bool((inside < 0).all())
    _, gradient, _ = field.sdf_with_gradient(0.6 * d, create_graph=False)
    radial = (gradient * d).sum(-1)  # points outwards, about unit length
    assert bool((radial > 0.5).all()) and abs(float(gradient.norm(dim=-1).mean()) - 1.0) < 0.15


def test_gradient_matches_central_differences():
    field = _field()
    with torch.no_grad():  # make the grid features matter
        for layer in field.sdf_net:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.add_(0.1 * torch.randn_like(layer.weight))
                break
    field = field.double()
    x = torch.rand(64, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 1.6 - 0.8
    _, gradient, _ = field.sdf_with_gradient(x, create_graph=False)
    eps = 1e-6
    fd = torch.stack([(field.sdf(x + eps * e) - field.sdf(x - eps * e)) / (2 * eps)
                      for e in torch.eye(3, dtype=torch.float64)], -1)
    torch.testing.assert_close(gradient, fd.detach(), atol=1e-4, rtol=1e-4)


def test_eikonal_loss_reaches_the_grid_and_masked_levels_get_no_gradient():
    field = _field()
    field.set_active_levels(2)
    x = torch.rand(256, 3, generator=torch.Generator().manual_seed(3)) * 1.6 - 0.8
    with torch.no_grad():
        field.sdf_net[0].weight.normal_(0, 0.5)
    _, gradient, _ = field.sdf_with_gradient(x, create_graph=True)
    ((gradient.norm(dim=-1) - 1) ** 2).mean().backward()
    grad = field.encoding.params.grad
    assert grad is not None and float(grad.abs().sum()) > 0
    spec = field.encoding.spec
    start = spec.offsets[2] * spec.n_features  # levels 2, 3 are masked: their table rows stay untouched
    assert float(grad[:start].abs().sum()) > 0 and float(grad[start:].abs().sum()) == 0.0


def test_colour_is_in_range_and_depends_on_the_view():
    field = _field()
    x = torch.zeros(4, 3)
    n = torch.tensor([[0.0, 0.0, 1.0]]).expand(4, 3)
    d = torch.nn.functional.normalize(torch.randn(4, 3, generator=torch.Generator().manual_seed(4)), dim=-1)
    rgb = field.color(x, n, d, torch.zeros(4, 3))
    assert rgb.shape == (4, 3) and bool(((rgb > 0) & (rgb < 1)).all())
    assert float((rgb[0] - rgb[1]).abs().max().detach()) > 0
