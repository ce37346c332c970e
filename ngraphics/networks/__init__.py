"""Tiny MLPs and encoding+MLP modules with tiny-cuda-nn's configs, parameter layout and initialisation.

`create_network(n_in, n_out, {"otype": "FullyFusedMLP", ...})` builds an `MLP`;
`NetworkWithInputEncoding(n_in, n_out, encoding_config, network_config)` chains an encoding and an MLP with
one flat parameter vector. `ngraphics.tcnn` wraps both in the `tinycudann` Python API.
"""

from ngraphics.networks.mlp import (
    ACTIVATIONS,
    MLP,
    NETWORK_TYPES,
    MLPConfig,
    MLPSpec,
    activation_torch,
    create_network,
    mlp_forward_torch,
)
from ngraphics.networks.network_with_input_encoding import (
    NetworkWithInputEncoding,
    create_network_with_input_encoding,
)

__all__ = [
    "ACTIVATIONS", "MLP", "NETWORK_TYPES", "MLPConfig", "MLPSpec", "activation_torch", "create_network",
    "mlp_forward_torch", "NetworkWithInputEncoding", "create_network_with_input_encoding",
]
