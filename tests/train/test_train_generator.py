"""Training stages 2 (prior induction) and 3 (Generator): caches, losses, resume, errors."""

import dataclasses
import json
import os

import pytest
import torch
from inputs import resumed_equals_straight

from get3dhuman import Generator, Reconstructor, losses
from get3dhuman.cli import main
from get3dhuman.render import orbit_calibration, sphere_trace
from get3dhuman.synthetic import human_parameters, human_sdf
from get3dhuman.synthetic.preview import stand_in_images
from get3dhuman.train import RECONSTRUCTOR_PRESETS, train_reconstructor
from get3dhuman.train.generator import PRESETS as GENERATOR_PRESETS
from get3dhuman.train.generator import GeneratorTrainer, load_generator, prior_points, train_generator
from get3dhuman.train.prior import (
    IMAGE_KEYS,
    SHARD_KEYS,
    PriorCache,
    induce_priors,
    latents,
    load_reconstructor,
    prior_targets,
)
from get3dhuman.train.prior import PRESETS as PRIOR_PRESETS

PRIOR = PRIOR_PRESETS["tiny"]
TINY = GENERATOR_PRESETS["tiny"]


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """A tiny stage-1 run and its tiny prior cache."""
    root = tmp_path_factory.mktemp("stages")
    config = dataclasses.replace(RECONSTRUCTOR_PRESETS["tiny"], steps=2, checkpoint_every=2, eval_every=100)
    train_reconstructor(config, str(root / "reconstructor"), progress=False)
    induce_priors(PRIOR, str(root / "reconstructor"), str(root / "prior"), progress=False)
    return root


def test_prior_cache_holds_the_reconstructors_targets(stages):
    cache = PriorCache(str(stages / "prior"))
    assert len(cache) == PRIOR.count and len(cache.paths) == PRIOR.count // PRIOR.shard_size
    model = load_reconstructor(str(stages / "reconstructor"), "tiny")
    indices = [1, PRIOR.shard_size + 2]  # rows of two shards
    expected = prior_targets(model, torch.cat([latents(PRIOR, i, i + 1) for i in indices]), PRIOR)
    batch = cache.batch(indices)
    for key, value in expected.items():
        # Stored float16 volumes: one float16 step apart where a batch of another size rounds differently.
        volume = key in ("shape", "texture")
        torch.testing.assert_close(batch[key], value.float() if volume else value, rtol=2e-3 if volume else None,
                                   atol=3e-4 if volume else None, msg=lambda m, k=key: f"{k}: {m}")
    side, maps = model.config.backbone_resolution, PRIOR.map_resolution
    assert batch["image"].shape == batch["albedo"].shape == (2, side, side, 3)
    assert batch["normal"].shape == (2, maps, maps, 3)
    # The albedo images are the stand-in images unshaded: shading scales each colour by 0.35 .. 1.
    shaded, albedo = batch["image"].float(), batch["albedo"].float()
    assert torch.equal(albedo, (stand_in_images(batch["z"], side, lit=False) * 255).round())
    assert bool((shaded <= albedo).all()) and bool((shaded >= 0.35 * albedo - 1).all()) and (albedo - shaded).max() > 50
    # Latent j depends on j only, not on how the cache is split into shards.
    torch.testing.assert_close(latents(dataclasses.replace(PRIOR, shard_size=3), 9, 10), latents(PRIOR, 9, 10))


