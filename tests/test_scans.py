"""Training data from a folder of textured scans (get3dhuman.scans), checked on the meshes of
synthetic humans, whose analytic fields are the oracle."""

import dataclasses
import json

import numpy as np
import pytest
import torch
import trimesh

from get3dhuman.cli import main
from get3dhuman.mesh import TexturedMesh
from get3dhuman.scans import ScanSet, line_crossings, load_scan
from get3dhuman.synthetic import human_color, human_parameters, human_sdf
from get3dhuman.synthetic.meshes import ground_truth_mesh
from get3dhuman.synthetic.preview import render_humans
from get3dhuman.train import RECONSTRUCTOR_PRESETS, make_batch
from get3dhuman.train.reconstructor import split_scans


@pytest.fixture(scope="module")
def humans(tmp_path_factory):
    """Three synthetic humans written as PLY scans, with the offsets load_scan centres them by."""
    folder = tmp_path_factory.mktemp("scans")
    params = human_parameters(torch.randn(3, 64, generator=torch.Generator().manual_seed(0)))
    offsets = []
    for i, human in enumerate(params):
        mesh = ground_truth_mesh(human, 96)
        mesh.export(folder / f"human-{i}.ply")
        offsets.append(torch.tensor(mesh.bounds.mean(0), dtype=torch.float32))
    (folder / "notes.txt").write_text("not a scan")
    return folder, params, torch.stack(offsets).unsqueeze(1)


def test_inside_tests_and_surface_samples_match_the_analytic_humans(humans):
    folder, params, offsets = humans
    scans = ScanSet.from_folder(str(folder), height=None)
    assert scans.names == ["human-0.ply", "human-1.ply", "human-2.ply"]
    points = torch.rand(3, 20000, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
    sdf = human_sdf(params, points + offsets)
    clear = sdf.abs() > 0.02  # beyond the 96^3 mesh's distance from the analytic surface
    inside = scans.inside([0, 1, 2], points)
    assert torch.equal(inside[clear], sdf[clear] < 0) and (sdf < 0).any()
    surface, normals, colors = scans.surface([0, 1, 2], 3000, torch.Generator().manual_seed(2))
    assert human_sdf(params, surface + offsets).abs().max() < 0.02
    torch.testing.assert_close(normals.norm(dim=-1), torch.ones(3, 3000))
    agree = (colors - human_color(params, surface + offsets)).abs().amax(-1) < 0.05
    assert agree.float().mean() > 0.8  # interpolation across part seams and stripes aside
    samples = scans.occupancy_samples([1], 4096, generator=torch.Generator().manual_seed(3))
    assert torch.equal(samples.inside.bool(), scans.inside([1], samples.points))
    # The column grid's candidates give the crossings of testing every triangle.
    few = samples.points[0, ::128]  # 32 points: every point against every triangle is memory-hungry
    assert torch.equal(scans.inside([1], few[None])[0], line_crossings(scans.meshes[1], few) % 2 == 1)
    assert 0.2 < samples.inside.mean() < 0.8  # most samples lie near the surface, on both sides


def test_views_are_the_renders_of_the_humans(humans):
    folder, params, offsets = humans
    scans = ScanSet.from_folder(str(folder), height=None)
    # Centred scans are the humans shifted by -offset; compare masks where the shift is small.
    views = scans.views([0], torch.tensor([0.0]), 64)
    rendered = render_humans(params[:1], 64, 0.0, background=0.0)
    shift_pixels = offsets[0, 0, :2].abs().max() * 63 / 2
    assert shift_pixels < 2
    on_view, on_render = views.amax(-1) > 0, rendered.amax(-1) > 0
    intersection = (on_view & on_render).sum() / (on_view | on_render).sum()
    assert intersection > 0.8


def test_scans_are_placed_in_the_box_at_the_given_height(tmp_path):
    box = trimesh.creation.box(extents=(300.0, 900.0, 200.0))  # millimetres, off-centre
    box.apply_translation((1000.0, 50.0, -20.0))
    box.visual.vertex_colors = np.tile([255, 0, 0, 255], (len(box.vertices), 1))
    box.export(tmp_path / "box.glb")
    mesh = load_scan(str(tmp_path / "box.glb"), height=1.8)
    extent = mesh.vertices.max(0).values - mesh.vertices.min(0).values
    torch.testing.assert_close(extent, torch.tensor([0.6, 1.8, 0.4]))
    torch.testing.assert_close(mesh.vertices.max(0).values + mesh.vertices.min(0).values, torch.zeros(3))
    torch.testing.assert_close(mesh.colors, torch.tensor([1.0, 0.0, 0.0]).expand_as(mesh.colors))
    box.invert()  # wound inwards: read back outwards (a centred box's normals point away from the centre)
    box.export(tmp_path / "inverted.ply")
    inverted = load_scan(str(tmp_path / "inverted.ply"))
    for placed in (mesh, inverted):
        assert ((placed.normals * placed.vertices).sum(-1) > 0).all()
    with pytest.raises(ValueError, match=r"does not fit the box \[-1.0, 1.0\]\^3 once placed"):
        load_scan(str(tmp_path / "box.glb"), height=None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no scan"):
        ScanSet.from_folder(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="scans must be a folder of mesh files"):
        ScanSet.from_folder(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 1\)"):
        ScanSet([mesh]).inside([3], torch.zeros(1, 2, 3))
    assert ScanSet([mesh]).open_fraction(0) == 0
    corners = mesh.vertices[mesh.faces]
    front = torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])[:, 2] > 0
    lidless = TexturedMesh(mesh.vertices, mesh.faces[~front], mesh.colors, mesh.normals)  # no +z face
    assert ScanSet([lidless], max_open_fraction=1.0).open_fraction(0) > 0.9
    with pytest.raises(ValueError, match=r"the scan scan-0 is not closed: 100.0% of the lines along z"):
        ScanSet([lidless])


def test_batches_of_scans_and_training_on_them(humans, tmp_path):
    folder, _, _ = humans
    config = dataclasses.replace(RECONSTRUCTOR_PRESETS["tiny"], scans=str(folder), steps=2, eval_humans=2,
                                 checkpoint_every=2, eval_every=2)
    scans = ScanSet.from_folder(str(folder))
    assert split_scans(scans, 2) == ([0, 1], [2])
    batch = make_batch(config, 0, 32, (0, 1), scans=scans)
    again = make_batch(config, 0, 32, (0, 1), scans=scans)
    assert all(torch.equal(batch[key], again[key]) for key in batch)
    assert batch["image"].shape == (2, 3, 32, 32) and batch["image"].min() == -1
    assert batch["occupancy_points"].shape == (2, config.occupancy_points, 3)
    with pytest.raises(ValueError, match="scans must be the ScanSet of config.scans"):
        make_batch(config, 0, 32, (0, 1))
    out = tmp_path / "run"
    assert main(["train", "reconstructor", "--preset", "tiny", "--scans", str(folder), "--steps", "2",
                 "--workers", "0", "--out", str(out), "--quiet"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 2 and 0 <= records[-1]["iou"] <= 1
    assert json.loads((out / "config.json").read_text())["scans"] == str(folder)
    with pytest.raises(SystemExit, match="--scans applies to the reconstructor stage only"):
        main(["train", "generator", "--scans", str(folder), "--out", str(tmp_path / "g")])
    with pytest.raises(SystemExit, match="holds no scan"):
        main(["train", "reconstructor", "--preset", "tiny", "--scans", str(tmp_path), "--out", str(tmp_path / "r")])
