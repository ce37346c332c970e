"""Adaptive density control: clone/split/prune counts on hand-built states, Adam rows following their
Gaussians, 3DGS's split rule, MCMC relocation (eq. 9 checked by the sum it preserves)."""

import math

import pytest
import torch

from ngraphics.errors import DataError
from ngraphics.splatting.strategy import (DefaultStrategy, MCMCStrategy, duplicate, relocation, remove,
                                          reset_opacity, split)


def make(N=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = {
        "means": torch.randn(N, 3, generator=g),
        "scales": torch.log(torch.full((N, 3), 0.005)),
        "quats": torch.randn(N, 4, generator=g),
        "opacities": torch.logit(torch.full((N,), 0.5)),
        "sh0": torch.rand(N, 1, 3, generator=g),
    }
    params = {k: torch.nn.Parameter(v) for k, v in params.items()}
    opt = torch.optim.Adam([{"params": [p], "name": k} for k, p in params.items()], lr=1e-3)
    # one step with row-identifiable gradients so every row has its own moments
    for p in params.values():
        p.grad = (torch.arange(N, dtype=torch.float32) + 1).reshape(N, *[1] * (p.ndim - 1)).expand_as(p).clone()
    opt.step()
    return params, opt


def moments(params, opt, name):
    return opt.state[params[name]]["exp_avg"]


def test_remove_keeps_rows_and_moments_in_order():
    params, opt = make()
    before = {k: (p.detach().clone(), moments(params, opt, k).clone()) for k, p in params.items()}
    mask = torch.tensor([True, False, False, True, False, True])
    remove(params, opt, mask)
    for k, (p, m) in before.items():
        assert torch.equal(params[k].detach(), p[~mask])
        assert torch.equal(moments(params, opt, k), m[~mask])
        assert opt.param_groups[[g["name"] for g in opt.param_groups].index(k)]["params"][0] is params[k]
    opt.step()  # the optimizer still works on the new tensors


def test_duplicate_appends_copies_with_zero_moments():
    params, opt = make()
    m = moments(params, opt, "means").clone()
    duplicate(params, opt, torch.tensor([False, True, False, False, True, False]))
    assert len(params["means"]) == 8
    assert torch.equal(params["means"][6:].detach(), params["means"][[1, 4]].detach())
    assert torch.equal(moments(params, opt, "means")[:6], m)
    assert torch.count_nonzero(moments(params, opt, "means")[6:]) == 0


def test_split_children_follow_the_3dgs_rule():
    torch.manual_seed(0)
    params, opt = make(N=4)
    params["scales"].data[2] = torch.log(torch.tensor([0.3, 0.1, 0.05]))
    parent_mean, parent_scale = params["means"][2].detach().clone(), torch.exp(params["scales"][2]).detach()
    parent_opacity = params["opacities"][2].detach().clone()
    split(params, opt, torch.tensor([False, False, True, False]))
    assert len(params["means"]) == 5
    children = slice(3, 5)
    assert torch.allclose(torch.exp(params["scales"][children]), (parent_scale / 1.6).expand(2, 3))
    assert torch.equal(params["opacities"][children].detach(), parent_opacity.expand(2))
    # children lie within a few parent standard deviations, in the parent's rotated frame
    assert ((params["means"][children] - parent_mean).norm(dim=-1) < 5 * parent_scale.max()).all()
    assert torch.count_nonzero(moments(params, opt, "scales")[children]) == 0
    o = torch.sigmoid(params["opacities"][0]).detach()
    split(params, opt, torch.tensor([True, False, False, False, False]), revised_opacity=True)
    assert torch.allclose(torch.sigmoid(params["opacities"][-1]), 1 - torch.sqrt(1 - o))


def test_split_offsets_have_the_parent_covariance():
    torch.manual_seed(1)
    params, opt = make(N=1)
    params["scales"].data[0] = torch.log(torch.tensor([0.5, 0.1, 0.02]))
    params["quats"].data[0] = torch.tensor([math.cos(0.3), 0.0, 0.0, math.sin(0.3)])  # 0.6 rad about z
    from ngraphics.splatting.project import quat_scale_to_covar
    covar = quat_scale_to_covar(params["quats"].detach(), torch.exp(params["scales"]).detach())[0]
    mean = params["means"][0].detach().clone()
    params2 = {k: torch.nn.Parameter(v.detach().repeat(20000, *[1] * (v.ndim - 1))) for k, v in params.items()}
    opt2 = torch.optim.Adam([{"params": [p], "name": k} for k, p in params2.items()])
    split(params2, opt2, torch.ones(20000, dtype=torch.bool))
    d = params2["means"].detach() - mean
    assert torch.allclose(d.T @ d / len(d), covar, atol=0.01 * 0.25)


def test_default_strategy_counts_on_a_hand_built_state():
    params, opt = make(N=6)
    params["scales"].data[3:] = math.log(0.5)  # large: split
    params["opacities"].data[5] = torch.logit(torch.tensor(0.001))  # transparent: pruned
    strategy = DefaultStrategy(refine_start=0, refine_every=10, reset_every=1000)
    state = strategy.initialize_state()
    state["grad2d"] = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    state["count"] = torch.tensor([1000.0, 1.0, 10.0, 10.0, 1.0, 1.0])  # row 0: mean 0.001 > 0.0002
    counts = strategy.grow(params, opt, state, scene_scale=1.0)
    assert counts == {"n_cloned": 2, "n_split": 1}  # rows 0, 2 cloned (small), row 3 split (large)
    assert len(params["means"]) == 6 + 2 + 1
    assert strategy.prune(params, opt, step=10, scene_scale=1.0) == 1
    assert len(params["means"]) == 8


def test_default_strategy_prunes_huge_after_reset_and_resets_opacity():
    params, opt = make(N=3)
    params["scales"].data[0] = math.log(0.5)
    strategy = DefaultStrategy(reset_every=100)
    assert strategy.prune(params, opt, step=50, scene_scale=1.0) == 0
    assert strategy.prune(params, opt, step=150, scene_scale=1.0) == 1
    reset_opacity(params, opt, 0.01)
    assert torch.allclose(torch.sigmoid(params["opacities"]), torch.full((2,), 0.01))
    assert torch.count_nonzero(moments(params, opt, "opacities")) == 0


def test_accumulate_screen_gradients_and_zero_left():
    params, opt = make(N=2)
    strategy = DefaultStrategy(refine_start=0, refine_every=1)
    state = strategy.initialize_state()
    means2d = torch.zeros(1, 2, 2, requires_grad=True)
    means2d.grad = torch.tensor([[[1e-6, 0.0], [0.0, 0.0]]])
    info = {"means2d": means2d, "radii": torch.tensor([[3, 0]]), "alpha": torch.zeros(1, 10, 40, 1)}
    strategy.accumulate(state, info)
    assert torch.allclose(state["grad2d"], torch.tensor([1e-6 * 20.0, 0.0]))
    assert torch.equal(state["count"], torch.tensor([1.0, 0.0]))
    params["opacities"].data[:] = -20.0
    with pytest.raises(DataError, match="no Gaussians left"):
        strategy.step_post_backward(params, opt, state, 1, info, 1.0)


def test_relocation_identity_and_preserved_sum():
    o, s = torch.tensor([0.3, 0.8]), torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]])
    new_o, new_s = relocation(o, s, torch.tensor([1, 1]))
    assert torch.allclose(new_o, o) and torch.allclose(new_s, s)
    # r copies with o' composite to the original opacity: 1 - (1 - o')^r = o
    new_o, _ = relocation(o, s, torch.tensor([3, 5]))
    assert torch.allclose(1 - (1 - new_o) ** torch.tensor([3.0, 5.0]), o)


