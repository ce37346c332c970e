"""Methods: what the trainer trains. `METHODS` is the one name -> class table (the `method:` key of a config).

Every method subclasses `ngraphics.methods.base.Method` (the protocol: `Config`, construction from
`(config, scene, device, dist)`, `sampler`, `train_step`, `render`, `state_dict` / `load_state_dict`, and
optional `metrics`, `export`). A new method is one file here and one row below; docs/architecture.md shows
how.
"""

from __future__ import annotations

from ngraphics.errors import ConfigError, choice_message
from ngraphics.methods.base import SINGLE_PROCESS, Dist, Method, Sampler
from ngraphics.methods.nerf import NeRF
from ngraphics.methods.neus import Neus
from ngraphics.methods.splat import Splat

METHODS: dict[str, type[Method]] = {
    "nerf": NeRF,
    "neus": Neus,
    "splat": Splat,
}


def method_class(name: object, where: str = "method") -> type[Method]:
    """The class registered as `name` in METHODS; ConfigError with the nearest name otherwise."""
    if not isinstance(name, str) or name not in METHODS:
        raise ConfigError(choice_message(where, name, METHODS))
    return METHODS[name]


__all__ = ["METHODS", "SINGLE_PROCESS", "Dist", "Method", "NeRF", "Neus", "Sampler", "Splat", "method_class"]
