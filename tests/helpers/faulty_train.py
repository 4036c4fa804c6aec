"""`hf-finetune` with a fault injected at one optimizer step, for tests/test_reliability.py.

    python tests/helpers/faulty_train.py FAULT STEP train RECIPE [args...]

FAULT: `none`; `kill` (SIGKILL at the end of STEP); `kill-in-save` (SIGKILL inside the checkpoint save of
STEP, after the weights, optimizer and scheduler are written and before the RNG and trainer state);
`SIGTERM` / `SIGINT` (the signal, once, at the end of STEP); `SIGTERM-twice` (two in a row).
Under a multi-process launcher, FAULT_RANK=N injects the fault into that rank only.
"""

from __future__ import annotations

import os
import signal
import sys

from transformers import Trainer, TrainerCallback

from hf_finetune import cli
from hf_finetune import trainer as finetune_trainer


def main() -> int:
    fault, step, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    if os.environ.get("FAULT_RANK", os.environ.get("RANK", "0")) != os.environ.get("RANK", "0"):
        fault = "none"

    class Fault(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step != step:
                return
            if fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif fault in ("SIGTERM", "SIGINT"):
                os.kill(os.getpid(), getattr(signal, fault))
            elif fault == "SIGTERM-twice":
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)

    if fault == "kill-in-save":
        save_rng_state = Trainer._save_rng_state

        def dying_save(self, output_dir):
            if self.state.global_step == step:
                os.kill(os.getpid(), signal.SIGKILL)
            return save_rng_state(self, output_dir)

        Trainer._save_rng_state = dying_save

    init = finetune_trainer.FinetuneTrainer.__init__

    def with_fault(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.add_callback(Fault())

    finetune_trainer.FinetuneTrainer.__init__ = with_fault
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
