"""A run told to stop (SLURM's pre-timeout or preemption signal, SIGTERM, Ctrl-C) writes a complete
checkpoint at the next optimizer-step boundary and stops; the same command run again continues it.

The signal handler only takes note: a checkpoint written from inside a signal handler could catch the
optimizer or the allocator half way through a step. ``StopCallback`` (src/runtime/trainer.py) acts at ``on_step_end``, where the
Trainer's own save path runs next (``control.should_save``), so the checkpoint is the ordinary one with
its COMPLETE mark, allocator state, optimizer groups, scheduler, RNG and data position.

transformers' ``enable_jit_checkpoint`` does the same for SIGTERM alone, waits 3 s before it acts, and
saves without the Trainer's ``on_save`` callbacks (so without this project's COMPLETE mark and record
snapshot); hence this small equivalent.

Under submitit (``hydra/launcher=slurm`` or ``submitit_local``) the job process has submitit's handler
on the preemption signal (USR2 unless ``SUBMITIT_PREEMPT_SIGNAL`` says otherwise). It requeues the job
and exits at once, so ``StopRequest`` replaces it while training and calls it once the checkpoint is
written: the requeued job runs the same overrides and resumes from that checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

log = logging.getLogger(__name__)

REQUEUE_HANDLER = "checkpoint_and_try_requeue"  # submitit's handler of its preemption signal


def preempt_signal() -> signal.Signals:
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG")
    return getattr(signal, f"SIG{name}", signal.SIGUSR2)


class Stopped(Exception):
    """Training stopped on a signal after writing a checkpoint; the run continues when started again."""

    def __init__(self, signum: int, step: int, total: int, checkpoint: str | None):
        self.signum, self.step, self.total, self.checkpoint = signum, step, total, checkpoint
        name = signal.Signals(signum).name
        where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint (trainer.checkpoint=false)"
        super().__init__(f"stopped on {name} at step {step} of {total}; {where}")

    @property
    def status(self) -> str:
        return "interrupted" if self.signum == signal.SIGINT else "preempted"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process ended by this signal


class StopRequest:
    """Signal handlers that note the first stop request; a second Ctrl-C stops at once."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> StopRequest:
        for sig in {signal.SIGTERM, signal.SIGINT, preempt_signal()}:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (a launcher running jobs in threads): no handler
                return self
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
            return
        self.signum = signum
        log.warning(
            "%s received: checkpointing at the end of this optimizer step, then stopping",
            signal.Signals(signum).name,
        )

    def check(self, step: int, total: int, checkpoint: str | Path | None) -> None:
        """Raise ``Stopped`` when a stop was requested; ``checkpoint`` is where the run stands, if it
        was written."""
        if self.signum is not None:
            written = checkpoint is not None and Path(checkpoint).is_dir()
            raise Stopped(self.signum, step, total, str(checkpoint) if written else None)

    def requeue(self) -> None:
        """After the preemption signal, hand over to submitit's handler of it, which requeues the job
        and exits. A no-op outside a submitit job, and for SIGTERM and SIGINT (``scancel`` and
        ``job.cancel()`` mean stop, not come back)."""
        handler = self._previous.get(preempt_signal())
        if self.signum == preempt_signal() and getattr(handler, "__name__", None) == REQUEUE_HANDLER:
            self.restore()
            handler(preempt_signal(), None)
