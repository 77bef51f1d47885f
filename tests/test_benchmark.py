"""`get3dhuman bench`: the sampling throughput and its stages (get3dhuman.benchmark.measure_sampling)."""

import json
import statistics

import pytest
import torch
from inputs import generator_with_a_surface

from get3dhuman.benchmark import STAGES, measure_sampling
from get3dhuman.cli import main
from get3dhuman.mesh import ExtractionTimings, MeshingOptions

MESHING = dict(meshing=MeshingOptions(coarse_resolution=8))


def test_the_figures_are_those_of_the_meshes_and_runs_measured():
    generator = generator_with_a_surface()
    result = measure_sampling(generator, 3, 32, batch_size=2, seed=5, repeat=2, **MESHING)
    meshes = generator.sample(3, seed=5, resolution=32, batch_size=2, **MESHING)
    timings = ExtractionTimings()
    z_shape, z_texture = generator.latents(range(5, 8))
    generator.extract_mesh(z_shape, z_texture, 32, timings=timings, **MESHING)
    assert result.humans == 3 and result.batch_size == 2 and result.resolution == 32 and result.device == "cpu"
    assert len(result.seconds) == 2 and all(seconds > 0 for seconds in result.seconds)
    assert result.seconds_per_human == pytest.approx(statistics.median(result.seconds) / 3)
    assert result.humans_per_second == pytest.approx(1 / result.seconds_per_human)
    # The stages are parts of the faster run (the median of two), which also makes the latents.
    assert set(result.stages) == set(STAGES) and all(seconds >= 0 for seconds in result.stages.values())
    assert 0 < 3 * sum(result.stages.values()) <= min(result.seconds)
    assert result.faces == pytest.approx(statistics.fmean(mesh.faces.shape[0] for mesh in meshes))
    assert result.vertices == pytest.approx(statistics.fmean(mesh.vertices.shape[0] for mesh in meshes))
    assert result.faces > 0
    assert result.evaluated_fraction == pytest.approx(statistics.fmean(timings.evaluated_fraction))
    assert json.loads(json.dumps(result.to_dict()))["seconds_per_human"] == pytest.approx(result.seconds_per_human)
    assert "humans/s" in result.summary() and "marching cubes" in result.summary()


@pytest.mark.parametrize("options, message", [
    (dict(num=0), "num must be an int >= 1, got 0"),
    (dict(num=2, repeat=0), "repeat must be an int >= 1, got 0"),
    (dict(num=2, batch_size=True), "batch_size must be an int >= 1, got True"),
    (dict(num=2, resolution=2.5), "resolution must be an int >= 1, got 2.5"),
    (dict(num=2, seed=-1), "seed"),
])
def test_bad_arguments_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        measure_sampling(generator_with_a_surface(), **options)


def test_command_line_reports_the_default_weights_throughput(capsys):
    assert main(["bench", "--num", "2", "--resolution", "32", "--repeat", "1", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["humans"] == 2 and figures["resolution"] == 32 and len(figures["seconds"]) == 1
    assert figures["faces"] > 0 and figures["humans_per_second"] > 0 and figures["query_backend"]
    assert figures["compute_dtype"] == figures["dtype"] == "float32"
    assert main(["bench", "--num", "1", "--resolution", "32", "--repeat", "1", "--compute-dtype", "bfloat16"]) == 0
    assert "humans/s" in capsys.readouterr().out
    narrow = measure_sampling(generator_with_a_surface(), 1, 32, repeat=1,
                              meshing=MeshingOptions(coarse_resolution=8, compute_dtype=torch.bfloat16))
    assert narrow.compute_dtype == "bfloat16" and "float32 networks, bfloat16 decoder products" in narrow.summary()
    assert main(["bench", "--num", "1", "--resolution", "32", "--repeat", "1", "--dtype", "bfloat16", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["compute_dtype"] == figures["dtype"] == "bfloat16"
    with pytest.raises(SystemExit):
        main(["bench", "--num", "1", "--resolution", "32", "--repeat", "0"])
    assert "get3dhuman bench: error: argument --repeat: must be an int >= 1, got 0" in capsys.readouterr().err
