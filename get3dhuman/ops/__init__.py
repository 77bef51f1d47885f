"""Custom operators of get3dhuman and their pure-torch references (the test oracles).

- sample_pixel_aligned / reference_sample_pixel_aligned: project, bilinear-sample, append depth.
- query_field / reference_query_field: an implicit decoder evaluated at points, fused and chunked.
- DecoderWeights: the form of an implicit decoder the queries evaluate (nn.ImplicitDecoder's
  decoder_weights()).
- bias_act / modulate_weights (and reference_*): the StyleGAN2 layer helpers, fused in Triton
  on CUDA tensors.
- BACKENDS / select_backend / backend_unavailable_reason / BACKEND_ENV: which implementation
  query_field runs (CUDA, Triton, C++ CPU, reference) and why the others do not apply.
- project_inputs: precomputes the 'projected' variant's map for repeated queries.
- pixel_order: the cache-friendly point order query_field uses on the CPU.
- marching_cubes / marching_cubes_sparse / reference_marching_cubes: iso-surfaces of dense
  volumes and of sparse cell sets.
- rasterize / reference_rasterize: z-buffer rasterization of triangle meshes (orthographic).
- sdf_union / reference_sdf_union: smooth unions of signed-distance primitive tables (the
  synthetic humans' field), with the primitives (ellipsoid, tapered_capsule, capped_cone, ...).
- narrow_band / SparseVolume: coarse-to-fine evaluation of a field near its iso-surface
  (coarse_resolution_for: the coarse lattice to start from).
"""

from get3dhuman.ops.decoder import DecoderWeights
from get3dhuman.ops.marching_cubes import (
    marching_cubes,
    marching_cubes_sparse,
    reference_marching_cubes,
)
from get3dhuman.ops.narrow_band import SparseVolume, coarse_resolution_for, narrow_band
from get3dhuman.ops.pixel_aligned import (
    OFFICIAL_DEPTH_SCALE,
    check_sample_inputs,
    reference_sample_pixel_aligned,
    sample_pixel_aligned,
)
from get3dhuman.ops.query import (
    BACKEND_ENV,
    BACKENDS,
    ProjectedInputs,
    backend_unavailable_reason,
    choose_variant,
    pixel_order,
    project_inputs,
    query_field,
    reference_query_field,
    select_backend,
)
from get3dhuman.ops.rasterize import Rasterized, rasterize, reference_rasterize
from get3dhuman.ops.sdf_union import UnionDistances, reference_sdf_union, sdf_union
from get3dhuman.ops.stylegan2 import (
    bias_act,
    modulate_weights,
    reference_bias_act,
    reference_modulate_weights,
)

__all__ = [
    "BACKENDS",
    "BACKEND_ENV",
    "DecoderWeights",
    "OFFICIAL_DEPTH_SCALE",
    "ProjectedInputs",
    "Rasterized",
    "SparseVolume",
    "UnionDistances",
    "backend_unavailable_reason",
    "bias_act",
    "check_sample_inputs",
    "choose_variant",
    "coarse_resolution_for",
    "marching_cubes",
    "marching_cubes_sparse",
    "modulate_weights",
    "narrow_band",
    "pixel_order",
    "project_inputs",
    "query_field",
    "rasterize",
    "reference_bias_act",
    "reference_marching_cubes",
    "reference_modulate_weights",
    "reference_query_field",
    "reference_rasterize",
    "reference_sample_pixel_aligned",
    "reference_sdf_union",
    "sample_pixel_aligned",
    "sdf_union",
    "select_backend",
]
