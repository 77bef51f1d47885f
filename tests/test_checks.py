"""The shared whole-number checks (`get3dhuman._checks`) and the public functions that use them:
any integral type is taken and gives what the same Python int gives; anything else is refused
naming the argument and its range."""

import numpy as np
import pytest
import torch
from inputs import generator_with_a_surface

from get3dhuman import Refiner
from get3dhuman._checks import check_file, check_int, check_seed, is_finite_number
from get3dhuman.dataset import SETTINGS, write_samples
from get3dhuman.mesh import MeshingOptions
from get3dhuman.nn import GeneratorConfig
from get3dhuman.nn.generator import latents_of_seeds
from get3dhuman.ops import narrow_band, rasterize, reference_sample_pixel_aligned, sample_pixel_aligned
from get3dhuman.render import orbit_calibration, ray_march, sphere_trace
from get3dhuman.synthetic import human_parameters
from get3dhuman.synthetic.meshes import ground_truth_mesh
from get3dhuman.synthetic.preview import sample_grid


@pytest.mark.parametrize(("value", "low", "high"), [
    (1, 1, None), (7, 1, None), (0, 0, 0), (360, 1, 360), (np.int64(4), 1, None), (np.uint8(255), 2, 255),
    (np.int32(-3), -5, -1), (2**70, 0, None),
])
def test_check_int_takes_whole_numbers_in_range_as_python_ints(value, low, high):
    checked = check_int(value, "count", low, high)
    assert type(checked) is int and checked == value


@pytest.mark.parametrize(("value", "low", "high", "message"), [
    (0, 1, None, "count must be an int >= 1, got 0"),
    (361, 1, 360, r"count must be an int in \[1, 360\], got 361"),
    (0, 1, 360, r"count must be an int in \[1, 360\], got 0"),
    (True, 1, None, "count must be an int >= 1, got True"),
    (False, 0, None, "count must be an int >= 0, got False"),
    (2.0, 1, None, "count must be an int >= 1, got 2.0"),
    (2.5, 1, None, "count must be an int >= 1, got 2.5"),
    ("3", 1, None, "count must be an int >= 1, got '3'"),
    (None, 1, None, "count must be an int >= 1, got None"),
    (torch.tensor(3), 1, None, r"count must be an int >= 1, got tensor\(3\)"),
    (np.int64(1), 2, None, r"count must be an int >= 2, got np.int64\(1\)"),
])
def test_check_int_refuses_the_rest_naming_argument_and_range(value, low, high, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        check_int(value, "count", low, high)


def test_check_int_none_ok():
    assert check_int(None, "cutoff", 0, none_ok=True) is None
    assert check_int(np.int16(3), "cutoff", 0, none_ok=True) == 3
    with pytest.raises(ValueError, match=r"^cutoff must be an int >= 0 or None, got -1$"):
        check_int(-1, "cutoff", 0, none_ok=True)


def test_check_seed_range_and_type():
    assert check_seed(0) == 0 and check_seed(2**64 - 1) == 2**64 - 1
    assert type(check_seed(np.uint64(2**64 - 1))) is int
    for refused in (-1, 2**64, True, 1.0):
        with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\^64\)"):
            check_seed(refused)


def test_is_finite_number_and_check_file(tmp_path):
    assert all(is_finite_number(v) for v in (0, -2.5, np.float32(1.5), np.int8(3)))
    assert not any(is_finite_number(v) for v in (True, float("nan"), float("-inf"), "1", None, torch.tensor(1.0)))
    (tmp_path / "weights.bin").write_bytes(b"")
    assert check_file(tmp_path / "weights.bin", "a weights file") == str(tmp_path / "weights.bin")
    with pytest.raises(FileNotFoundError, match=f"^path {str(tmp_path / 'no.bin')!r} does not exist$"):
        check_file(tmp_path / "no.bin", "a weights file")
    with pytest.raises(FileNotFoundError, match="is a directory, not a weights file$"):
        check_file(tmp_path, "a weights file")


def test_numpy_whole_numbers_give_what_python_ints_give():
    shape, texture = latents_of_seeds([np.uint64(5), np.int32(2)], 8)
    expected_shape, expected_texture = latents_of_seeds([5, 2], 8)
    assert torch.equal(shape, expected_shape) and torch.equal(texture, expected_texture)

    vertices = torch.tensor([[-0.8, -0.8, 0.0], [0.8, -0.6, 0.2], [0.0, 0.9, -0.1]])
    faces = torch.tensor([[0, 1, 2]])
    drawn, expected = rasterize(vertices, faces, np.int64(12), np.int16(10)), rasterize(vertices, faces, 12, 10)
    assert torch.equal(drawn.face_index, expected.face_index) and int((drawn.face_index >= 0).sum()) > 0

    def sphere(points):
        return points.norm(dim=-1) - 0.5

    calib = orbit_calibration(torch.zeros(1))
    traced, expected = sphere_trace(sphere, calib, np.int64(8), steps=np.int8(20)), sphere_trace(sphere, calib, 8, steps=20)
    assert torch.equal(traced.depth, expected.depth) and bool(traced.mask.any())
    volume = narrow_band(sphere, np.int64(16), coarse_resolution=np.int32(4))
    assert volume.fraction_evaluated == narrow_band(sphere, 16, coarse_resolution=4).fraction_evaluated


