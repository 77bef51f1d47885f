"""Per-stage settings over a preset (get3dhuman.train.settings, `train --config`)."""

import json
from pathlib import Path

import pytest

from get3dhuman.cli import main
from get3dhuman.train import (
    GENERATOR_PRESETS,
    PRIOR_PRESETS,
    RECONSTRUCTOR_PRESETS,
    REFINER_PRESETS,
    STAGES,
    apply_overrides,
    read_overrides,
)

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.json"))


def test_overrides_replace_only_the_named_fields():
    preset = GENERATOR_PRESETS["small"]
    config = apply_overrides(preset, {"steps": 7, "adversarial_weight": 1, "train_decoders": True, "seed": 0})
    assert (config.steps, config.adversarial_weight, config.train_decoders, config.seed) == (7, 1.0, True, 0)
    assert isinstance(config.adversarial_weight, float)  # a JSON 1 for a float setting
    unchanged = {k: v for k, v in vars(config).items() if k not in ("steps", "adversarial_weight", "train_decoders")}
    assert unchanged == {k: v for k, v in vars(preset).items() if k in unchanged}
    assert apply_overrides(PRIOR_PRESETS["small"], {"volume_dtype": "float32"}).volume_dtype == "float32"
    assert apply_overrides(preset, {}) == preset


@pytest.mark.parametrize("overrides, message", [
    ({"lr": 1e-3}, r"'lr'; expected one of steps, batch_size"),
    ({"preset": "tiny"}, "choose it with --preset"),
    ({"steps": 2.5}, r"steps must be a whole number >= 1, got 2\.5"),
    ({"steps": 0}, "steps must be a whole number >= 1, got 0"),
    ({"batch_size": True}, "batch_size must be a whole number >= 1, got True"),
    ({"seed": -1}, "seed must be a whole number >= 0, got -1"),
    ({"learning_rate": "fast"}, "learning_rate must be a finite number >= 0, got 'fast'"),
    ({"color_weight": -1.0}, "color_weight must be a finite number >= 0"),
    ({"color_weight": float("nan")}, "color_weight must be a finite number >= 0"),
])
def test_bad_overrides_name_the_setting_and_what_was_expected(overrides, message):
    with pytest.raises(ValueError, match=message) as caught:
        apply_overrides(RECONSTRUCTOR_PRESETS["small"], overrides, "my.json")
    assert str(caught.value).startswith("my.json: ")


def test_bad_types_for_boolean_and_string_settings():
    with pytest.raises(ValueError, match="train_decoders must be true or false, got 1"):
        apply_overrides(GENERATOR_PRESETS["small"], {"train_decoders": 1})
    with pytest.raises(ValueError, match="volume_dtype must be a string, got 16"):
        apply_overrides(PRIOR_PRESETS["small"], {"volume_dtype": 16})


def test_settings_files_give_every_stage_a_section(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"generator": {"steps": 5}}))
    assert read_overrides(str(path)) == {stage: ({"steps": 5} if stage == "generator" else {}) for stage in STAGES}
    for text, message in [("{", "not valid JSON"), ("[1]", "expected a JSON object with sections"),
                          ('{"generatr": {}}', "unknown sections generatr"),
                          ('{"prior": 3}', "section 'prior' must be a JSON object")]:
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_overrides(str(path))


def test_command_line_applies_the_file_then_the_options(tmp_path):
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"reconstructor": {"steps": 50, "learning_rate": 3e-4, "checkpoint_every": 2}}))
    out = tmp_path / "run"
    assert main(["train", "reconstructor", "--preset", "tiny", "--config", str(settings), "--steps", "2",
                 "--workers", "0", "--out", str(out), "--quiet"]) == 0
    recorded = json.loads((out / "config.json").read_text())
    assert (recorded["steps"], recorded["learning_rate"], recorded["checkpoint_every"]) == (2, 3e-4, 2)
    assert recorded["batch_size"] == RECONSTRUCTOR_PRESETS["tiny"].batch_size
    assert (out / "checkpoint-00000002.safetensors").exists()
    settings.write_text(json.dumps({"reconstructor": {"learning_rate": 1e-2}}))
    with pytest.raises(SystemExit, match=r"other settings \(checkpoint_every, learning_rate\)"):  # a resumed run keeps its settings
        main(["train", "reconstructor", "--preset", "tiny", "--config", str(settings), "--out", str(out), "--quiet"])
    settings.write_text(json.dumps({"reconstructor": {"learning_rat": 1e-2}}))
    with pytest.raises(SystemExit, match=r"train reconstructor: --config .*\[reconstructor\]: .*'learning_rat'"):
        main(["train", "reconstructor", "--preset", "tiny", "--config", str(settings), "--out", str(out)])
    with pytest.raises(SystemExit, match="No such file"):
        main(["train", "reconstructor", "--preset", "tiny", "--config", str(tmp_path / "missing.json"), "--out", str(out)])


@pytest.mark.parametrize("path", CONFIGS, ids=[path.name for path in CONFIGS])
def test_the_repositorys_settings_files_apply_to_their_preset(path):
    preset = path.stem.split("-")[0]  # configs/PRESET-WHAT.json
    presets = {"reconstructor": RECONSTRUCTOR_PRESETS, "prior": PRIOR_PRESETS, "generator": GENERATOR_PRESETS,
               "refiner": REFINER_PRESETS}
    for stage, overrides in read_overrides(str(path)).items():
        config = apply_overrides(presets[stage][preset], overrides, f"{path.name} [{stage}]")
        assert all(getattr(config, name) == value for name, value in overrides.items())


def test_the_repository_has_settings_files():
    assert CONFIGS, "configs/*.json: the settings of the documented runs"
