"""The loop every training stage shares: settings check, resume, metrics log, evaluation and
checkpoints at fixed intervals, progress bar; under torchrun, rank 0 alone writes and
evaluates (see get3dhuman.distributed)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable

import torch

from get3dhuman import distributed
from get3dhuman.run_settings import read_settings, record_settings
from get3dhuman.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

SETTINGS_FILE = "config.json"  # a run directory's recorded settings


def recorded_config(config, checkpoint: str):
    """`config` (a stage's settings dataclass) with the settings recorded by the run that wrote
    the file `checkpoint` (its directory's SETTINGS_FILE; settings of the class attribute
    INTRODUCED it lacks take their value there), or `config` itself when no record is beside it
    (a checkpoint copied elsewhere): the sizes a run's models were built with."""
    path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), SETTINGS_FILE)
    if not os.path.exists(path):
        return config
    recorded = read_settings(path, getattr(config, "INTRODUCED", None))
    names = {field.name for field in dataclasses.fields(config)}
    return dataclasses.replace(config, **{k: v for k, v in recorded.items() if k in names})


def _drop_records_after(path: str, step: int) -> None:
    """Keeps the records of steps <= `step` in the metrics log at `path`: the steps a run logged
    after its newest checkpoint before it was interrupted are run, and logged, again."""
    if not os.path.exists(path):
        return
    with open(path) as handle:
        lines = handle.readlines()
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    if len(kept) != len(lines):
        with open(path + ".tmp", "w") as handle:
            handle.writelines(kept)
        os.replace(path + ".tmp", path)


def run_training(config, out_dir: str, modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                 train_step: Callable[[int], dict[str, float]], evaluate: Callable[[], dict[str, float]],
                 description: str, progress: bool = True) -> None:
    """Runs train_step(step) for step = (the newest checkpoint's step) .. config.steps - 1.

    `config` is a dataclass with `steps`, `eval_every` and `checkpoint_every`; out_dir receives
    config.json (a directory of a run with other settings is refused, but for `steps` and the
    names in the config's class attribute RESULT_NEUTRAL, which leave the results unchanged; a
    run recorded before a setting of the class attribute INTRODUCED existed matches its value there),
    metrics.jsonl (one record per step: train_step's values (averaged over the processes),
    seconds, and evaluate()'s every
    `eval_every` steps and at the end) and checkpoints of `modules` and `optimizers` every
    `checkpoint_every` steps and at the end. Under torchrun every process runs this with its own
    share of the batch; rank 0 writes, evaluates and shows progress.
    """
    main = distributed.is_main_process()
    os.makedirs(out_dir, exist_ok=True)
    record_settings(os.path.join(out_dir, SETTINGS_FILE), dataclasses.asdict(config), write=main,
                    may_change=("steps", *getattr(config, "RESULT_NEUTRAL", ())),
                    introduced=getattr(config, "INTRODUCED", None))
    start = 0
    checkpoint = latest_checkpoint(out_dir)
    if checkpoint is not None:
        start, _ = load_checkpoint(checkpoint, modules, optimizers)
    distributed.broadcast_state(modules)
    metrics_path = os.path.join(out_dir, "metrics.jsonl")
    if main:
        _drop_records_after(metrics_path, start)
    steps = range(start, config.steps)
    if progress and main:
        from tqdm import tqdm

        steps = tqdm(steps, initial=start, total=config.steps, desc=description)
    with (open(metrics_path, "a") if main else contextlib.nullcontext()) as log:
        for step in steps:
            began = time.perf_counter()
            record = {"step": step + 1, **distributed.average_metrics(train_step(step)),
                      "seconds": time.perf_counter() - began}
            done = step + 1
            if main and (done % config.eval_every == 0 or done == config.steps):
                record.update(evaluate())
            if main:
                log.write(json.dumps(record) + "\n")
                log.flush()
            if done % config.checkpoint_every == 0 or done == config.steps:
                # Buffers (BatchNorm statistics, w_avg) steer no training step; they follow rank 0,
                # which evaluates and saves, only here.
                distributed.broadcast_state(modules, buffers_only=True)
                distributed.check_in_sync(modules)
                if main:
                    save_checkpoint(out_dir, done, modules, optimizers)