def test_numpy_reals_give_what_python_floats_give():
    # depth_scale, band and level take any real number (numpy's float32 too), never a bool or NaN.
    torch.manual_seed(0)
    features, points, calib = torch.randn(1, 3, 5, 6), torch.rand(1, 40, 3) * 2 - 1, torch.eye(4)[None]
    for sample in (sample_pixel_aligned, reference_sample_pixel_aligned):
        assert torch.equal(sample(features, points, calib, np.float32(1.25)), sample(features, points, calib, 1.25))
    with pytest.raises(ValueError, match=r"^depth_scale must be a finite float, got True$"):
        sample_pixel_aligned(features, points, calib, True)

    def sphere(p):
        return p.norm(dim=-1) - 0.5

    narrow = narrow_band(sphere, 32, coarse_resolution=8, band=np.float32(0.5), level=np.float32(0.125))
    expected = narrow_band(sphere, 32, coarse_resolution=8, band=0.5, level=0.125)
    assert narrow.fraction_evaluated == expected.fraction_evaluated and narrow.level == 0.125
    assert narrow_band(sphere, 16, coarse_resolution=8, band=float("inf")).fraction_evaluated == 1.0
    for options, message in (({"band": -1.0}, "band must be a non-negative float, got -1.0"),
                             ({"band": True}, "band must be a non-negative float, got True"),
                             ({"level": np.float32("nan")}, r"level must be a finite float, got np.float32\(nan\)")):
        with pytest.raises(ValueError, match=f"^{message}$"):
            narrow_band(sphere, 16, coarse_resolution=8, **options)


def test_a_dataset_of_numpy_whole_numbers_is_the_dataset_of_python_ints(tmp_path):
    generator = generator_with_a_surface()
    given = {"batch_size": np.int32(2), "resolution": np.int64(32), "preview_resolution": np.int64(16),
             "preview_views": np.int8(2), "progress": False}
    numpy = write_samples(generator, str(tmp_path / "numpy"), np.int64(2), np.uint8(3),
                          meshing=MeshingOptions(coarse_resolution=np.int16(8), chunk=np.int64(4096)), **given)
    python = write_samples(generator, str(tmp_path / "python"), 2, 3,
                           meshing=MeshingOptions(coarse_resolution=8, chunk=4096),
                           **{k: v if k == "progress" else int(v) for k, v in given.items()})
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in numpy] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in python]
    assert (tmp_path / "numpy" / SETTINGS).read_text() == (tmp_path / "python" / SETTINGS).read_text()


def test_public_functions_refuse_bad_whole_numbers_by_name(tmp_path):
    def sphere(points):
        return points.norm(dim=-1) - 0.5

    calib = orbit_calibration(torch.zeros(1))
    refusals = [
        (lambda: sphere_trace(sphere, calib, 2.5), "resolution must be an int >= 2, got 2.5"),
        (lambda: sphere_trace(sphere, calib, 8, steps=True), "steps must be an int >= 0, got True"),
        (lambda: ray_march(sphere, calib, 8, samples=1), "samples must be an int >= 2, got 1"),
        (lambda: ray_march(sphere, calib, 8, bisections=-1), "bisections must be an int >= 0, got -1"),
        (lambda: ray_march(sphere, calib, 8, slab=0.5), "slab must be an int >= 1, got 0.5"),
        (lambda: narrow_band(sphere, 16.0), "resolution must be an int >= 1, got 16.0"),
        (lambda: narrow_band(sphere, 16, coarse_resolution=0), "coarse_resolution must be an int >= 1, got 0"),
        (lambda: narrow_band(sphere, 16, batch_size=0), "batch_size must be an int >= 1, got 0"),
        (lambda: ground_truth_mesh(human_parameters(torch.zeros(1, 8))[0], 4), "resolution must be an int >= 8, got 4"),
        (lambda: sample_grid(str(tmp_path / "grid.png"), 1, seed=-1, resolution=8),
         r"seed must be an int in \[0, 2\^64\), got -1"),
        (lambda: sample_grid(str(tmp_path / "grid.png"), 1, resolution=8, z_dim=0), "z_dim must be an int >= 1, got 0"),
        # sizes: refused when built, not as a KeyError or ZeroDivisionError deep in a network
        (lambda: GeneratorConfig(z_dim=0), "z_dim must be an int >= 1, got 0"),
        (lambda: GeneratorConfig(hourglass_depth=0), "hourglass_depth must be an int >= 1, got 0"),
        (lambda: GeneratorConfig(conv_clamp=0), "conv_clamp must be an int >= 1 or None, got 0"),
        (lambda: GeneratorConfig(backbone_resolution=48), "backbone_resolution must be a power of two >= 4, got 48"),
        (lambda: GeneratorConfig(depth_scale=float("nan")), "depth_scale must be a finite number, got nan"),
        (lambda: Refiner(depth=-1), "depth must be an int >= 0, got -1"),
        (lambda: Refiner(base_channels=0), "base_channels must be an int >= 1, got 0"),
    ]
    for call, message in refusals:
        with pytest.raises(ValueError, match=f"^{message}$"):
            call()
    assert not (tmp_path / "grid.png").exists()