def test_mcmc_relocates_dead_and_grows_to_budget():
    torch.manual_seed(0)
    params, opt = make(N=20)
    params["opacities"].data[:5] = -20.0  # dead
    strategy = MCMCStrategy(cap_max=22, refine_start=0, refine_every=1, noise_lr=0.0)
    counts = strategy.step_post_backward(params, opt, strategy.initialize_state(), 1, {}, lr=1e-3)
    assert counts == {"n_relocated": 5, "n_added": 1}
    assert len(params["means"]) == 21
    assert (torch.sigmoid(params["opacities"]) > 0.005).all()
    for row in list(range(5)) + [20]:  # relocated and added rows copy a live Gaussian and start fresh
        match = (params["sh0"][row] == params["sh0"][5:20]).all(-1).all(-1)
        assert match.any()
        assert torch.count_nonzero(moments(params, opt, "sh0")[row]) == 0


def test_nan_parameters_stop_at_the_next_refine_step():
    params, opt = make(N=4)
    strategy = DefaultStrategy(refine_start=0, refine_every=2)
    means2d = torch.zeros(1, 4, 2, requires_grad=True)
    means2d.grad = torch.zeros(1, 4, 2)
    info = {"means2d": means2d, "radii": torch.tensor([[3, 3, 3, 3]]), "alpha": torch.zeros(1, 10, 40, 1)}
    state = strategy.initialize_state()
    params["means"].data[1, 2] = float("nan")
    strategy.step_post_backward(params, opt, state, 1, info, 1.0)  # not a refine step: no sync, no check
    with pytest.raises(DataError, match=r"step 2: Gaussians with NaN or infinite parameters: means \(1\) of 4; "
                                        "training diverged"):
        strategy.step_post_backward(params, opt, state, 2, info, 1.0)
    params, opt = make(N=4)
    params["scales"].data[0] = float("inf")
    with pytest.raises(DataError, match=r"step 3: .*scales \(1\) of 4"):
        MCMCStrategy(refine_start=0, refine_every=3, noise_lr=0.0).step_post_backward(params, opt, {}, 3, {}, 1e-3)


