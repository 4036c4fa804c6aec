"""Train a recipe under `torchrun` and write each process's parameter fingerprints.

    torchrun --nproc_per_node 2 tests/helpers/ddp_fingerprints.py RECIPE.yaml FINGERPRINT_DIR

Writes FINGERPRINT_DIR/rank<R>.json: the world size, the SHA-1 of every parameter's bytes at the end
of training, and which parameters changed from the start. Replicas in sync have identical hashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from transformers import TrainerCallback

from hf_finetune import pipeline
from hf_finetune.config.load import load_recipe


def digest(tensor) -> str:
    return hashlib.sha1(tensor.detach().float().cpu().numpy().tobytes()).hexdigest()


class Fingerprints(TrainerCallback):
    def __init__(self, target: Path):
        self.target = target
        self.start: dict[str, str] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.start = {n: digest(p) for n, p in model.named_parameters()}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        end = {n: digest(p) for n, p in model.named_parameters()}
        rank = int(os.environ.get("RANK", "0"))
        self.target.mkdir(parents=True, exist_ok=True)
        (self.target / f"rank{rank}.json").write_text(
            json.dumps(
                {
                    "world_size": int(os.environ.get("WORLD_SIZE", "1")),
                    "parallel_mode": str(args.parallel_mode),
                    "hashes": end,
                    "changed": sorted(n for n in end if end[n] != self.start[n]),
                }
            )
        )


def main() -> int:
    recipe_path, target = sys.argv[1], Path(sys.argv[2])
    original = pipeline.FinetuneTrainer

    class WithFingerprints(original):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, callbacks=[Fingerprints(target)], **kwargs)

    pipeline.FinetuneTrainer = WithFingerprints
    pipeline.train(load_recipe(recipe_path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
