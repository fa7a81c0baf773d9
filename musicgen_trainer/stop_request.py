"""Stopping a run cleanly: Ctrl-C (SIGINT) or SIGTERM while training = "stop after this step".

train.py's loop asks :meth:`StopRequest.agreed` after each step; once a stop is requested it saves
a resumable training state at that step, exactly as ``--save-every`` would (so ``--resume``
continues as if it had never stopped), and raises :class:`TrainingStopped`: train.py prints
``stopped at step N; resume with --resume`` and exits 130 (the project's Ctrl-C status). The
studio's Stop button sends the same SIGINT (app/jobs.py).

A second Ctrl-C abandons the current step (KeyboardInterrupt, as before: the last saved state
stays). With several processes (torchrun, accelerate launch) a terminal's Ctrl-C reaches all of
them, but a signal sent to one process (``kill -INT PID``) reaches one only: the flag is reduced
over the processes after each step (one tiny all-reduce), so every process stops at the same
step and none waits forever in a collective the others left. torchrun's agent answers Ctrl-C by
sending SIGTERM to its workers and kills them 30 s later: SIGTERM after a request never
abandons the step, so the state is saved when step and save take less than that (otherwise the
previous state stays: states are written atomically).
"""
from __future__ import annotations

import signal
import sys
import threading

from dataset_tools.cli import EXIT_INTERRUPTED

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingStopped(KeyboardInterrupt):
    """The run stopped on request after ``step`` steps, its state saved (exit status 130).

    A KeyboardInterrupt, so that callers that already treat Ctrl-C as "interrupted" keep doing so."""

    exit_status = EXIT_INTERRUPTED

    def __init__(self, step: int):
        super().__init__(f"stopped at step {step}; resume with --resume")
        self.step = int(step)


class StopRequest:
    """The stop flag of a run; its signal handlers live between :meth:`install` and :meth:`uninstall`."""

    def __init__(self, acc=None):
        self.acc = acc
        self.requested = False
        self._previous: dict = {}

    def install(self) -> None:
        """Handle SIGINT/SIGTERM (only in the main thread: Python delivers signals there only)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            if signum == signal.SIGINT:  # a second Ctrl-C: abandon the step
                self.uninstall()
                raise KeyboardInterrupt
            return  # SIGTERM after the request (torchrun's agent passes Ctrl-C on so): still stopping
        self.requested = True
        print("\nstopping after this step, then saving a resumable state (Ctrl-C again to abandon the step)",
              file=sys.stderr, flush=True)

    def agreed(self) -> bool:
        """Whether any process was asked to stop: the same answer on every process."""
        if self.acc is None or self.acc.num_processes == 1:
            return self.requested
        import torch
        import torch.distributed as dist
        flag = torch.tensor([int(self.requested)], device=self.acc.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.requested = bool(flag.item())
        return self.requested