def test_prior_induction_resumes_and_refuses_other_settings(stages, tmp_path):
    directory = tmp_path / "prior"
    reconstructor = str(stages / "reconstructor")
    paths = induce_priors(PRIOR, reconstructor, str(directory), progress=False)
    first = PriorCache(str(directory)).batch(range(PRIOR.count))
    os.remove(paths[-1])  # an interrupted run: the last shard is missing
    with pytest.raises(ValueError, match="1 of 2 prior shards|of 2 prior shards"):
        PriorCache(str(directory))
    settings = json.loads((directory / "prior.json").read_text())
    del settings["images_only"]  # as a cache of the versions before that setting recorded it
    (directory / "prior.json").write_text(json.dumps(settings))
    induce_priors(PRIOR, reconstructor, str(directory), progress=False)
    again = PriorCache(str(directory)).batch(range(PRIOR.count))
    for key in first:
        assert torch.equal(first[key], again[key]), key
    with pytest.raises(ValueError, match="other settings .*map_resolution"):
        induce_priors(dataclasses.replace(PRIOR, map_resolution=8), reconstructor, str(directory), progress=False)
    # A cache recorded before albedo_images existed holds none, and is not completed with them.
    del settings["albedo_images"]
    (directory / "prior.json").write_text(json.dumps(settings))
    assert "albedo" not in PriorCache(str(directory)).keys
    with pytest.raises(ValueError, match="other settings .*albedo_images"):
        induce_priors(PRIOR, reconstructor, str(directory), progress=False)
    with pytest.raises(ValueError, match="reconstructor must be"):
        induce_priors(PRIOR, str(tmp_path / "nothing"), str(tmp_path / "other"), progress=False)
    with pytest.raises(ValueError, match="not a prior cache"):
        PriorCache(str(tmp_path))
    with pytest.raises(IndexError, match="outside"):
        PriorCache(str(directory)).batch([PRIOR.count])


def test_prior_points_lie_near_the_prior_surface():
    params = human_parameters(torch.randn(2, 32, generator=torch.Generator().manual_seed(0)))
    maps = sphere_trace(lambda p: human_sdf(params, p), orbit_calibration(torch.zeros(2)), 32)
    batch = {"depth": maps.depth, "mask": maps.mask}
    points = prior_points(batch, 400, 0.0, torch.Generator().manual_seed(1))
    near = human_sdf(params, points[:, :200]).abs()
    assert near.max() < 2e-3  # unprojected depth pixels are surface points (sigma 0)
    assert points[:, 200:].abs().max() <= 1 and points.shape == (2, 400, 3)


def _fixed_batch(trainer):
    """Cached latents with analytic geometry targets, and shape decoders made to cross 0.5
    along the rays (untrained ones rarely do): the depth input is amplified, mirrored if
    needed so that occupancy grows away from the camera, and the bias centred."""
    batch, generator = trainer.batch(0)
    params = human_parameters(batch["z"])
    side = batch["depth"].shape[-1]
    with torch.no_grad():
        maps = sphere_trace(lambda p: human_sdf(params, p), orbit_calibration(torch.zeros(len(params))), side)
    batch.update(depth=maps.depth, normal=maps.normal, mask=maps.mask)
    decoders = [model.mlp_shape for model in (trainer.generator, trainer.teacher, trainer.ema)]
    with torch.no_grad():
        volume = trainer.generator.shape_features(batch["z"]).volume
        plane = torch.rand(len(volume), 2000, 3) * 2 - 1

        def occupancy(z):
            return trainer.generator.query_occupancy(volume, plane * torch.tensor([1.0, 1.0, 0.0]) + torch.tensor([0.0, 0.0, z]))

        sign = 1.0 if occupancy(-0.9).mean() > occupancy(0.9).mean() else -1.0
        for decoder in decoders:
            weights = decoder.decoder_weights()
            for layer in weights.input_layers():
                weights.input_weight(layer)[:, -1] *= 20 * sign
        shift = torch.logit(occupancy(0.0).median())
        for decoder in decoders:
            decoder.filters[-1].bias -= shift
    return batch, generator


