"""The command line refuses out-of-range numbers while parsing, naming the flag and its range."""

import argparse
import re

import pytest

from get3dhuman.cli import main
from get3dhuman.cli_arguments import _number


@pytest.mark.parametrize(("kind", "bounds", "accepted", "refused", "message"), [
    (int, {"low": 1}, ["1", "7"], ["0", "-3", "1.5", "x"], "must be an int >= 1"),
    (int, {"low": 1, "high": 360}, ["1", "360"], ["0", "361"], "must be an int in [1, 360]"),
    (float, {"low": 0, "high": 1, "high_open": True}, ["0", "0.999"], ["1", "-0.01", "nan"],
     "must be a number in [0, 1)"),
    (float, {"low": 0, "high": 1, "low_open": True}, ["1", "1e-9"], ["0", "inf"], "must be a number in (0, 1]"),
    (float, {"low": 0, "low_open": True}, ["1e-12", "5"], ["0", "-1", "nan", "inf"], "must be a number > 0"),
    (float, {}, ["0.7", "-1", "2"], ["nan", "inf", "-inf", "x"], "must be a finite number"),
])
def test_numbers_are_parsed_within_their_bounds(kind, bounds, accepted, refused, message):
    parse = _number(kind, **bounds)
    for text in accepted:
        assert parse(text) == kind(text) and type(parse(text)) is kind
    for text in refused:
        with pytest.raises(argparse.ArgumentTypeError, match=f"^{re.escape(message)}, got '?{re.escape(text)}'?$"):
            parse(text)


@pytest.mark.parametrize(("argv", "flag"), [
    (["sample", "--num", "-1", "--out", "OUT"], "--num/--count"),
    (["sample", "--num", "1", "--batch-size", "0", "--out", "OUT"], "--batch-size"),
    (["sample", "--num", "1", "--resolution", "0", "--out", "OUT"], "--resolution"),
    (["sample", "--num", "1", "--resolution", "15", "--out", "OUT"], "--resolution"),  # MIN_MESH_RESOLUTION
    (["bench", "--resolution", "3"], "--resolution"),
    (["sample", "--num", "1", "--views", "0", "--preview", "32", "--out", "OUT"], "--views"),
    (["sample", "--num", "1", "--preview", "1", "--out", "OUT"], "--preview"),
    (["sample", "--num", "1", "--seed", "-1", "--out", "OUT"], "--seed"),
    # A NaN psi used to be recorded in the directory's settings before the generator refused it.
    (["sample", "--num", "1", "--truncation", "nan", "--out", "OUT"], "--truncation"),
    (["retexture", "--shape", "0", "--textures", "1", "--truncation", "inf", "--out", "OUT"], "--truncation"),
    (["bench", "--repeat", "0"], "--repeat"),
    (["interpolate", "--from", "0", "--to", "1", "--steps", "1", "--out", "OUT"], "--steps"),
    (["retexture", "--shape", "0", "--textures", "1", "-2", "--out", "OUT"], "--textures"),
    (["invert", "--image", "IMAGE", "--learning-rate", "0", "--out", "OUT"], "--learning-rate"),
    (["synthetic", "--resolution", "1", "--out", "OUT.png"], "--resolution"),
    (["images", "--columns", "0", "--out", "OUT.png"], "--columns"),
    (["images", "--figure-height", "1.5", "--out", "OUT.png"], "--figure-height"),
    (["train", "reconstructor", "--workers", "-1", "--out", "OUT"], "--workers"),
    (["eval", "--samples", "0"], "--samples"),
])
def test_commands_refuse_out_of_range_flags_by_name(argv, flag, tmp_path, capsys):
    argv = [str(tmp_path / word) if word.startswith(("OUT", "IMAGE")) else word for word in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2  # argparse's usage error, before anything loads
    error = capsys.readouterr().err
    assert f"argument {flag}: must be " in error, error
    assert not list(tmp_path.iterdir())  # nothing written


def test_dtype_is_a_flag_of_the_commands_that_only_sample(tmp_path, capsys):
    assert main(["retexture", "--shape", "1", "--textures", "2", "3", "--out", str(tmp_path), "--resolution", "24",
                 "--dtype", "bfloat16"]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["texture-2.glb", "texture-3.glb"]
    with pytest.raises(SystemExit):  # invert optimises its latents in float32
        main(["invert", "--image", "IMAGE", "--out", str(tmp_path), "--dtype", "bfloat16"])
    assert "unrecognized arguments: --dtype bfloat16" in capsys.readouterr().err
