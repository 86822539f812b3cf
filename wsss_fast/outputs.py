"""The bookkeeping of a folder of per-image outputs that interrupted runs
resume (CAMs, pseudo labels, affinity labels, random-walk and DeepLab
labels): what made it, who is writing to it, and which outputs are done.

- Provenance: ``provenance.json`` records the command, the settings that
  determine the outputs and the identity of its inputs (a model file's
  SHA-256, an upstream output folder's own provenance). Resuming with other
  settings or another model is refused in one line, instead of mixing the
  outputs of two runs in one folder (a folder holding no output yet is
  simply claimed again).
- Writer lock: one process at a time writes to a folder (``fcntl.flock`` on
  ``.wsss-fast.lock``, released when the process ends, even by kill -9);
  under torchrun rank 0 holds it for the job's ranks, which split the work.
- Done outputs: a file counts as done only when it is whole (a readable zip
  directory for ``.npz``, the closing IEND chunk for ``.png``); damaged ones
  (truncated by a full disk or a careless copy) are deleted, named, and
  recomputed.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Sequence

from . import distributed
from .errors import UsageError
from .storage import write_text_atomic

PROVENANCE_FILE = "provenance.json"
LOCK_FILE = ".wsss-fast.lock"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk every PNG ends with


def file_digest(path: str | os.PathLike) -> str:
    """"sha256:<hex>" of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def input_identity(path: str | os.PathLike) -> str:
    """What an input is, by content where that is cheap to know: a file's
    digest; for a folder, the digest of its provenance.json (an earlier
    stage's outputs) or of its final.pt (a training run); else its path."""
    path = Path(path)
    for candidate in (path, path / PROVENANCE_FILE, path / "final.pt"):
        if candidate.is_file():
            return file_digest(candidate)
    return f"path:{path.resolve()}"


def is_whole(path: Path) -> bool:
    """Whether an output file is complete: ``.npz`` with a readable zip
    directory whose members lie inside the file, ``.png`` from signature to
    IEND; other kinds count as whole when they exist."""
    try:
        if path.suffix == ".npz":
            size = path.stat().st_size
            with zipfile.ZipFile(path) as z:
                return all(i.header_offset + i.compress_size <= size for i in z.infolist())
        if path.suffix == ".png":
            with open(path, "rb") as f:
                head = f.read(8)
                f.seek(max(0, path.stat().st_size - len(PNG_END)))
                return head == PNG_SIGNATURE and f.read() == PNG_END
        return path.is_file()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def _plain(value):
    """JSON-compatible copy (tuples as lists, paths as strings)."""
    return json.loads(json.dumps(value, default=str))


def _differences(before: dict, now: dict) -> list[str]:
    changes = []
    for section in ("command", "settings", "inputs"):
        old, new = before.get(section), now.get(section)
        if section == "command":
            if old != new:
                changes.append(f"command {old} -> {new}")
            continue
        old, new = old or {}, new or {}
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                changes.append(f"{key} {_short(old.get(key))} -> {_short(new.get(key))}")
    return changes


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text[:19] if text.startswith("sha256:") else text[:60]


class OutputFolder:
    """A folder of per-image outputs; use as a context manager around the
    writing (it holds the writer lock).

    Args:
        path: the folder (created).
        command: the command writing it, e.g. "make-cam".
        settings: what determines the outputs (JSON-like values), recorded
            and compared on resume.
        inputs: name -> file or folder whose identity is recorded and
            compared (:func:`input_identity`), e.g. {"model": final.pt}.
    """

    def __init__(self, path: str | os.PathLike, command: str, settings: dict,
                 inputs: dict[str, str | os.PathLike] | None = None):
        self.path = Path(path)
        self.command = command
        self.record = {"command": command, "settings": _plain(settings),
                       "inputs": {k: input_identity(v) for k, v in (inputs or {}).items()}}
        self._lock_fd: int | None = None

    def __enter__(self) -> "OutputFolder":
        self.path.mkdir(parents=True, exist_ok=True)
        if distributed.is_main():
            self._lock()
        try:
            self._claim()
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._unlock()

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): concurrent writers are not detected
            return
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UsageError(f"{self.path} is being written by {holder}; wait for it to finish "
                             "or choose another output folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"wsss-fast {self.command} (pid {os.getpid()})\n".encode(), 0)
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _claim(self) -> None:
        path = self.path / PROVENANCE_FILE
        if path.is_file():
            try:
                before = json.loads(path.read_text())
            except ValueError:
                if self._has_outputs():
                    raise UsageError(f"{path} is damaged; delete {self.path} (or just that file, if you "
                                     "know its outputs match this run) to start over") from None
                before = {}
            changes = _differences(before, self.record)
            if changes and self._has_outputs():
                raise UsageError(f"{self.path} holds the outputs of another {before.get('command')} run "
                                 f"({'; '.join(changes[:3])}); choose another output folder, or delete "
                                 f"it to start over")
            if not changes:
                return
        if distributed.is_main():  # a new folder, or one whose earlier run wrote nothing
            write_text_atomic(path, json.dumps(self.record, indent=1) + "\n")

    def _has_outputs(self) -> bool:
        return any(p.name not in (PROVENANCE_FILE, LOCK_FILE) for p in self.path.iterdir())

    def pending(self, names: Sequence[str], outputs: Callable[[str], Iterable[Path]] | None = None) -> list[str]:
        """The names whose outputs (default ``<path>/<name>.npz``) are
        missing or not whole; damaged files are deleted and named on
        stderr, so they are computed again."""
        outputs = outputs or (lambda name: [self.path / f"{name}.npz"])
        todo, damaged = [], []
        for name in names:
            paths = list(outputs(name))
            present = [p for p in paths if p.is_file()]
            broken = [p for p in present if not is_whole(p)]
            if broken:
                damaged += broken
            if broken or len(present) < len(paths):
                todo.append(name)
        if damaged:
            for p in damaged:
                p.unlink(missing_ok=True)
            shown = ", ".join(p.name for p in damaged[:5]) + (f" and {len(damaged) - 5} more"
                                                              if len(damaged) > 5 else "")
            print(f"wsss-fast {self.command}: {len(damaged)} damaged output(s) in {self.path} will be "
                  f"recomputed: {shown}", file=sys.stderr)
        return todo