def test_each_generator_loss_goes_down_on_a_fixed_batch(stages):
    config = dataclasses.replace(TINY, geometry_every=1, learning_rate=1e-2)
    trainer = GeneratorTrainer(config, PriorCache(str(stages / "prior")), load_reconstructor(str(stages / "reconstructor"), "tiny"))
    batch, _ = _fixed_batch(trainer)
    history = []
    for _ in range(30):
        terms = trainer.generator_losses(0, batch, trainer.generate(batch), torch.Generator().manual_seed(5))
        trainer.generator_optimizer.zero_grad()
        terms["loss"].backward()
        trainer.generator_optimizer.step()
        history.append({k: v.item() for k, v in terms.items()})
    assert all(step["depth"] > 0 and step["normal"] > 0 for step in history[:5])  # renders and targets overlap
    for name in ("volume_prior", "decoded_prior", "adversarial", "depth", "normal"):
        first, last = (sum(step[name] for step in window) / 5 for window in (history[:5], history[-5:]))
        assert last < 0.95 * first, name
    with torch.no_grad():
        shape, texture = trainer.generate(batch)
    d_losses = [trainer.discriminator_step(1, batch, (shape.volume, texture))["d_loss"] for _ in range(20)]  # no R1
    assert sum(d_losses[-5:]) < 0.95 * sum(d_losses[:5])


def test_generator_training_resumes_bit_for_bit(stages, tmp_path):
    config = dataclasses.replace(TINY, steps=4, checkpoint_every=2, eval_every=4, r1_every=3)
    args = (str(stages / "prior"), str(stages / "reconstructor"))
    _, records = resumed_equals_straight(train_generator, config, tmp_path, *args)
    assert [r["step"] for r in records] == [1, 2, 3, 4] and "r1" in records[0] and "r1" in records[3]
    assert 0 <= records[-1]["prior_iou"] <= 1 and "depth" in records[0] and "depth" not in records[1]
    with pytest.raises(ValueError, match="other settings"):
        train_generator(dataclasses.replace(config, adversarial_weight=1.0), *args, str(tmp_path / "resumed"), progress=False)


def test_an_images_only_cache_holds_the_full_caches_latents_and_images(stages, tmp_path):
    images_only = dataclasses.replace(PRIOR, images_only=True)
    induce_priors(images_only, None, str(tmp_path / "images"), progress=False)
    full, cache = PriorCache(str(stages / "prior")), PriorCache(str(tmp_path / "images"))
    assert cache.keys == (*IMAGE_KEYS, "albedo") and full.keys == (*SHARD_KEYS, "albedo") and len(cache) == len(full)
    everything = range(PRIOR.count)
    for key, value in cache.batch(everything).items():
        assert torch.equal(value, full.batch(everything, (key,))[key]), key
    with pytest.raises(KeyError, match="keys: the prior cache .* holds no shape"):
        cache.batch([0], ("z", "shape"))
    reconstructor = load_reconstructor(str(stages / "reconstructor"), "tiny")
    with pytest.raises(ValueError, match="holds no shape, texture, depth, normal, mask: .*--reconstructor RUN"):
        GeneratorTrainer(TINY, cache, reconstructor)
    with pytest.raises(ValueError, match="reconstructor: a stage-1 run or checkpoint is required"):
        induce_priors(PRIOR, None, str(tmp_path / "other"), progress=False)
    with pytest.raises(ValueError, match="reconstructor: an images_only cache uses no Reconstructor"):
        induce_priors(images_only, str(stages / "reconstructor"), str(tmp_path / "other"), progress=False)
    settings = tmp_path / "images-only.json"
    settings.write_text(json.dumps({"prior": {"images_only": True}}))
    command = ["train", "prior", "--preset", "tiny", "--config", str(settings), "--quiet"]
    assert main([*command, "--out", str(tmp_path / "cli")]) == 0
    assert torch.equal(PriorCache(str(tmp_path / "cli")).batch(everything)["image"], cache.batch(everything)["image"])
    with pytest.raises(SystemExit, match="drop --reconstructor"):
        main([*command, "--out", str(tmp_path / "cli2"), "--reconstructor", str(stages / "reconstructor")])
    with pytest.raises(SystemExit, match="--reconstructor RUN is required"):
        main(["train", "prior", "--preset", "tiny", "--out", str(tmp_path / "cli3")])


def test_load_generator_takes_exported_files_of_its_preset(tmp_path):
    torch.manual_seed(1)
    generator = Generator("tiny")
    generator.save_pretrained(tmp_path / "tiny.safetensors")
    loaded = load_generator(str(tmp_path / "tiny.safetensors"), "tiny")
    assert not loaded.training
    for (name, a), b in zip(generator.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="generator: .* other sizes than the preset 'small'"):
        load_generator(str(tmp_path / "tiny.safetensors"), "small")


