"""ngraphics: neural graphics in Python.

tiny-cuda-nn compatible encodings (`ngraphics.encodings`) and MLPs (`ngraphics.networks`), a drop-in
`tinycudann` API (`import ngraphics.tcnn as tcnn`), Triton kernels (`ngraphics.kernels`), datasets, the
trainer and methods. Importing `ngraphics` needs neither a GPU nor Triton.
"""

__version__ = "0.1.0"
