"""A track's stems on their way to disk: claimed, written, finished, then renamed all together.

    with TrackOutputs(targets, spec, in_rate, channels, force=False, cancel=cancel) as outputs:
        outputs.write({"vocals": block, ...})   # (n, channels) float32 per stem
        paths = outputs.commit()                 # {stem: final path}

- **Claims.** Each final path gets a lock file `.<name>.lock` beside it, held with `flock` while
  this run writes it. A second writer, another thread or another process, finds it held and
  fails with "already exists". The kernel drops the lock when a process dies, so a killed run
  blocks nobody; the next run that claims the path deletes the killed run's temporaries.
- **All or nothing.** Every stem is finished (second passes, encoding) before any is renamed;
  the renames then run in one go under the cancel guard and, where one fails, the ones done are
  undone (with `force`, the files they replaced are put back). A user sees every requested stem
  of this run or none of them.
- **Errors.** A full disk, a read-only folder or a file in the way is a one-line
  `SeparatorError` naming the path; everything made so far is removed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np

from separator.errors import SeparatorError
from separator.files import commit_temp, temp_beside
from separator.inference.cancel import Cancel
from separator.inference.writers import OutputSpec, StemWriter, remove_folders, writing

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: claims fall back to the existence check
    fcntl = None  # type: ignore[assignment]

# Test hook: seconds to wait after each rename, so a test can interrupt a commit midway.
COMMIT_PAUSE_ENV = "SEPARATOR_TEST_COMMIT_PAUSE"


class Claim:
    """An exclusive claim on one output path (see the module doc)."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.lock = target.parent / f".{target.name}.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        if fcntl is None:
            return
        for _ in range(20):
            with writing(self.target):
                fd = os.open(self.lock, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise SeparatorError(
                    f"{self.target}: already exists (another run is writing it now)"
                ) from None
            # The holder may have deleted the lock file just before we locked it: retry then.
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.lock).st_ino == os.fstat(fd).st_ino:
                    self._fd = fd
                    self._remove_stale_temps()
                    return
            os.close(fd)
        raise SeparatorError(f"{self.target}: cannot claim (lock file keeps changing)")

    def _remove_stale_temps(self) -> None:
        """Temporaries of this path left by a killed run (we hold the lock: none is live)."""
        prefix = f".{self.target.name}."
        for p in self.target.parent.iterdir():
            if p.name.startswith(prefix) and p.name.endswith(".part"):
                p.unlink(missing_ok=True)

    def discard_files(self) -> None:
        self.lock.unlink(missing_ok=True)

    def release(self) -> None:
        if self._fd is not None:
            self.lock.unlink(missing_ok=True)  # while still locked: see `acquire`
            os.close(self._fd)
            self._fd = None


def _check_folder(folder: Path) -> list[Path]:
    """Make `folder`; returns the folders made (innermost first). A file in the way or a folder
    we cannot write is a one-line error before any work is done."""
    made = [d for d in (folder, *folder.parents) if not d.exists()]
    existing = next(d for d in (folder, *folder.parents) if d.exists())
    if not existing.is_dir():
        raise SeparatorError(f"{existing}: not a folder (a file is in the way of {folder})")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SeparatorError(f"{existing}: cannot write (folder is not writable)")
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    return made