def test_every_stage_starts_from_exported_files(stages, tmp_path):
    run = str(stages / "reconstructor")
    exported, halved = str(tmp_path / "reconstructor.safetensors"), str(tmp_path / "reconstructor-half.safetensors")
    assert main(["export", "--reconstructor", run, "--preset", "tiny", "--out", exported]) == 0
    assert main(["export", "--reconstructor", run, "--preset", "tiny", "--out", halved, "--dtype", "float16"]) == 0
    trained = load_reconstructor(run, "tiny")
    for (name, a), b, c in zip(trained.state_dict().items(), Reconstructor.from_pretrained(exported).state_dict().values(),
                               load_reconstructor(halved, "tiny").state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a.half().float(), c), name
    with pytest.raises(ValueError, match="reconstructor: .* other sizes than the preset 'small'"):
        load_reconstructor(exported, "small")
    # The prior cache of the exported Reconstructor is the run's, bit for bit.
    assert main(["train", "prior", "--preset", "tiny", "--reconstructor", exported, "--out", str(tmp_path / "prior"),
                 "--quiet"]) == 0
    everything = range(PRIOR.count)
    ours, theirs = PriorCache(str(tmp_path / "prior")).batch(everything), PriorCache(str(stages / "prior")).batch(everything)
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key
    # A generator run starts from an exported generator: its weights, the Reconstructor's decoders.
    torch.manual_seed(3)
    start = Generator("tiny")
    start.save_pretrained(tmp_path / "start.safetensors")
    trainer = GeneratorTrainer(dataclasses.replace(TINY, init_weights=str(tmp_path / "start.safetensors")),
                               PriorCache(str(tmp_path / "prior")), Reconstructor.from_pretrained(exported))
    fresh = GeneratorTrainer(TINY, PriorCache(str(tmp_path / "prior")), Reconstructor.from_pretrained(exported))
    for name, value in trainer.generator.state_dict().items():
        decoder = name.startswith(("mlp_shape.", "mlp_texture."))
        expected = (trainer.teacher if decoder else start).state_dict()[name]
        assert torch.equal(value, expected) and torch.equal(trainer.ema.state_dict()[name], expected), name
    weights = [name for name, value in trainer.generator.named_parameters() if value.dim() > 1]
    assert sum(not torch.equal(trainer.generator.get_parameter(name), fresh.generator.get_parameter(name))
               for name in weights) > len(weights) // 2  # not the run's own initialisation
    command = ["train", "generator", "--preset", "tiny", "--prior", str(tmp_path / "prior"), "--reconstructor", exported,
               "--generator", str(tmp_path / "start.safetensors"), "--out", str(tmp_path / "generator"), "--quiet"]
    assert main([*command, "--steps", "1"]) == 0
    settings = json.loads((tmp_path / "generator" / "config.json").read_text())
    assert settings["init_weights"] == str(tmp_path / "start.safetensors")
    os.rename(tmp_path / "start.safetensors", tmp_path / "moved.safetensors")  # another machine: another path
    assert main([*command[:-5], "--generator", str(tmp_path / "moved.safetensors"), *command[-3:], "--steps", "2"]) == 0
    assert [json.loads(line)["step"] for line in open(tmp_path / "generator" / "metrics.jsonl")] == [1, 2]


def test_mismatched_stages_are_refused(stages):
    cache = PriorCache(str(stages / "prior"))
    with pytest.raises(ValueError, match="training preset 'small'"):
        GeneratorTrainer(dataclasses.replace(TINY, preset="small"), cache, load_reconstructor(str(stages / "reconstructor"), "tiny"))


