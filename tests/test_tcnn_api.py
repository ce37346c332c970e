"""`ngraphics.tcnn` as a drop-in for tinycudann: programs written for tinycudann run on CPU unchanged."""

from __future__ import annotations

import copy
import io
import json
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch

import ngraphics.tcnn as tcnn
from ngraphics.errors import ConfigError
from ngraphics.networks import NetworkWithInputEncoding, create_network
from ngraphics.networks.pcg32 import Pcg32, grid_uniform

CONFIG_TEXT = """{
    // the usual tinycudann sample config, comments and all
    "loss": {"otype": "RelativeL2"},
    "optimizer": {"otype": "Adam", "learning_rate": 1e-2},
    "encoding": {
        "otype": "HashGrid",
        "n_levels": 8,
        "n_features_per_level": 2,
        "log2_hashmap_size": 12,
        "base_resolution": 8,
        "per_level_scale": 1.5
    },
    "network": {
        "otype": "FullyFusedMLP",
        "activation": "ReLU",
        "output_activation": "None",
        "n_neurons": 32,
        "n_hidden_layers": 2
    }
}"""


def image(xy: torch.Tensor) -> torch.Tensor:
    """A smooth procedural RGB image on [0, 1]^2, the target the sample program fits."""
    x, y = xy[:, 0:1], xy[:, 1:2]
    return torch.cat([0.5 + 0.5 * torch.sin(6 * x), 0.5 + 0.5 * torch.cos(5 * y), x * y], dim=1)