class TrackOutputs:
    """The stems of one track (see the module doc).

    `targets`: {stem: final path}. `normalize`: scale every stem by one gain so that the loudest
    peaks at this level (the stems still sum to the mixture, scaled). `cancel`: the batch's
    `Cancel`, under which temporaries are made and renames run.
    """

    def __init__(
        self,
        targets: dict[str, Path],
        spec: OutputSpec,
        in_rate: int,
        channels: int,
        *,
        force: bool = False,
        normalize: float | None = None,
        cancel: Cancel | None = None,
    ) -> None:
        if normalize is not None and not 0 < normalize <= 1:
            raise SeparatorError(f"`normalize` must be a peak level in (0, 1], got {normalize}")
        self.targets, self.spec, self.force, self.normalize = targets, spec, force, normalize
        self.in_rate, self.channels = in_rate, channels
        self.cancel = cancel if cancel is not None else Cancel()
        self.writers: dict[str, StemWriter] = {}
        self.claims: list[Claim] = []
        self._made: list[Path] = []

    def __enter__(self) -> TrackOutputs:
        try:
            self._open()
        except BaseException:
            self.abort()
            raise
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is not None:
            self.abort()

    def _open(self) -> None:
        with self.cancel.guarded():
            self.cancel.track(self)
        for folder in dict.fromkeys(t.parent for t in self.targets.values()):
            self._made = _check_folder(folder) + self._made
        for target in sorted(self.targets.values()):
            claim = Claim(target)
            claim.acquire()
            self.claims.append(claim)
            if not self.force and target.exists():
                raise SeparatorError(f"{target}: already exists (pass `force=True` to overwrite)")
        two_pass = self.spec.clip == "rescale" or self.normalize is not None
        for name, target in self.targets.items():
            self.writers[name] = StemWriter(
                target, self.in_rate, self.channels, self.spec, two_pass=two_pass,
                cancel=self.cancel,
            )  # fmt: skip

    def write(self, out: dict[str, np.ndarray]) -> None:
        """Append one block per stem."""
        for name, block in out.items():
            self.writers[name].write(block)

    def commit(self) -> dict[str, Path]:
        """Finish every stem, then rename them all into place; returns {stem: path}."""
        try:
            for w in self.writers.values():
                w.end()
            gain = None
            if self.normalize is not None:
                peak = max(w.peak for w in self.writers.values())
                gain = self.normalize / peak if peak > 0 else 1.0
            for w in self.writers.values():
                w.finish(gain)
            with self.cancel.guarded(), _sigint_held():
                self._rename_all()
        except BaseException:
            self.abort()
            raise
        for claim in self.claims:
            claim.release()
        self.cancel.untrack(self)
        return dict(self.targets)

    def _rename_all(self) -> None:
        pause = float(os.environ.get(COMMIT_PAUSE_ENV) or 0)
        placed: list[Path] = []
        backups: list[tuple[Path, Path]] = []
        try:
            for name, w in self.writers.items():
                target = self.targets[name]
                with writing(target):
                    if target.exists():
                        if not self.force:
                            raise SeparatorError(f"{target}: already exists (made meanwhile)")
                        backup = temp_beside(target)
                        os.replace(target, backup)
                        backups.append((backup, target))
                    commit_temp(w.tmp, target)
                placed.append(target)
                if pause:
                    time.sleep(pause)
        except BaseException:
            for target in placed:
                target.unlink(missing_ok=True)
            for backup, target in backups:
                os.replace(backup, target)
            raise
        for backup, _ in backups:
            backup.unlink(missing_ok=True)

    def discard_files(self) -> None:
        """Delete temporaries and lock files; safe from another thread (`Cancel.cancel`)."""
        for w in list(self.writers.values()):
            w.discard_files()
        for claim in self.claims:
            claim.discard_files()
        remove_folders(self._made)

    def abort(self) -> None:
        """Remove everything this track made; no final path is created."""
        for w in reversed(list(self.writers.values())):
            w.abort()
        for claim in self.claims:
            claim.release()
        remove_folders(self._made)
        self.cancel.untrack(self)


@contextlib.contextmanager
def _sigint_held():
    """In the main thread, hold a Ctrl-C that arrives during the renames until they are done
    (worker threads never see KeyboardInterrupt; their batch's `Cancel` waits instead)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = signal.signal(signal.SIGINT, lambda sig, frame: got.append(sig))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if got:
            if callable(old):
                old(signal.SIGINT, None)
            else:
                raise KeyboardInterrupt
