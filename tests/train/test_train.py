"""Training stage 1 (Reconstructor): runs, learns, resumes bit for bit, rejects bad checkpoints."""

import dataclasses
import json
import os

import pytest
import torch
from inputs import resumed_equals_straight, torch_threads

from get3dhuman import distributed
from get3dhuman.nn import Reconstructor
from get3dhuman.synthetic import human_color, human_parameters, human_sdf
from get3dhuman.train import (
    RECONSTRUCTOR_PRESETS,
    latest_checkpoint,
    load_checkpoint,
    make_batch,
    train_reconstructor,
    training_loss,
)
from get3dhuman.train.reconstructor import default_workers

TINY = RECONSTRUCTOR_PRESETS["tiny"]


def test_a_few_steps_end_to_end(tmp_path):
    config = dataclasses.replace(TINY, steps=3, checkpoint_every=2, eval_every=3)
    train_reconstructor(config, str(tmp_path), progress=False)
    with open(tmp_path / "metrics.jsonl") as log:
        records = [json.loads(line) for line in log]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(r["loss"] > 0 for r in records) and 0 <= records[-1]["iou"] <= 1 and records[-1]["chamfer"] > 0
    assert latest_checkpoint(str(tmp_path)).endswith("checkpoint-00000003.safetensors")


def test_loss_goes_down_on_a_fixed_batch():
    torch.manual_seed(0)
    model = Reconstructor("tiny")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = make_batch(TINY, 0, model.config.backbone_resolution)
    losses = []
    for _ in range(25):
        loss = training_loss(model, batch, TINY.color_weight)
        optimizer.zero_grad()
        loss["loss"].backward()
        optimizer.step()
        losses.append({k: v.item() for k, v in loss.items()})
    for name in ("occupancy", "color"):
        first, last = (sum(step[name] for step in window) / 5 for window in (losses[:5], losses[-5:]))
        assert last < 0.95 * first, name  # no learning would leave the ratio near 1


def test_resume_continues_bit_for_bit(tmp_path):
    config = dataclasses.replace(TINY, steps=4, checkpoint_every=2, eval_every=100)
    resumed_equals_straight(train_reconstructor, config, tmp_path)


def test_an_interrupted_runs_records_after_its_checkpoint_are_replaced(tmp_path):
    config = dataclasses.replace(TINY, steps=2, checkpoint_every=2, eval_every=100)
    train_reconstructor(config, str(tmp_path), progress=False, workers=0)
    with open(tmp_path / "metrics.jsonl", "a") as log:  # step 3 ran, then the run was killed
        log.write(json.dumps({"step": 3, "loss": -1.0}) + "\n")
    train_reconstructor(dataclasses.replace(config, steps=4), str(tmp_path), progress=False, workers=0)
    with open(tmp_path / "metrics.jsonl") as log:
        records = [json.loads(line) for line in log]
    assert [r["step"] for r in records] == [1, 2, 3, 4] and all(r["loss"] > 0 for r in records)


def test_batch_workers_change_nothing_but_the_speed(tmp_path):
    config = dataclasses.replace(TINY, steps=3, checkpoint_every=100, eval_every=100)
    # The model gets torch's threads less one per worker: one thread in both runs, so the
    # arithmetic is the same and only the batches could differ.
    with torch_threads(1):
        alone = train_reconstructor(config, str(tmp_path / "alone"), progress=False, workers=0)
    with torch_threads(3):
        helped = train_reconstructor(config, str(tmp_path / "helped"), progress=False, workers=2)
        assert torch.get_num_threads() == 3  # restored
    for (name, a), b in zip(alone.state_dict().items(), helped.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="workers must be >= 0, got -1"):
        train_reconstructor(config, str(tmp_path / "bad"), progress=False, workers=-1)


def test_batch_workers_default_to_none_on_few_threads():
    assert [default_workers(threads) for threads in (1, 2, 3, 4, 7, 8, 16, 64)] == [0, 0, 0, 1, 1, 2, 2, 2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_batches_made_on_the_gpu_show_the_same_humans():
    config = dataclasses.replace(TINY, batch_size=3, occupancy_points=2048, color_points=1024)
    on_cpu, on_gpu = make_batch(config, 5, 64), make_batch(config, 5, 64, device="cuda")
    assert all(value.device.type == "cuda" for value in on_gpu.values())
    on_gpu = {key: value.cpu() for key, value in on_gpu.items()}
    assert torch.equal(on_gpu["calib"], on_cpu["calib"])
    assert float((on_gpu["image"] - on_cpu["image"]).abs().mean()) < 1e-3  # the same humans, seen the same way
    # The points may differ (rounding can move a candidate across the shell), not what they say
    # of the batch's humans (make_batch's draws: the rank generator of the seed and step).
    params = human_parameters(torch.randn(3, config.z_dim, generator=distributed.rank_generator(config.seed, 5, 0)))
    inside = (human_sdf(params, on_gpu["occupancy_points"]) < 0).float()
    assert float((inside == on_gpu["inside"]).float().mean()) > 0.999
    assert abs(float(on_gpu["inside"].mean() - on_cpu["inside"].mean())) < 0.03

    def color_agreement(batch):  # labels vs the colour field at the (displaced) points
        difference = (human_color(params, batch["color_points"]) - batch["colors"]).abs().max(-1).values
        return float((difference < 1e-3).float().mean())

    assert color_agreement(on_gpu) > color_agreement(on_cpu) - 0.01


def test_bad_checkpoints_and_runs_are_rejected(tmp_path):
    config = dataclasses.replace(TINY, steps=1, checkpoint_every=1, eval_every=100)
    train_reconstructor(config, str(tmp_path / "run"), progress=False)
    path = latest_checkpoint(str(tmp_path / "run"))
    with pytest.raises(ValueError, match="does not match the model"):
        load_checkpoint(path, Reconstructor("small"))
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ValueError, match="corrupted"):
        load_checkpoint(path, Reconstructor("tiny"))
    with pytest.raises(ValueError, match="other settings"):
        train_reconstructor(dataclasses.replace(config, learning_rate=0.5), str(tmp_path / "run"), progress=False)
