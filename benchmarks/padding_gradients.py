"""Does padding change the gradient of a batch? Dynamic padding vs padding to 128, one SST-2 batch.

The accuracy gap `padding.py` measures between the two runs could come from padding changing what a step
does (its expected gradient, or the noise dropout puts on it), or from the two runs merely drawing other
dropout masks. This takes one batch of the SST-2 recipe (its model, fresh head seeded by the recipe's seed,
bf16 autocast as the recipe trains, the model's default attention) and computes its gradient over
`--draws` dropout draws, once padded to the batch's longest example and once to `data.max_seq_length`.
It prints, for each, the norm of the mean gradient and the mean distance of one draw from it (the noise),
then the distance between the two means next to what two independent means of that many draws differ by
when nothing but the draws differs (sqrt(2/draws) x the noise). A difference well above that would say
padding changes the step itself.

With `--same-length T` the batch holds only examples of T tokens, so dynamic padding adds none and the
model's SDPA attention runs without a mask, the case length-grouped batches often hit.

    .venv/bin/python benchmarks/padding_gradients.py [--draws 40] [--batch-seed 0] [--attention eager] [--same-length 16]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# this folder, first on sys.path when run as a script, holds peft.py, which would shadow the peft package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]


def _load_record():
    """benchmarks/_record.py, by path (this folder is off sys.path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_record", HERE / "_record.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=40, help="dropout draws per padding (default 40)")
    parser.add_argument("--batch-seed", type=int, default=0, help="which training batch (default 0)")
    parser.add_argument("--attention", help="attention implementation (default: the model's, SDPA)")
    parser.add_argument(
        "--same-length",
        type=int,
        metavar="TOKENS",
        help="draw the batch from examples (of the first 5000) with exactly this many tokens: no padding",
    )
    args = parser.parse_args()

    import torch
    import yaml
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_finetune import load_recipe
    from hf_finetune.data import load_splits

    recipe = load_recipe(str(HERE.parent / "recipes" / "glue" / "sst2.yaml"))
    splits, _ = load_splits(recipe.data, [recipe.data.train_split])
    train = splits[recipe.data.train_split]
    name = recipe.model.name_or_path
    tokenizer = AutoTokenizer.from_pretrained(name)
    size = recipe.training.per_device_train_batch_size
    pool = range(len(train))
    if args.same_length:  # a batch that dynamic padding leaves unpadded: SDPA then gets no mask at all
        texts = train[:5000][recipe.task.text_column]  # the first 5000 examples hold enough of each length
        lengths = [len(ids) for ids in tokenizer(texts, truncation=True)["input_ids"]]
        pool = [i for i, n in enumerate(lengths) if n == args.same_length]
        if len(pool) < size:
            parser.error(f"--same-length {args.same_length}: only {len(pool)} such examples, need {size}")
    rows = random.Random(args.batch_seed).sample(pool, size)
    batch = train.select(rows)
    torch.manual_seed(recipe.training.seed)
    kwargs = {"attn_implementation": args.attention} if args.attention else {}
    model = AutoModelForSequenceClassification.from_pretrained(name, num_labels=2, **kwargs)
    model.train()
    # what the matmuls really ran in: the recipe's bf16 is turned off on a CPU without native bf16
    observed = {"device": "cpu"}
    first_linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))

    def hook(module, inputs, output) -> None:  # returns None: the output passes unchanged
        observed.setdefault("matmul_dtype", str(output.dtype).removeprefix("torch."))

    first_linear.register_forward_hook(hook)
    labels = torch.tensor(list(batch[recipe.task.label_column]))
    texts = list(batch[recipe.task.text_column])

    def gradients(padding: str) -> tuple[list[int], torch.Tensor]:
        encoded = tokenizer(
            texts,
            padding=padding,
            max_length=recipe.data.max_seq_length,
            truncation=True,
            return_tensors="pt",
        )
        draws = []
        for i in range(args.draws):
            torch.manual_seed(1000 + i)
            model.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.training.bf16):
                model(**encoded, labels=labels).loss.backward()
            draws.append(torch.cat([p.grad.flatten().float() for p in model.parameters()]))
        return list(encoded["input_ids"].shape), torch.stack(draws)

    record = _load_record()
    raw = yaml.safe_load((HERE.parent / "recipes" / "glue" / "sst2.yaml").read_text())
    report: dict = {
        "machine": record.machine(),
        "draws": args.draws,
        "batch_seed": args.batch_seed,
        "same_length": args.same_length,
        "attention": model.config._attn_implementation,
    }
    means = {}
    for padding in ("longest", "max_length"):
        shape, draws = gradients(padding)
        mean = draws.mean(0)
        noise = (draws - mean).norm(dim=1).mean().item()
        means[padding] = mean
        report[padding] = {"shape": shape, "mean_gradient_norm": mean.norm().item(), "noise_per_draw": noise}
        print(
            f"{padding:>10} {tuple(shape)}: mean gradient norm {mean.norm():.4f}, one draw from it {noise:.4f}"
        )
    report["precision"] = record.precision(
        record.asked_precision(raw["training"]), observed, report["machine"]
    )
    print(f"precision {record.label(report)} on {record.describe_machine(report['machine'])}")
    noise = (report["longest"]["noise_per_draw"] + report["max_length"]["noise_per_draw"]) / 2
    report["difference_of_means"] = (means["longest"] - means["max_length"]).norm().item()
    report["difference_expected_from_draws_alone"] = noise * math.sqrt(2 / args.draws)
    print(
        f"difference of the means {report['difference_of_means']:.4f}; two means of {args.draws} draws differ by "
        f"about {report['difference_expected_from_draws_alone']:.4f} when only the draws differ"
    )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
