"""UV-textured exports of a generated human (`sample --faces 50000 --texture-size 1024`), by
stage, against its extraction in the same run: decimation, the unwrap (charts projected by
normal, packed by xatlas), the bake (texel points, decoder queries, dilation) and the GLB
export; and the colour fidelity of the texture at the vertices against the texture decoder
there. The decoders run in float32, and once in bfloat16 (`--compute-dtype bfloat16`, extraction
included)."""

import os
import time

import pytest
import torch
from bench_settings import QUICK

from get3dhuman import Generator
from get3dhuman import texture as texture_module
from get3dhuman.mesh import MeshingOptions, sample_texture
from get3dhuman.texture import bake_texture, decimate, unwrap

RESOLUTION = 64 if QUICK else 256
FACES = 2000 if QUICK else 50000
TEXTURE_SIZE = 256 if QUICK else 1024


@pytest.mark.parametrize(("seed", "dtype"), [(0, torch.float32), (1, torch.float32), (0, torch.bfloat16)],
                         ids=["0-float32", "1-float32", "0-bfloat16"])
def test_textured_export_by_stage(benchmark, record, tmp_path, monkeypatch, seed, dtype):
    generator = Generator.from_pretrained().eval()
    z = generator.latents([seed])
    with torch.no_grad():
        shape, texture = generator(*z)
    calib = generator.calibration[None]

    def color(points):
        return generator.query_color(shape.volume, texture, points[None], calib, compute_dtype=dtype)[0]

    seconds = {}

    def timed_unwrap(*args, **kwargs):  # bake_texture's own call, timed apart
        start = time.perf_counter()
        atlas = unwrap(*args, **kwargs)
        seconds["unwrap"] = time.perf_counter() - start
        return atlas

    monkeypatch.setattr(texture_module, "unwrap", timed_unwrap)

    def timed():
        start = time.perf_counter()
        with torch.no_grad():
            mesh = generator.extract_mesh(*z, RESOLUTION, meshing=MeshingOptions(compute_dtype=dtype))[0]
        seconds["extraction"] = time.perf_counter() - start
        start = time.perf_counter()
        fewer = decimate(mesh, FACES, color)  # the decoder's colours at the new vertices, as the generator does
        seconds["decimate"] = time.perf_counter() - start
        start = time.perf_counter()
        baked = bake_texture(fewer, color, TEXTURE_SIZE)
        seconds["bake"] = time.perf_counter() - start - seconds["unwrap"]  # the rest of bake_texture
        start = time.perf_counter()
        baked.export(os.path.join(tmp_path, "human.glb"))
        seconds["export"] = time.perf_counter() - start
        return baked

    baked = benchmark.pedantic(timed, rounds=1, iterations=1, warmup_rounds=1)  # a dataset run is warm
    with torch.no_grad():
        decoded = generator.query_color(shape.volume, texture, baked.vertices[None], calib)[0]  # float32
    fidelity = float((sample_texture(baked.texture, baked.uvs) - decoded).abs().mean())
    added = seconds["decimate"] + seconds["unwrap"] + seconds["bake"] + seconds["export"]
    benchmark.group = f"textured export, {RESOLUTION}^3, {FACES} faces, {TEXTURE_SIZE}^2 texture, {dtype}"
    benchmark.extra_info.update({name: round(value, 3) for name, value in seconds.items()},
                                fidelity=round(fidelity, 5), faces=int(baked.faces.shape[0]),
                                added_over_extraction=round(added / seconds["extraction"], 2))
    record(f"textured export seed {seed} {dtype}", "added", added, 0)
    record(f"textured export seed {seed} {dtype}", "extraction", seconds["extraction"], 0)
    assert fidelity < 0.03