@pytest.fixture
def one_thread():
    """Small-batch CPU training runs fastest on one thread (and does not stall on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_sample_program_learns_an_image(tmp_path, one_thread):
    # Written as for tinycudann: a JSON config with comments, model + Adam + relative L2, random batches.
    config_path = tmp_path / "config_hash.json"
    config_path.write_text(CONFIG_TEXT)
    with open(config_path) as f:
        config = json.loads("\n".join(line.split("//")[0] for line in f))

    model = tcnn.NetworkWithInputEncoding(
        n_input_dims=2, n_output_dims=3, encoding_config=config["encoding"], network_config=config["network"]
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)

    def relative_l2(output, target):
        return ((output - target.to(output.dtype)) ** 2 / (output.detach() ** 2 + 0.01)).mean()

    probe = torch.rand(512, 2, generator=generator)
    with torch.no_grad():
        start = ((model(probe) - image(probe)) ** 2).mean().item()
    for _ in range(100):
        batch = torch.rand(512, 2, generator=generator)
        loss = relative_l2(model(batch), image(batch))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        end = ((model(probe) - image(probe)) ** 2).mean().item()
    assert end < start / 20, (start, end)

    # The other tinycudann style: a separate Encoding and Network, chained.
    encoding = tcnn.Encoding(n_input_dims=2, encoding_config=config["encoding"])
    network = tcnn.Network(n_input_dims=encoding.n_output_dims, n_output_dims=3,
                           network_config=config["network"])
    chained = torch.nn.Sequential(encoding, network)
    out = chained(probe)
    assert out.shape == (512, 3) and out.dtype == torch.float32
    assert encoding.n_output_dims == 16 and network.params.numel() == 32 * 16 + 32 * 32 + 16 * 32
    tcnn.free_temporary_memory()


def test_parameter_counts_worked_by_hand():
    ff = {"otype": "FullyFusedMLP", "n_neurons": 64, "n_hidden_layers": 2}
    # Network(3 -> 1): (64 x 16) + (64 x 64) + (16 x 64)
    assert tcnn.Network(3, 1, ff).params.numel() == 1024 + 4096 + 1024
    # CutlassMLP without hidden layers, 5 -> 3: one (16 x 16) matrix
    assert tcnn.Network(5, 3, {"otype": "CutlassMLP", "n_hidden_layers": 0}).params.numel() == 256
    # tcnn defaults (128 neurons, 5 hidden layers), 32 -> 20: (128 x 32) + 4 (128 x 128) + (32 x 128)
    assert tcnn.Network(32, 20, {"otype": "CutlassMLP"}).params.numel() == 4096 + 4 * 16384 + 4096
    # Frequency(4) on 3 dims: 24 features padded to 32; (64 x 32) + (64 x 64) + (16 x 64), no encoding params
    model = tcnn.NetworkWithInputEncoding(3, 4, {"otype": "Frequency", "n_frequencies": 4}, ff)
    assert model.params.numel() == 2048 + 4096 + 1024
    # 2D HashGrid, 2 levels of resolution 4 and 8 (16 and 64 entries <= 2^6), 2 features: 160 params.
    grid = {"otype": "HashGrid", "n_levels": 2, "n_features_per_level": 2, "log2_hashmap_size": 6,
            "base_resolution": 4, "per_level_scale": 2.0}
    assert tcnn.Encoding(2, grid).params.numel() == 160
    assert tcnn.NetworkWithInputEncoding(2, 1, grid, ff).params.numel() == (64 * 16 + 64 * 64 + 16 * 64) + 160


def test_state_dict_round_trip_and_tinycudann_shaped_dicts():
    enc = {"otype": "HashGrid", "n_levels": 2, "n_features_per_level": 2, "log2_hashmap_size": 6,
           "base_resolution": 4}
    net = {"otype": "CutlassMLP", "n_neurons": 16, "n_hidden_layers": 1}
    model = tcnn.NetworkWithInputEncoding(2, 3, enc, net, seed=1)
    state = model.state_dict()
    assert list(state) == ["params"] and state["params"].dtype == torch.float32
    other = tcnn.NetworkWithInputEncoding(2, 3, enc, net, seed=2)
    x = torch.rand(9, 2)
    assert not torch.equal(other(x), model(x))
    other.load_state_dict(state)
    torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)

    # What tinycudann saves: {"params": flat float32 vector}; n = 16*16 + 16*16 (net) + 2*(16+64) (grid).
    n = 16 * 16 + 16 * 16 + 2 * (16 + 64)
    saved = OrderedDict(params=torch.randn(n))
    fresh = tcnn.NetworkWithInputEncoding(2, 3, enc, net)
    fresh.load_state_dict(saved)
    assert torch.equal(fresh.params.detach(), saved["params"])
    # ... and nested inside a user's model, as torch.save(model.state_dict()) writes it.
    holder = torch.nn.Module()
    holder.field = tcnn.NetworkWithInputEncoding(2, 3, enc, net)
    buffer = io.BytesIO()
    torch.save(OrderedDict({"field.params": saved["params"].clone()}), buffer)
    buffer.seek(0)
    holder.load_state_dict(torch.load(buffer))
    torch.testing.assert_close(holder.field(x), fresh(x))
    with pytest.raises(RuntimeError, match="size mismatch"):
        fresh.load_state_dict({"params": torch.zeros(n + 1)})

    network = tcnn.Network(4, 2, net)
    network.load_state_dict({"params": torch.ones(16 * 16 + 16 * 16)})
    assert torch.equal(network.params.detach(), torch.ones(512))
    encoding = tcnn.Encoding(2, enc)
    encoding.load_state_dict({"params": torch.full((160,), 0.5)})
    assert list(encoding.state_dict()) == ["params"] and encoding.params.detach().eq(0.5).all()


def test_unknown_keys_warn_once_naming_them_and_native_api_stays_strict():
    enc = {"otype": "Frequency", "n_frequencies": 2, "bound": 1.0}  # NeuS2-style extra key
    net = {"otype": "FullyFusedMLP", "n_neurons": 16, "n_hidden_layers": 1, "geometric_init": True}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tcnn.NetworkWithInputEncoding(3, 1, enc, net)
    assert len(caught) == 1 and issubclass(caught[0].category, tcnn.TcnnCompatWarning)
    message = str(caught[0].message)
    assert "encoding_config.bound" in message and "network_config.geometric_init" in message
    assert caught[0].filename == __file__  # points at the caller's line
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tcnn.Network(3, 1, net)
        tcnn.Encoding(3, enc)
        tcnn.Network(3, 1, {"otype": "FullyFusedMLP", "n_neurons": 16})
    assert [str(w.message).split(":")[-1].strip() for w in caught] == ["network_config.geometric_init",
                                                                       "encoding_config.bound"]
    with pytest.raises(ConfigError, match="geometric_init"):
        create_network(3, 1, net)
    with pytest.raises(ConfigError, match="bound"):
        NetworkWithInputEncoding(3, 1, enc, {"otype": "FullyFusedMLP", "n_neurons": 16})
    with pytest.raises(ConfigError, match="n_neurons"):  # bad values are still errors
        tcnn.Network(3, 1, {"otype": "FullyFusedMLP", "n_neurons": 100})


def test_json_configs_with_comments(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(CONFIG_TEXT)
    from_path = tcnn.NetworkWithInputEncoding(2, 3, path, str(path), seed=3)  # whole file: parts picked out
    network_text = '{"otype": "FullyFusedMLP", // fused\n "n_neurons": 32, "n_hidden_layers": 2 /* two */}'
    from_text = tcnn.NetworkWithInputEncoding(2, 3, CONFIG_TEXT, network_text, seed=3)
    assert torch.equal(from_path.params, from_text.params)
    assert from_path.network.spec.n_neurons == 32 and from_path.encoding.config.n_levels == 8
    (tmp_path / "bad.json").write_text('{"otype": "HashGrid",, }')
    with pytest.raises(Exception, match="bad.json: not valid JSON"):
        tcnn.Encoding(2, tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        tcnn.Network(2, 1, '{"otype": ')


def test_same_seed_same_numbers_as_tcnn_stream():
    grid = {"otype": "HashGrid", "n_levels": 2, "n_features_per_level": 2, "log2_hashmap_size": 6,
            "base_resolution": 4}
    net = {"otype": "FullyFusedMLP", "n_neurons": 16, "n_hidden_layers": 1}
    a = tcnn.NetworkWithInputEncoding(2, 1, grid, net)  # seed 1337 by default, like tinycudann
    b = tcnn.NetworkWithInputEncoding(2, 1, grid, net, seed=1337)
    assert a.seed == 1337 and torch.equal(a.params, b.params)
    rng = Pcg32(1337)
    rng.advance(16 * 16 + 16 * 16)  # network first, then the encoding, from one stream
    np.testing.assert_array_equal(a.params.detach().numpy()[512:], grid_uniform(rng, 160, -1e-4, 1e-4))
    # tcnn.Encoding alone starts the stream at the grid.
    np.testing.assert_array_equal(tcnn.Encoding(2, grid).params.detach().numpy(),
                                  grid_uniform(Pcg32(1337), 160, -1e-4, 1e-4))
    assert not torch.equal(tcnn.Network(2, 1, net, seed=1).params, tcnn.Network(2, 1, net, seed=2).params)


def test_attributes_dtypes_and_module_functions():
    net = {"otype": "FullyFusedMLP", "n_neurons": 16, "n_hidden_layers": 1}
    model = tcnn.NetworkWithInputEncoding(3, 2, {"otype": "Identity"}, net)
    for module in (model, tcnn.Network(3, 2, net), tcnn.Encoding(3, {"otype": "Frequency"})):
        assert module.n_input_dims == 3 and module.seed == 1337 and module.jit_fusion is False
        assert isinstance(module.params, torch.nn.Parameter) and module.params.dtype == torch.float32
        assert [name for name, _ in module.named_parameters()] == ["params"]
        assert not hasattr(module, "native_tcnn_module")
        module.jit_fusion = tcnn.supports_jit_fusion()
        x = torch.rand(5, 3, dtype=torch.float64)  # tinycudann reads inputs as float32
        assert module(x).dtype == (torch.float16 if x.is_cuda else torch.float32)
        assert module.dtype == (torch.float16 if torch.cuda.is_available() else torch.float32)
        clone = copy.deepcopy(module)
        torch.testing.assert_close(clone(x), module(x))
    assert model(torch.rand(1, 3)).shape == (1, 2) and model(torch.rand(333, 3)).shape == (333, 2)
    assert tcnn.Encoding(3, {"otype": "Frequency"}, dtype=torch.float32).dtype == torch.float32
    with pytest.raises(ValueError, match="fp32 or fp16"):
        tcnn.Encoding(3, {"otype": "Frequency"}, dtype=torch.float64)
    assert tcnn.supports_jit_fusion() is False
    assert tcnn.batch_size_granularity() == 128
    assert tcnn.preferred_precision() in (tcnn.Precision.Fp16, tcnn.Precision.Fp32)
    tcnn.rtc_set_cache_dir("/nonexistent")
    assert "hyperparams" in repr(model)


def test_encoding_dtype_sets_the_grid_precision():
    """tcnn.Encoding(dtype=float16) runs its grid in tinycudann's precision (fp16 tables and outputs); on CPU
    the values come back as float32."""
    from ngraphics.encodings import HashGrid

    grid = {"otype": "HashGrid", "n_levels": 4, "log2_hashmap_size": 10, "base_resolution": 4}
    enc = tcnn.Encoding(3, grid, dtype=torch.float16)
    assert enc.encoding.dtype == torch.float16 and enc.params.dtype == torch.float32
    with torch.no_grad():
        enc.params.uniform_(-1, 1)
    native = HashGrid(3, grid, backend="torch", dtype=torch.float16)
    native.load_state_dict(enc.state_dict())
    x = torch.rand(50, 3)
    out = enc(x)
    assert out.dtype == torch.float32 and torch.equal(out, native(x).float())
    assert tcnn.Encoding(3, grid, dtype=torch.float32).encoding.dtype == torch.float32


@pytest.mark.gpu
def test_cuda_half_outputs_and_finite_gradients():
    grid = {"otype": "HashGrid", "n_levels": 4, "log2_hashmap_size": 12, "base_resolution": 8}
    net = {"otype": "FullyFusedMLP", "n_neurons": 64, "n_hidden_layers": 2, "activation": "ReLU"}
    model = tcnn.NetworkWithInputEncoding(3, 4, grid, net).cuda()
    with torch.no_grad():  # grid values of order 1 (as after training) instead of the +-1e-4 initial ones
        model.params[model.n_network_params :].uniform_(-1, 1)
    reference = NetworkWithInputEncoding(3, 4, grid, net, backend="torch").cuda().double()
    reference.load_state_dict(model.state_dict())
    x = torch.rand(1000, 3, device="cuda")
    y = model(x)
    assert y.dtype == torch.float16 and y.shape == (1000, 4)
    y64 = reference(x.double())
    assert (y.double() - y64).abs().max() < 2e-2 * y64.abs().max()
    target = torch.full_like(y64, 0.5)
    ((y.float() - target) ** 2).mean().backward()  # fp16 gradients pass tcnn's loss scaling
    ((y64 - target) ** 2).mean().backward()
    grad, grad64 = model.params.grad.double(), reference.params.grad
    assert torch.isfinite(grad).all()
    assert (grad - grad64).norm() < 2e-2 * grad64.norm()
