"""Data-parallel training under torchrun (two CPU processes, Gloo), against one process doing
the same arithmetic: the gradient averaged over the ranks' shares of each batch."""

import dataclasses
import json
import os

import pytest
import torch
from inputs import PROCESSES, THREADS_PER_PROCESS, torch_threads, torchrun

from get3dhuman import distributed
from get3dhuman.nn import Reconstructor
from get3dhuman.train import (
    RECONSTRUCTOR_PRESETS,
    load_checkpoint,
    make_batch,
    training_loss,
)
from get3dhuman.train.prior import PRESETS as PRIOR_PRESETS
from get3dhuman.train.prior import PriorCache, induce_priors


def records(run) -> list[dict]:
    with open(run / "metrics.jsonl") as handle:
        return [json.loads(line) for line in handle]


def test_single_process_helpers():
    assert distributed.world() == (0, 1) and distributed.is_main_process()
    assert distributed.initialize("cpu") == "cpu"  # not launched by torchrun: nothing to join
    assert distributed.local_batch_size(8) == 8 and distributed.local_batch_size(8, 4) == 2
    with pytest.raises(ValueError, match="batch_size must be a multiple of the number of processes \\(3\\), got 8"):
        distributed.local_batch_size(8, 3)
    draws = {(seed, step, rank): torch.rand(4, generator=distributed.rank_generator(seed, step, rank))
             for seed in (0, 1) for step in (0, 1) for rank in (0, 1)}
    values = list(draws.values())
    assert all(not torch.equal(a, b) for i, a in enumerate(values) for b in values[i + 1:])  # independent streams
    assert torch.equal(draws[0, 1, 0], torch.rand(4, generator=distributed.rank_generator(0, 1)))  # rank 0 by default
    with pytest.raises(SystemExit) as exit_info:  # outside a process group, the interpreter ends as usual
        distributed.exit_process(3)
    assert exit_info.value.code == 3


def test_reconstructor_ranks_split_the_batch_and_average_gradients(tmp_path):
    config = dataclasses.replace(RECONSTRUCTOR_PRESETS["tiny"], steps=3, eval_every=100, checkpoint_every=100)
    run = tmp_path / "run"
    torchrun("train", "reconstructor", "--preset", "tiny", "--steps", "3", "--out", str(run), cwd=tmp_path)
    # The oracle: one process with the threads of one rank, the two ranks' shares, the mean of
    # their gradients.
    torch.manual_seed(config.seed)
    model = Reconstructor("tiny")
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    side, losses = model.config.backbone_resolution, []
    with torch_threads(THREADS_PER_PROCESS):
        for step in range(config.steps):
            gradients, step_losses = [], []
            for rank in range(PROCESSES):
                batch = make_batch(config, step, side, share=(rank, PROCESSES))
                assert len(batch["image"]) == config.batch_size // PROCESSES
                loss = training_loss(model, batch, config.color_weight)["loss"]
                gradients.append(torch.autograd.grad(loss, list(model.parameters())))
                step_losses.append(loss.item())
            for parameter, *per_rank in zip(model.parameters(), *gradients):
                parameter.grad = sum(per_rank) / PROCESSES
            optimizer.step()
            losses.append(sum(step_losses) / PROCESSES)
    trained = Reconstructor("tiny")
    trained_optimizer = torch.optim.Adam(trained.parameters(), lr=config.learning_rate)
    step, _ = load_checkpoint(str(run / "checkpoint-00000003.safetensors"), trained, trained_optimizer)
    assert step == 3
    # With the same threads a rank the arithmetic is the oracle's, bit for bit (halving a sum of
    # two gradients is exact). Adam's step is nearly scale-free, so the weights alone would
    # hardly tell a sum from a mean; its first moment does.
    for (name, a), b in zip(model.named_parameters(), trained.parameters()):
        assert torch.equal(a, b), name
    moments = [o.state_dict()["state"] for o in (optimizer, trained_optimizer)]
    for i in range(len(list(model.parameters()))):
        assert torch.equal(moments[0][i]["exp_avg"], moments[1][i]["exp_avg"]), i
    logged = records(run)  # rank 0 alone writes: one record per step, the loss averaged over ranks
    assert [r["step"] for r in logged] == [1, 2, 3]
    assert [r["loss"] for r in logged] == pytest.approx(losses, rel=1e-4)
    assert "iou" in logged[-1] and sorted(os.listdir(run)) == ["checkpoint-00000003.json",
                                                              "checkpoint-00000003.safetensors",
                                                              "config.json", "metrics.jsonl"]


def test_prior_generator_and_refiner_stages_under_torchrun(tmp_path):
    torchrun("train", "reconstructor", "--preset", "tiny", "--steps", "2", "--out", str(tmp_path / "reconstructor"),
             cwd=tmp_path)
    # Prior induction: the ranks share the shards; the cache equals one process's.
    torchrun("train", "prior", "--preset", "tiny", "--reconstructor", str(tmp_path / "reconstructor"),
             "--out", str(tmp_path / "prior"), cwd=tmp_path)
    induce_priors(PRIOR_PRESETS["tiny"], str(tmp_path / "reconstructor"), str(tmp_path / "alone"), progress=False)
    shared, alone = PriorCache(str(tmp_path / "prior")), PriorCache(str(tmp_path / "alone"))
    for key, value in alone.batch(range(len(alone))).items():
        torch.testing.assert_close(shared.batch(range(len(shared)))[key], value, rtol=1e-3, atol=1e-3, msg=key)
    # Generator (R1 on step 0, geometry renders) and refiner (BatchNorm): the run ends with the
    # ranks' weights checked equal, rank 0 logs each step once.
    torchrun("train", "generator", "--preset", "tiny", "--steps", "2", "--prior", str(tmp_path / "prior"),
             "--reconstructor", str(tmp_path / "reconstructor"), "--out", str(tmp_path / "generator"), cwd=tmp_path)
    torchrun("train", "refiner", "--preset", "tiny", "--steps", "2", "--prior", str(tmp_path / "prior"),
             "--generator", str(tmp_path / "generator"), "--out", str(tmp_path / "refiner"), cwd=tmp_path)
    for stage in ("generator", "refiner"):
        logged = records(tmp_path / stage)
        assert [r["step"] for r in logged] == [1, 2], stage
        assert all(torch.isfinite(torch.tensor(v)) for r in logged for v in r.values()), stage
    assert "r1" in records(tmp_path / "generator")[0]
