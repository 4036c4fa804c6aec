"""`python -m hf_finetune` is `hf-finetune` (also under `accelerate launch -m hf_finetune` and torchrun)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
