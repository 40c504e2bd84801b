"""Faults for the numpy FAKE backend, so tests drive the run's failure handling through the real interface.

A fake repository's manifest may carry ``faults`` (see :func:`alps_client.backends.fake.write_fake_repository`);
they act before each image is encoded and raise what the real backends raise. Counts live in files under
``faults["dir"]``, so every process of a run (Dask workers, a rerun) shares them::

    {"dir": "/tmp/faults",
     "transient": 2,                      # the first 2 encodes of all processes raise BackendUnavailableError
     "permanent_shapes": [[97, 128]],     # images of this (H, W) raise BackendRequestError, every time
     "unexpected_shapes": [[98, 128]],    # ... raise RuntimeError() with no message (a bug, in effect)
     "crash_shapes": [[99, 128]],         # ... kill their process with SIGKILL (as the kernel's OOM killer does)
     "pause_after": 2,                    # encodes after the first 2 wait for the file <dir>/release ...
     "pause_timeout_s": 600}              # ... announcing themselves as <dir>/waiting-<n>-<pid>

Faults are not part of the model's identity: a repository with faults gives the same shard fingerprint as
one without, so a test can rerun without them and resume.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from alps_client.errors import BackendRequestError, BackendUnavailableError

RELEASE = "release"


def _claim(folder: Path, prefix: str, start: int = 0, limit: int | None = None) -> int | None:
    """The lowest free number ``k`` (``start <= k < limit``) whose file ``<prefix>-<k>`` this call creates."""
    k = start
    while limit is None or k < limit:
        try:
            os.close(os.open(folder / f"{prefix}-{k}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return k
        except FileExistsError:
            k += 1
    return None


class FaultInjector:
    """Applies a fake repository's ``faults`` before each encode (see the module docstring)."""

    def __init__(self, faults: dict[str, Any]) -> None:
        self.faults = faults
        self.folder = Path(faults["dir"]) if faults.get("dir") else None
        if self.folder is None and (faults.get("transient") or "pause_after" in faults):
            raise ValueError("fake faults 'transient' and 'pause_after' are counted in files: give faults['dir']")
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.permanent = {tuple(s) for s in faults.get("permanent_shapes", [])}
        self.unexpected = {tuple(s) for s in faults.get("unexpected_shapes", [])}
        self.crash = {tuple(s) for s in faults.get("crash_shapes", [])}

    def before_encode(self, shape: tuple[int, int]) -> None:
        """Raise, wait, end this process or do nothing for the next image of ``(H, W)`` pixels.

        Raises:
            BackendRequestError: For an image shape listed as permanent.
            RuntimeError: For an image shape listed as unexpected (no message).
            BackendUnavailableError: For the first ``transient`` encodes, or a pause never released.
        """
        if shape in self.permanent:
            raise BackendRequestError(f"fake backend rejects images of {shape[0]}x{shape[1]} pixels (injected fault)")
        if shape in self.unexpected:
            raise RuntimeError()
        if shape in self.crash:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.folder is None:
            return
        times = int(self.faults.get("transient", 0))
        if times and (k := _claim(self.folder, "transient", limit=times)) is not None:
            raise BackendUnavailableError(f"fake backend unavailable (injected transient fault {k + 1} of {times})")
        if "pause_after" in self.faults:
            self._pause(int(self.faults["pause_after"]), float(self.faults.get("pause_timeout_s", 600)))

    def _pause(self, after: int, timeout_s: float) -> None:
        folder = self.folder
        if folder is None:
            return
        n = _claim(folder, "call", start=len(list(folder.glob("call-*"))))
        if n is None or n < after or (folder / RELEASE).exists():
            return
        (folder / f"waiting-{n}-{os.getpid()}").touch()
        deadline = time.monotonic() + timeout_s
        while not (folder / RELEASE).exists():  # the test creates it once it has seen (and done) what it needs
            if time.monotonic() > deadline:
                raise BackendUnavailableError(f"fake backend paused for {timeout_s:.0f} s and was never released")
            time.sleep(0.02)
