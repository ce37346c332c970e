"""Methods: what the trainer trains. `METHODS` is the one name -> class table (the `method:` key of a config).

A method is a plain class with:

    Config                      frozen dataclass of its `model:` keys, with defaults
    batching                    "rays" or "views": which batches the trainer builds (see ngraphics.training.trainer)
    __init__(config, scene, device)       scene: the training SceneData
    train_step(batch) -> dict   forward, backward, its own optimizer step and schedules; float or 0-dim losses
    render(cameras, background=None) -> dict of (C, H, W, k) images: rgb, depth, alpha
    state_dict() / load_state_dict(state) everything needed to resume (tensors and plain values only)
    export(kind, path)          optional
    rays_per_batch              optional int attribute: ray methods that size their own batches set it
"""

from __future__ import annotations

from ngraphics.errors import ConfigError, choice_message
from ngraphics.methods.nerf import NeRF

METHODS: dict[str, type] = {
    "nerf": NeRF,
}


def method_class(name: object, where: str = "method") -> type:
    """The class registered as `name` in METHODS; ConfigError with the nearest name otherwise."""
    if not isinstance(name, str) or name not in METHODS:
        raise ConfigError(choice_message(where, name, METHODS))
    return METHODS[name]


__all__ = ["METHODS", "NeRF", "method_class"]
