"""Network modules of get3dhuman."""

from get3dhuman.nn.implicit import ImplicitDecoder

__all__ = ["ImplicitDecoder"]
