"""The two-branch Generator: presets, the authors' checkpoint, occupancy convention."""

import os

import numpy as np
import pytest
import torch
from inputs import official_checkpoint_layout
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from get3dhuman import Generator
from get3dhuman.cli import main
from get3dhuman.dataset import read_manifest
from get3dhuman.evaluate import EvaluationConfig, evaluate_generator
from get3dhuman.mesh import MeshingOptions
from get3dhuman.nn import PRESETS, GeneratorConfig
from get3dhuman.nn import generator as generator_module
from get3dhuman.nn.generator import DEFAULT_WEIGHTS, OFFICIAL_CALIBRATION
from get3dhuman.nn.pretrained import read_pretrained, tensors_digest
from get3dhuman.ops import reference_query_field


def tiny(seed=0):
    torch.manual_seed(seed)
    return Generator("tiny").eval()


def test_official_generator_holds_every_generator_name_of_the_checkpoint():
    expected = {k: v for k, v in official_checkpoint_layout().items() if not k.startswith("Dis_")}
    assert {k: tuple(v.shape) for k, v in Generator("official").state_dict().items()} == expected


@pytest.mark.parametrize("preset", ["tiny", "small", pytest.param("official", marks=pytest.mark.slow)])
def test_shapes_through_every_module(preset):
    torch.manual_seed(0)
    generator = Generator(preset).eval()
    c = generator.config
    z = torch.randn(2, c.z_dim)
    points = torch.rand(2, 50, 3) * 2 - 1
    with torch.no_grad():
        shape, texture = generator(z, torch.randn(2, c.z_dim))
        assert shape.map.shape == (2, c.backbone_channels, c.backbone_resolution, c.backbone_resolution)
        volume = (2, c.feature_channels, c.volume_resolution, c.volume_resolution)
        assert shape.volume.shape == volume and texture.shape == volume
        occupancy = generator.query_occupancy(shape.volume, points)
        color = generator.query_color(shape.volume, texture, points)
        assert occupancy.shape == (2, 50) and color.shape == (2, 50, 3)
        assert ((occupancy >= 0) & (occupancy <= 1)).all() and ((color >= 0) & (color <= 1)).all()
        for name, discriminator in generator.discriminators().items():
            logits = discriminator(shape.volume if name == "shape" else torch.cat([shape.volume, texture], 1))
            assert logits.shape == (2, 1)


def test_queries_equal_the_reference_decoders():
    generator = tiny()
    points = torch.rand(1, 300, 3) * 2 - 1
    calib = torch.eye(4).unsqueeze(0) * 0.9
    with torch.no_grad():
        shape, texture = generator(torch.randn(1, 32), torch.randn(1, 32))
        occupancy = generator.query_occupancy(shape.volume, points, calib)
        expected = reference_query_field(generator.mlp_shape, shape.volume, points, calib, generator.config.depth_scale)
        assert torch.allclose(occupancy, expected[:, 0], atol=1e-5)
        color = generator.query_color(shape.volume, texture, points, calib)
        volumes = torch.cat([shape.volume, texture], 1)
        expected = reference_query_field(generator.mlp_texture, volumes, points, calib, generator.config.depth_scale)
        assert torch.allclose(color, expected.transpose(1, 2), atol=1e-5)


def test_same_latents_same_outputs():
    first, second = tiny(0), tiny(1)
    second.load_state_dict(first.state_dict())
    z_shape, z_texture = torch.randn(2, 32), torch.randn(2, 32)
    points = torch.rand(2, 100, 3) * 2 - 1
    with torch.no_grad():
        a, b = (g(z_shape, z_texture) for g in (first, second))
        assert torch.equal(a[0].volume, b[0].volume) and torch.equal(a[1], b[1])
        assert torch.equal(first.query_occupancy(a[0].volume, points), second.query_occupancy(b[0].volume, points))


def test_truncation_reaches_both_branches():
    generator = tiny()
    for backbone in (generator.backbone_shape, generator.backbone_texture):
        backbone.mapping.w_avg.normal_()
    z_shape, z_texture = torch.randn(2, 32), torch.randn(2, 32)
    with torch.no_grad():
        mean_shape, mean_texture = generator(torch.randn(2, 32), torch.randn(2, 32), truncation_psi=0.0)
        shape, texture = generator(z_shape, z_texture, truncation_psi=0.0)
        assert torch.allclose(shape.volume, mean_shape.volume, atol=1e-5) and torch.allclose(texture, mean_texture, atol=1e-5)
        cut, _ = generator(z_shape, z_texture, truncation_psi=0.0, truncation_cutoff=1)
        assert not torch.allclose(cut.volume, shape.volume, atol=1e-5)