@pytest.mark.parametrize("refine_step", [600, 3100])
def test_default_strategy_matches_gsplat(refine_step):
    """The same state through gsplat 1.5.3's DefaultStrategy (the peer's code, pure torch on the CPU) and ours:
    two views' screen-space gradients accumulated, then one refine step (clone, split with the same random
    draws, prune; at step 3,100 also the too-large ones after the first opacity reset). The Gaussians and
    their Adam moments must come out the same, row for row."""
    gsplat_strategy = pytest.importorskip("gsplat.strategy")
    N, C, W, H = 400, 2, 64, 48
    g = torch.Generator().manual_seed(1)
    raw = {"means": torch.randn(N, 3, generator=g),
           # 40 % small (largest scale <= grow_scale3d x scene scale: cloned), the rest split, some too large
           "scales": torch.log(torch.rand(N, 3, generator=g) * torch.where(torch.rand(N, 1, generator=g) < 0.4,
                                                                           0.015, 0.3) + 1e-3),
           "quats": torch.randn(N, 4, generator=g),
           "opacities": torch.logit(torch.rand(N, generator=g) * 0.98 + 0.001),  # a few below prune_opa
           "sh0": torch.rand(N, 1, 3, generator=g), "shN": torch.rand(N, 15, 3, generator=g)}
    scene_scale = 2.0
    grads = {k: torch.randn(v.shape, generator=g) for k, v in raw.items()}
    views = [(torch.randn(C, N, 2, generator=g) * 3e-6, (torch.rand(C, N, generator=g) > 0.3).int() * 5)
             for _ in range(2)]

    def adam_step(params, optimizers):
        for k, p in params.items():
            p.grad = grads[k].clone()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)

    ours = {k: torch.nn.Parameter(v.clone()) for k, v in raw.items()}
    our_opt = torch.optim.Adam([{"params": [p], "name": k, "lr": 1e-3} for k, p in ours.items()], eps=1e-15)
    adam_step(ours, [our_opt])
    theirs = torch.nn.ParameterDict({k: torch.nn.Parameter(v.clone()) for k, v in raw.items()})
    their_opts = {k: torch.optim.Adam([{"params": [p], "name": k, "lr": 1e-3}], eps=1e-15) for k, p in theirs.items()}
    adam_step(theirs, their_opts.values())

    strategy = DefaultStrategy()
    state = strategy.initialize_state()
    reference = gsplat_strategy.DefaultStrategy()
    ref_state = reference.initialize_state(scene_scale=scene_scale)
    for i, (grad2d, radii) in enumerate(views):
        step = refine_step - 1 + i  # the second view lands on the refine step
        means2d = torch.zeros(C, N, 2, requires_grad=True)
        means2d.grad = grad2d.clone()
        info = {"means2d": means2d, "radii": radii, "alpha": torch.zeros(C, H, W, 1)}
        torch.manual_seed(7)
        strategy.step_post_backward(ours, our_opt, state, step, info, scene_scale)
        ref_means2d = torch.zeros(C, N, 2, requires_grad=True)
        ref_means2d.grad = grad2d.clone()
        ref_info = {"means2d": ref_means2d, "radii": radii[..., None].expand(C, N, 2).float(), "width": W,
                    "height": H, "n_cameras": C, "gaussian_ids": None}
        torch.manual_seed(7)
        reference.step_post_backward(theirs, their_opts, ref_state, step, ref_info)
    assert len(ours["means"]) == len(theirs["means"]) != N  # it refined
    for k in raw:
        torch.testing.assert_close(ours[k].detach(), theirs[k].detach())
        for moment in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(our_opt.state[ours[k]][moment], their_opts[k].state[theirs[k]][moment])
