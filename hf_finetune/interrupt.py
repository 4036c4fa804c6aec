"""Stopping a run cleanly on SIGTERM or SIGINT (a cluster preemption, a `kill`, Ctrl-C).

The first signal asks the Trainer to save a checkpoint at the end of the current optimizer step and stop;
the pipeline then writes a note into the output dir and exits with 128 + the signal number. A second
signal exits at once. In a multi-process run the ranks agree on the step to stop at (one tiny all-reduce
per step), because a launcher forwards the signal to every rank but not at the same instant.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from transformers import TrainerCallback

from .errors import FinetuneError
from .outputs import NOTE_FILE, RECIPE_FILE, atomic_write_text

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(FinetuneError):
    """Training stopped on a signal after saving a checkpoint; the CLI exits with 128 + the signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopOnSignal(TrainerCallback):
    """Turns the first SIGTERM/SIGINT into "save a checkpoint after this step, then stop"."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    # -- installing ------------------------------------------------------------------------------
    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            os.write(2, f"hf-finetune: second {name}: exiting now, without a checkpoint\n".encode())
            os._exit(128 + signum)
        self.signum = signum
        os.write(
            2,
            f"hf-finetune: {name}: saving a checkpoint at the end of this step, then stopping "
            f"(send it again to exit at once)\n".encode(),
        )

    # -- the Trainer side --------------------------------------------------------------------------
    def on_step_end(self, args, state, control, **kwargs):
        if self._stop_requested(args):
            control.should_save = True
            control.should_training_stop = True
        return control

    def _stop_requested(self, args) -> bool:
        asked = self.signum is not None
        if args.world_size > 1:
            import torch
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                flag = torch.tensor([int(asked)], device=args.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                if flag.item() and not asked:  # another rank got the signal first
                    self.signum = signal.SIGTERM
                asked = bool(flag.item())
        return asked

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""


def write_note(output_dir: Path, signum: int, step: int, max_steps: int, checkpoint: Path | None) -> Path:
    """The note a stopped run leaves behind: what happened and the command that continues it."""
    name = signal.Signals(signum).name
    lines = [
        f"Training stopped by {name} at step {step} of {max_steps} "
        f"({time.strftime('%Y-%m-%d %H:%M:%S %Z')}).",
        f"Checkpoint: {checkpoint}" if checkpoint else "No checkpoint was saved.",
        "Continue the run with:",
        f"  hf-finetune train {output_dir / RECIPE_FILE} --resume",
        "(the resumed run deletes this note when it finishes).",
    ]
    return atomic_write_text(Path(output_dir) / NOTE_FILE, "\n".join(lines) + "\n")
