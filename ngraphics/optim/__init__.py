"""What methods use to optimise: Adam (torch's and tiny-cuda-nn's), parameter averages, learning-rate
schedules, and training steps that never wait for the GPU (CUDA graphs, lagged read-backs).

Sits below `ngraphics.methods` and above encodings/networks; imports nothing from training/ or methods/.
"""

from ngraphics.optim.adam import AdamConfig, TcnnAdam, tcnn_param_groups
from ngraphics.optim.ema import ParameterEMA
from ngraphics.optim.schedules import warmup_step_decay
from ngraphics.optim.step_graphs import GraphedStep, LaggedReadout

__all__ = ["AdamConfig", "GraphedStep", "LaggedReadout", "ParameterEMA", "TcnnAdam", "tcnn_param_groups",
           "warmup_step_decay"]
