"""The procedural human world: the offline stand-in for StyleGAN-Human, PIFu's training scans
and 3-D ground truth (DESIGN.md section 5).

- PARAMETERS / default_parameters: the documented human parameter vector.
- human_sdf / human_color: analytic signed distance and colour fields of a batch of humans
  (HumanField: the same with the humans' primitive tables built once, for many queries).
- human_parameters: the latent map z ~ N(0, I) -> parameters (the 2-D generator stand-in).
- sample_surface / sample_occupancy / sample_surface_colors: PIFu-style training samples.
- ground_truth_mesh / sdf_grid: ground-truth meshes (dense SDF grid + ops.marching_cubes).
- preview: shaded renders and PNG grids (`get3dhuman synthetic`).
"""

from get3dhuman.synthetic.human import (
    NUM_PARAMETERS,
    PARAMETERS,
    HumanField,
    Parameter,
    default_parameters,
    human_color,
    human_sdf,
)
from get3dhuman.synthetic.latent import human_parameters, latent_directions
from get3dhuman.synthetic.meshes import ground_truth_mesh, sdf_grid
from get3dhuman.synthetic.sampling import (
    ColorSamples,
    OccupancySamples,
    project_to_surface,
    sample_occupancy,
    sample_surface,
    sample_surface_colors,
)

__all__ = [
    "NUM_PARAMETERS",
    "PARAMETERS",
    "ColorSamples",
    "HumanField",
    "OccupancySamples",
    "Parameter",
    "default_parameters",
    "ground_truth_mesh",
    "human_color",
    "human_parameters",
    "human_sdf",
    "latent_directions",
    "project_to_surface",
    "sample_occupancy",
    "sample_surface",
    "sample_surface_colors",
    "sdf_grid",
]
