"""ParameterEMA: the running average against a float64 loop; shadow copies; state round trip."""

from __future__ import annotations

import copy

import torch

from ngraphics.optim.ema import ParameterEMA


def test_average_matches_a_loop_and_leaves_the_live_parameters_alone():
    torch.manual_seed(0)
    module = torch.nn.Linear(3, 2)
    ema = ParameterEMA(module, decay=0.9)
    want = [p.detach().double().clone() for p in module.parameters()]
    for _ in range(7):
        with torch.no_grad():
            for p in module.parameters():
                p.add_(torch.randn_like(p))
        ema.update()
        want = [0.9 * w + 0.1 * p.detach().double() for w, p in zip(want, module.parameters())]
    raw = [p.detach().clone() for p in module.parameters()]
    shadow = copy.deepcopy(module)
    ema.copy_to(shadow)
    for p, w in zip(shadow.parameters(), want):
        torch.testing.assert_close(p.detach().double(), w, rtol=1e-6, atol=1e-6)
    for p, r in zip(module.parameters(), raw):
        assert torch.equal(p.detach(), r)
    other = ParameterEMA(torch.nn.Linear(3, 2), decay=0.9)
    other.load_state_dict(ema.state_dict())
    for a, b in zip(other.average, ema.average):
        assert torch.equal(a, b)
