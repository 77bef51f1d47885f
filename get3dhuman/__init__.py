"""get3dhuman: a fast, installable Get3DHuman (textured 3D human generation).

Public names:
- build_info(): what was compiled and what this machine can run.
- ops: the custom operators (pixel-aligned sampling, fused decoded queries) and their
  pure-torch references.
- nn: network modules (ImplicitDecoder, ...).
"""

__version__ = "0.1.0"

from get3dhuman._ext import build_info, load_extension

load_extension()

from get3dhuman import nn, ops  # noqa: E402

__all__ = ["__version__", "build_info", "nn", "ops"]