def test_bad_arguments_are_rejected():
    generator = tiny()
    with pytest.raises(ValueError, match="config"):
        Generator("huge")
    with pytest.raises(ValueError, match="z must be"):
        generator.shape_features(torch.randn(2, 31))
    with pytest.raises(ValueError, match="finite"):
        generator.shape_features(torch.full((1, 32), float("nan")))
    shape = generator.shape_features(torch.randn(2, 32))
    with pytest.raises(ValueError, match="z_texture"):
        generator.texture_features(shape, torch.randn(3, 32))
    with pytest.raises(TypeError, match="shape"):
        generator.texture_features(shape.volume, torch.randn(2, 32))
    # Latents that are not floating point, or not tensors, are named (torch would fail inside a layer).
    integers = "^z_shape must be a floating-point tensor on cpu like the network's weights, got torch.int64 on cpu$"
    with pytest.raises(ValueError, match=integers):
        generator.extract_mesh(torch.ones(1, 32, dtype=torch.int64), torch.randn(1, 32), 16)
    with pytest.raises(ValueError, match=r"^z_texture must be \[B, 32\], got list$"):
        generator.extract_mesh(torch.randn(1, 32), [0.0] * 32, 16)
    ws_shape, ws_texture = generator.mapping(torch.randn(1, 32), torch.randn(1, 32))
    float16 = "^ws_texture must be torch.float32 on cpu like the network's weights, got torch.float16 on cpu$"
    with pytest.raises(ValueError, match=float16):
        generator.synthesize(ws_shape, ws_texture.half())
    z = torch.randn(1, 32)
    for psi in ("0.7", float("nan"), True):
        with pytest.raises(ValueError, match="truncation_psi must be a finite number"):
            generator(z, z, truncation_psi=psi)
    with pytest.raises(ValueError, match="truncation_cutoff must be an int >= 0 or None, got -1"):
        generator(z, z, truncation_psi=0.5, truncation_cutoff=-1)
    # torch would seed -1 as 2^64 - 1: one human would have two seeds.
    for seed in (-1, 2**64, 1.0, "3"):
        with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\^64\), got " + repr(seed)):
            generator.latents([0, seed])
        with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\^64\), got " + repr(seed)):
            generator.sample(1, seed=seed)
    assert torch.equal(generator.latents([np.int64(5)])[0], generator.latents([5])[0])
    # A generator in another dtype draws the same latents, in its dtype, and samples with them.
    double = Generator("tiny").double()
    z_double = double.latents([5])
    assert all(z.dtype == torch.float64 for z in z_double)
    assert all(torch.equal(a, b.double()) for a, b in zip(z_double, generator.latents([5])))
    assert len(double.sample(1, seed=5, resolution=16, meshing=MeshingOptions(coarse_resolution=8))) == 1


