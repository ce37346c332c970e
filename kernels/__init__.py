"""GPU kernels in Triton (installed as `ngraphics.kernels`). Nothing here needs a CUDA toolchain.

Each file holds kernels, launcher and autograd.Function for one operation; its readable PyTorch twin lives in
`ngraphics/` with the same stem and signature (`grid_encode_torch` <-> `grid_encode_triton`). Importing a
kernel module needs Triton; `ngraphics.backends.resolve_backend` decides whether it is used.
"""