def test_losses_against_hand_computed_values():
    real, fake = torch.tensor([[2.0], [-1.0]]), torch.tensor([[0.5], [-3.0]])
    softplus = lambda x: torch.log1p(torch.exp(x))
    assert losses.discriminator_adversarial_loss(real, fake).item() == pytest.approx(
        (softplus(fake).mean() + softplus(-real).mean()).item())
    assert losses.generator_adversarial_loss(fake).item() == pytest.approx(softplus(-fake).mean().item())
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]], requires_grad=True)
    logits = (x ** 2).sum(1, keepdim=True)  # gradient 2x: squared norms 20 and 40
    assert losses.r1_penalty(logits, (x,)).item() == pytest.approx(30.0)
    mask = torch.tensor([[[1.0, 0.0]]])
    assert losses.depth_loss(torch.tensor([[[0.5, 9.0]]]), torch.tensor([[[0.2, 0.0]]]), mask).item() == pytest.approx(0.3)
    normals = torch.tensor([[[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]]])
    target = torch.tensor([[[[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]]])
    assert losses.normal_loss(normals, target, mask).item() == pytest.approx(1.0)
    assert losses.decoded_prior_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0])).item() == pytest.approx(1.5 + 2.5)


def test_command_line_runs_the_stages(stages, tmp_path):
    prior = str(tmp_path / "prior")
    assert main(["train", "prior", "--preset", "tiny", "--reconstructor", str(stages / "reconstructor"), "--out", prior,
                 "--quiet"]) == 0
    assert len(PriorCache(prior)) == PRIOR.count
    assert main(["train", "generator", "--preset", "tiny", "--prior", prior, "--reconstructor",
                 str(stages / "reconstructor"), "--out", str(tmp_path / "generator"), "--steps", "1", "--quiet"]) == 0
    assert os.path.exists(tmp_path / "generator" / "checkpoint-00000001.safetensors")
    exported = str(tmp_path / "generator.safetensors")
    assert main(["export", "--generator", str(tmp_path / "generator"), "--preset", "tiny", "--out", exported]) == 0
    loaded, trained = Generator.from_pretrained(exported), load_generator(str(tmp_path / "generator"), "tiny")
    for (name, a), b in zip(trained.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    halved = str(tmp_path / "exports" / "generator-half.safetensors")  # its folder made as needed
    assert main(["export", "--generator", str(tmp_path / "generator"), "--preset", "tiny", "--out", halved,
                 "--dtype", "float16"]) == 0
    for (name, a), b in zip(trained.state_dict().items(), Generator.from_pretrained(halved).state_dict().values()):
        assert torch.equal(a.half().float(), b), name
    with pytest.raises(SystemExit):
        main(["train", "generator", "--preset", "tiny", "--out", str(tmp_path / "g2")])  # --prior is required
    with pytest.raises(SystemExit, match="--steps does not apply"):
        main(["train", "prior", "--preset", "tiny", "--reconstructor", str(stages / "reconstructor"), "--out", prior,
              "--steps", "3"])


def test_command_line_trains_all_stages_in_turn_and_resumes(tmp_path):
    steps = {"reconstructor": 6, "generator": 4, "refiner": 3}
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({**{stage: {"steps": count, "checkpoint_every": 2} for stage, count in steps.items()},
                                    "prior": {"count": 6, "shard_size": 4}}))
    command = ["train", "all", "--preset", "tiny", "--out", str(tmp_path), "--config", str(settings), "--workers", "0",
               "--quiet"]
    assert main(command) == 0
    for stage, count in steps.items():
        assert json.loads((tmp_path / stage / "config.json").read_text())["steps"] == count, stage
        assert os.path.exists(tmp_path / stage / f"checkpoint-{count:08d}.safetensors"), stage
        assert not os.path.exists(tmp_path / stage / f"checkpoint-{count + 1:08d}.safetensors"), stage
    assert len(PriorCache(str(tmp_path / "prior"))) == 6
    logged = {stage: (tmp_path / stage / "metrics.jsonl").read_text() for stage in steps}
    assert main(command) == 0  # everything is done: nothing runs again
    assert logged == {stage: (tmp_path / stage / "metrics.jsonl").read_text() for stage in logged}
    with pytest.raises(SystemExit, match="do not apply"):
        main(["train", "all", "--preset", "tiny", "--out", str(tmp_path), "--steps", "3"])