def test_gradients_reach_every_generator_parameter():
    generator = tiny().train()
    shape, texture = generator(torch.randn(2, 32), torch.randn(2, 32))
    points = torch.rand(2, 64, 3) * 2 - 1
    loss = generator.query_occupancy(shape.volume, points).sum() + generator.query_color(shape.volume, texture, points).sum()
    loss.backward()
    missing = [name for name, p in generator.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_presets_are_consistent():
    for name, config in PRESETS.items():
        assert isinstance(config, GeneratorConfig)
        assert config.feature_channels % 128 == 0, name  # GroupNorm(32) over a quarter of the width


def _authors_checkpoint(seed=0):
    """A file saved the authors' way: every name of their module, random values, 'module.' prefix."""
    generator = torch.Generator().manual_seed(seed)
    return {f"module.{name}": torch.randn(shape, generator=generator) for name, shape in official_checkpoint_layout().items()}


@pytest.mark.slow
@pytest.mark.parametrize("file_format", ["pt", "safetensors"])
def test_from_official_checkpoint_consumes_every_tensor(tmp_path, file_format):
    state = _authors_checkpoint()
    path = tmp_path / f"official.{file_format}"
    torch.save(state, path) if file_format == "pt" else save_file(state, str(path))
    generator, discriminators = Generator.from_official_checkpoint(path, return_discriminators=True)
    assert not generator.training and torch.equal(generator.calibration, OFFICIAL_CALIBRATION)
    lower, upper = generator.world_bounds()  # NDC cube in the authors' units: x, z within +-107.8, y in [-12.8, 202.8]
    assert lower == pytest.approx([-107.79, -12.79, -107.79], abs=0.01) and upper == pytest.approx([107.79, 202.79, 107.79], abs=0.01)
    loaded = {k: v for k, v in generator.state_dict().items()}
    loaded |= {f"Dis_{n}.{k}": v for n, d in discriminators.items() for k, v in d.state_dict().items()}
    assert set(loaded) == {k[len("module."):] for k in state}
    flipped = {"mlp_shape.filters.3.weight", "mlp_shape.filters.3.bias"}
    for name, value in loaded.items():
        expected = state[f"module.{name}"]
        assert torch.equal(value, -expected if name in flipped else expected), name

    # Occupancy convention: ours is the probability of being inside, theirs of being outside.
    theirs = Generator("official").mlp_shape
    theirs.load_state_dict({k[len("module.mlp_shape."):]: v for k, v in state.items() if k.startswith("module.mlp_shape.")})
    volume, points = torch.randn(1, 256, 16, 16), torch.rand(1, 200, 3) * 2 - 1
    with torch.no_grad():
        outside = reference_query_field(theirs, volume, points, torch.eye(4).unsqueeze(0))[:, 0]
        assert torch.allclose(generator.query_occupancy(volume, points), 1 - outside, atol=1e-5)


@pytest.mark.parametrize(
    "state, match",
    [
        ({"module.bogus.weight": torch.zeros(1)}, r"unexpected \(e\.g\. bogus\.weight\)"),
        ({"module.mlp_shape.filters.0.weight": torch.zeros(3, 3, 1)}, r"shape mismatches \(e\.g\. mlp_shape\.filters\.0\.weight"),
        ({"Dis_shape.b4.out.bias": torch.zeros(1)}, r"659 missing \(e\.g\. "),  # 660 names, 1 given
    ],
)
def test_from_official_checkpoint_reports_what_does_not_fit(tmp_path, state, match):
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=match):
        Generator.from_official_checkpoint(path)


@pytest.mark.slow
def test_the_command_line_samples_and_exports_the_authors_checkpoint(tmp_path):
    path = tmp_path / "get3dhuman.pth"
    torch.save(_authors_checkpoint(1), path)
    expected = Generator.from_official_checkpoint(path)
    assert main(["export", "--checkpoint", str(path), "--out", str(tmp_path / "official.safetensors")]) == 0
    exported = Generator.from_pretrained(tmp_path / "official.safetensors")
    assert torch.equal(exported.calibration, expected.calibration)
    assert all(torch.equal(value, expected.state_dict()[name]) for name, value in exported.state_dict().items())
    out = tmp_path / "samples"
    assert main(["sample", "--checkpoint", str(path), "--num", "1", "--resolution", "16", "--out", str(out),
                 "--quiet"]) == 0
    (record,) = read_manifest(str(out))
    mesh = expected.sample(1, resolution=16)[0]
    assert (record["seed"], record["faces"]) == (0, mesh.faces.shape[0])
    with pytest.raises(SystemExit, match="give one of --weights, --generator and --checkpoint, not --weights and --checkpoint"):
        main(["sample", "--checkpoint", str(path), "--weights", str(tmp_path / "official.safetensors"), "--num", "1",
              "--out", str(out)])


def test_from_official_checkpoint_refuses_pickled_objects(tmp_path):
    path = tmp_path / "pickle.pt"
    torch.save({"module.x": torch.zeros(1), "config": object()}, path)
    with pytest.raises(ValueError, match="holds objects other than tensors, which are never unpickled"):
        Generator.from_official_checkpoint(path)
    with pytest.raises(SystemExit, match="holds objects other than tensors"):
        main(["export", "--checkpoint", str(path), "--out", str(tmp_path / "x.safetensors")])


