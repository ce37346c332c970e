"""GPU kernels in Triton (installed as `ngraphics.kernels`). Nothing here needs a CUDA toolchain.

Each file holds kernels, launcher and autograd.Function for one operation; its readable PyTorch twin lives in
`ngraphics/` with the same stem and signature (`grid_encode_torch` <-> `grid_encode_triton`). Importing a
kernel module needs Triton. Only `ngraphics.ops` (the dispatch table `OPS`, its `use_kernel` policy, and each
kernel's `unsupported_reason`) and `ngraphics.profiling` reach these modules from the library; the kernels
import the references' specs and helpers, never the other way round.
"""
