"""The settings record of a run directory (training runs and sample datasets): the settings a
directory was started with, checked against those of every later run in it."""

from __future__ import annotations

import json
import os

from get3dhuman.claims import create_exclusively, write_atomically


def read_settings(path: str, introduced: dict | None = None) -> dict:
    """The settings json at `path` (of `record_settings`), with the `introduced` settings (added
    in later versions) it lacks at the value that runs recorded before them had."""
    with open(path) as handle:
        return {**(introduced or {}), **json.load(handle)}


def _json_compliant(value) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        return False
    return True


def record_settings(path: str, settings: dict, may_change: tuple[str, ...] = ("steps",), write: bool = True,
                    introduced: dict | None = None) -> bool:
    """Writes `settings` as json to `path` (unless not `write`: the other processes of a
    data-parallel run only check), after checking that a file already there (an earlier run in
    the same directory) differs at most in `may_change`; raises ValueError naming the settings
    that changed. `introduced`: settings added in later versions, with the value that runs
    recorded before them had (a file lacking one matches that value). A NaN or infinite setting
    is refused (ValueError naming it) before anything is written: json cannot hold it, and NaN
    would match no later run. Returns whether this call created the file."""
    unrecordable = [f"{key}={value!r}" for key, value in settings.items() if not _json_compliant(value)]
    if unrecordable:
        raise ValueError(f"settings must be finite to be recorded, got {', '.join(unrecordable)}")
    def check_against_saved() -> None:
        saved = read_settings(path, introduced)
        changed = sorted(k for k in {*settings, *saved} if k not in may_change and saved.get(k) != settings.get(k))
        if changed:
            raise ValueError(f"{os.path.dirname(path) or '.'} holds a run with other settings ({', '.join(changed)}); "
                             "use a new directory")

    existed = os.path.exists(path)
    if existed:
        check_against_saved()
    if not write:
        return False
    text = json.dumps(settings, indent=2)
    if existed:
        write_atomically(path, text)
        return False
    if create_exclusively(path, text):
        return True
    check_against_saved()  # another process started the same directory at once
    return False