def test_save_pretrained_round_trip(tmp_path):
    torch.manual_seed(3)
    generator = Generator("tiny").eval()
    generator.calibration.copy_(OFFICIAL_CALIBRATION)  # the camera travels with the weights
    path = tmp_path / "new" / "folder" / "generator.safetensors"  # made by save_pretrained
    generator.save_pretrained(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["generator.safetensors"]
    loaded = Generator.from_pretrained(path)
    assert loaded.config == generator.config and not loaded.training
    assert torch.equal(loaded.calibration, OFFICIAL_CALIBRATION)
    for (name, a), b in zip(generator.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    z = torch.randn(2, generator.config.z_dim, generator=torch.Generator().manual_seed(0))
    points = torch.rand(2, 50, 3) * 2 - 1
    with torch.no_grad():
        expected = generator.query_occupancy(generator.shape_features(z).volume, points)
        assert torch.equal(loaded.query_occupancy(loaded.shape_features(z).volume, points), expected)


def test_weights_whose_tensor_bytes_were_overwritten_are_named_not_sampled(tmp_path):
    path = tmp_path / "generator.safetensors"
    Generator("tiny").save_pretrained(path)
    data = bytearray(path.read_bytes())
    with safe_open(str(path), framework="pt") as handle:  # the digest rides in the metadata
        assert handle.metadata()["tensors_sha256"] == tensors_digest(load_file(str(path)))
    data[-5] ^= 0xFF  # a byte of the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"^{path} is corrupted: its tensors do not match the digest written with "
                                         "them"):
        Generator.from_pretrained(path)
    # Files written before the digest (the package's own weights among them) load unchecked.
    read_pretrained(None, "get3dhuman-generator/1", DEFAULT_WEIGHTS)
    with safe_open(DEFAULT_WEIGHTS, framework="pt") as handle:
        assert "tensors_sha256" not in handle.metadata()
    Generator.from_pretrained()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_save_pretrained_rounds_the_weights_to_a_storage_dtype(tmp_path, dtype):
    torch.manual_seed(3)
    generator = Generator("tiny").eval()
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    generator.save_pretrained(full)
    generator.save_pretrained(half, dtype)
    assert os.path.getsize(half) < 0.55 * os.path.getsize(full)
    loaded = Generator.from_pretrained(half)
    for (name, a), b in zip(generator.state_dict().items(), loaded.state_dict().values()):
        assert b.dtype == a.dtype and torch.equal(b, a.to(dtype).to(a.dtype)), name
    assert torch.equal(loaded.calibration, generator.calibration)
    with pytest.raises(ValueError, match="dtype must be one of"):
        generator.save_pretrained(half, torch.int8)


def test_from_pretrained_in_another_dtype(tmp_path):
    generator = Generator("tiny").eval()
    generator.save_pretrained(tmp_path / "tiny.safetensors")
    narrow = Generator.from_pretrained(tmp_path / "tiny.safetensors", dtype=torch.bfloat16)
    assert not narrow.training and narrow.calibration.dtype == torch.float32
    for (name, a), b in zip(generator.state_dict().items(), narrow.state_dict().values()):
        assert b.dtype == torch.bfloat16 and torch.equal(b, a.bfloat16()), name
    with pytest.raises(ValueError, match=r"^dtype must be one of torch.float32, torch.float64, torch.bfloat16, "
                       r"torch.float16, got torch.int8$"):
        Generator.from_pretrained(tmp_path / "tiny.safetensors", dtype=torch.int8)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Generator.from_pretrained(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="is a directory, not a weights file"):
        Generator.from_pretrained(tmp_path)
    (tmp_path / "text.safetensors").write_text("not tensors")
    with pytest.raises(ValueError, match="is not a safetensors file"):
        Generator.from_pretrained(tmp_path / "text.safetensors")
    with pytest.raises(ValueError, match="is not a safetensors file"):
        Generator.from_official_checkpoint(tmp_path / "text.safetensors")
    for path, problem in ((tmp_path / "missing.pt", "does not exist"), (tmp_path, "is a directory, not a checkpoint")):
        with pytest.raises(FileNotFoundError, match=problem):
            Generator.from_official_checkpoint(path)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="is not a weights file of format .get3dhuman-generator"):
        Generator.from_pretrained(tmp_path / "other.safetensors")


def test_missing_default_weights_are_reported(monkeypatch, tmp_path):
    monkeypatch.setattr(generator_module, "DEFAULT_WEIGHTS", tmp_path / "generator-small.safetensors")
    with pytest.raises(FileNotFoundError, match="ships no default weights"):
        Generator.from_pretrained()


def test_the_default_weights_generate_humans_closer_to_the_synthetic_world_than_untrained_ones():
    """The shipped weights (TRAINING.md) against an untrained `small` generator, both measured
    on the same held-out synthetic humans (get3dhuman.evaluate)."""
    assert os.path.exists(DEFAULT_WEIGHTS), "the package ships its default weights (TRAINING.md)"
    trained = Generator.from_pretrained()
    assert trained.config == PRESETS["small"]
    config = EvaluationConfig(samples=8, references=8, points=1024, resolution=64)
    metrics = evaluate_generator(trained, config)
    torch.manual_seed(0)
    untrained = evaluate_generator(Generator("small").eval(), config)
    assert metrics["empty_fraction"] == 0
    assert metrics["mmd"] < 0.25 * untrained["mmd"]
