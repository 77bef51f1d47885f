"""Claims on work items that processes writing one directory share, on one machine or many over
a shared filesystem, with no daemon: a claim is a file made by exclusive creation (O_EXCL, atomic
on POSIX and NFS), and a claim left by a killed process is taken over, once older than a
staleness limit, by renaming it away (a rename of one path succeeds once).

`Claims.take(key)` says whether this process now holds `key`; `Claims.finish(key)` marks it
done, so that nobody takes it again. A holder refreshes its claim (`Claims.refresh`) while it
works; a claim not refreshed for `stale_after` seconds and not done is free to take over, and a
slow holder whose claim was taken over learns it from `Claims.holds` before it records its
result.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Callable

STALE_AFTER = 1800.0  # default seconds after which a claim neither refreshed nor done is taken over


def _temporary_with(path: str, text: str) -> str:
    """A new file of a unique name in `path`'s folder holding `text`, with the mode of new files."""
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".partial-")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.chmod(temporary, created_file_mode())
    except BaseException:
        os.unlink(temporary)
        raise
    return temporary


def write_atomically(path: str, text: str) -> None:
    """Writes `text` to `path` through a temporary file of a unique name in its folder, renamed
    at the end: readers see the old file or the new one, and concurrent writers do not clash."""
    temporary = _temporary_with(path, text)
    try:
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def write_file_atomically(path: str, write: Callable[[str], None]) -> None:
    """Calls write(temporary) for a temporary file of a unique name beside `path` (with its
    suffix, which writers may read), then renames it to `path`, with the mode of the process's
    new files; the temporary file is removed if anything fails."""
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".partial-",
                                         suffix=os.path.splitext(path)[1])
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, created_file_mode())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def create_exclusively(path: str, text: str) -> bool:
    """Writes `text` to `path` complete or not at all if no file is there (a temporary file
    hard-linked into place, which fails where `path` exists); False when one already was."""
    temporary = _temporary_with(path, text)
    try:
        os.link(temporary, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(temporary)


def created_file_mode() -> int:
    """The mode open() gives a new file under this process's umask (0644 under 022); temporary
    files (0600) get it before they are renamed into place."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


class Claims:
    """Claims on keys (e.g. seeds) as files `KEY.claim` in `directory` (made if missing).

    Args:
        directory: shared by every process of the work.
        stale_after: seconds after which a claim neither refreshed nor done is taken over.
    """

    def __init__(self, directory: str, stale_after: float):
        if not stale_after >= 0:
            raise ValueError(f"stale_after must be a number of seconds >= 0, got {stale_after!r}")
        self.directory, self.stale_after = directory, float(stale_after)
        os.makedirs(directory, exist_ok=True)
        self.token = uuid.uuid4().hex  # this process's mark on its claims

    def _path(self, key) -> str:
        return os.path.join(self.directory, f"{key}.claim")

    def _state(self, done: bool = False) -> str:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": self.token, "done": done})

    def take(self, key) -> str | None:
        """'new' when this process now holds `key`'s claim, which was free; 'stale' when it took
        over a claim not done and not refreshed for `stale_after` seconds (a killed holder's,
        which may have finished its work without marking it); None while another holds it or
        once it is done."""
        path = self._path(key)
        if create_exclusively(path, self._state()):
            return "new"
        try:
            with open(path) as handle:
                state = json.loads(handle.read() or "{}")
            age = time.time() - os.stat(path).st_mtime
        except (FileNotFoundError, json.JSONDecodeError):  # being taken over or written right now
            return None
        if state.get("done") or age < self.stale_after:
            return None
        # Stale: move it aside. Only one process's rename of it succeeds; one that renamed a claim
        # taken over meanwhile (another token) puts it back.
        aside = f"{path}.{self.token}"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return None
        with open(aside) as handle:
            moved = json.loads(handle.read() or "{}")
        if moved.get("token") != state.get("token"):
            try:
                os.link(aside, path)
            except FileExistsError:
                pass
            os.unlink(aside)
            return None
        os.unlink(aside)
        return "stale" if create_exclusively(path, self._state()) else None

    def refresh(self, key) -> None:
        """Marks `key`'s claim, held by this process, as still being worked on."""
        os.utime(self._path(key))

    def finish(self, key) -> None:
        """Marks `key`, held by this process, done: nobody takes it again."""
        write_atomically(self._path(key), self._state(done=True))

    def release(self, key) -> None:
        """Removes `key`'s claim, done or not, so that the key is taken again (a repair redoes it)."""
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass

    def others(self) -> list[str]:
        """The keys whose claims another process holds or has done."""
        keys = []
        for name in os.listdir(self.directory):
            if name.endswith(".claim"):
                try:
                    with open(os.path.join(self.directory, name)) as handle:
                        state = json.loads(handle.read() or "{}")
                except (FileNotFoundError, json.JSONDecodeError):  # being written: another's
                    state = {}
                if state.get("token") != self.token:
                    keys.append(name[: -len(".claim")])
        return keys

    def holds(self, key) -> bool:
        """Whether this process still holds `key` (not taken over while it worked, not done)."""
        try:
            with open(self._path(key)) as handle:
                state = json.loads(handle.read() or "{}")
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        return state.get("token") == self.token and not state.get("done")
