"""`hf-finetune bench`: cells in their own processes, the three outputs, resume, failures; MFU inputs."""

from __future__ import annotations

import json

import pytest
import yaml

from hf_finetune import cli, mfu
from hf_finetune.bench import RECORD_FIELDS, load_bench, read_results

from .conftest import sentiment_rows, tiny_recipe, write_jsonl, write_sentiment_files

FAKE_PEAK = 2.0e11  # FLOP/s cached for fp32 (the tiny cells' dtype), so the expected MFU is known exactly


@pytest.fixture()
def calibrated(tmp_path, monkeypatch):
    """A private calibration cache: FAKE_PEAK for the CPU in fp32, other peaks for the other dtypes (a cell
    that picked the wrong dtype's peak would show in its MFU)."""
    monkeypatch.setenv("HF_FINETUNE_CACHE", str(tmp_path / "cache"))
    path = mfu.cache_path()
    path.parent.mkdir(parents=True)
    peaks = {d: FAKE_PEAK * (i + 1) for i, d in enumerate(mfu.DTYPES)}
    assert peaks["float32"] == FAKE_PEAK
    path.write_text(json.dumps({mfu.cache_key("cpu", d): {"flops": p} for d, p in peaks.items()}))
    return path


def _bench_file(tmp_path, model_dir, strategies, tasks=("alpha", "beta"), seeds=(1,), max_steps=4) -> str:
    entries = {}
    for i, name in enumerate(tasks):
        data_dir = tmp_path / "data" / name
        files = write_sentiment_files(data_dir)
        if i:  # a second task with different training data, so the two tasks are distinct
            files["train"] = str(write_jsonl(data_dir / "train2.jsonl", sentiment_rows(320, seed=11)))
        recipe = tiny_recipe(model_dir, files, tmp_path / "unused", training={"learning_rate": 3e-3})
        recipe_path = tmp_path / f"{name}.yaml"
        recipe_path.write_text(yaml.safe_dump(recipe))
        entries[name] = {"recipe": recipe_path.name}  # relative to the bench file
    bench = {
        "bench": {"output_dir": str(tmp_path / "bench-out"), "seeds": list(seeds), "max_steps": max_steps},
        "tasks": entries,
        "strategies": strategies,
        "overrides": {"training": {"per_device_train_batch_size": 16}},
    }
    path = tmp_path / "tiny-bench.yaml"
    path.write_text(yaml.safe_dump(bench, sort_keys=False))
    return str(path)


def test_tiny_bench_writes_the_three_outputs_and_resumes(tmp_path, tiny_model_dir, calibrated, capsys):
    strategies = {"full": {}, "frozen-emb": {"strategy": {"freeze_embeddings": True}}}
    bench_file = _bench_file(tmp_path, tiny_model_dir, strategies)
    out = tmp_path / "bench-out"

    assert cli.main(["bench", bench_file, "--no-progress"]) == 0
    assert "4 cells: 4 ran, 0 already done, 0 failed" in capsys.readouterr().out

    records = read_results(out / "results.jsonl")
    assert len(records) == 4
    assert {(r["task"], r["strategy"]) for r in records} == {
        (t, s) for t in ("alpha", "beta") for s in strategies
    }
    for r in records:
        assert set(RECORD_FIELDS) <= set(r), set(RECORD_FIELDS) - set(r)
        assert r["status"] == "ok", r
        assert r["seed"] == 1 and r["metric"] == "accuracy"
        assert 0.0 <= r["score"] <= 1.0
        assert r["train_steps"] == 4  # bench.max_steps reached the cell
        assert r["train_runtime"] > 0 and r["train_samples_per_second"] > 0
        assert r["train_tokens_per_second"] > 0 and r["peak_memory_mb"] > 100
        assert r["mfu"] == pytest.approx(r["train_model_flops"] / r["train_runtime"] / FAKE_PEAK)
        assert 0 < r["mfu"] < 1
        assert r["total_params"] >= r["trainable_params"] > 0
        # what the cell's process trained on, as it reported it: the tiny recipes train fp32 on the CPU
        assert (r["device"], r["dtype"], r["machine"]) == ("cpu", "float32", mfu.device_name("cpu"))
        assert not list((out / "cells" / r["task"] / r["strategy"] / "seed1").glob("*.safetensors"))
    by = {(r["task"], r["strategy"]): r for r in records}
    # the overlay took effect: frozen embeddings train fewer parameters, at the same model FLOPs per token
    # (embeddings are lookups, not matmuls: nothing below layer 0 needed gradients in the first place)
    full, frozen = by[("alpha", "full")], by[("alpha", "frozen-emb")]
    assert frozen["trainable_params"] < full["trainable_params"]
    assert frozen["total_params"] == full["total_params"]
    assert (
        frozen["train_model_flops"] / frozen["train_tokens"]
        == full["train_model_flops"] / full["train_tokens"]
    )

    table = (out / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| alpha") or line.startswith("| beta")]
    assert len(rows) == 4
    assert all(" ± " not in row for row in rows)  # one seed: a mean, no spread to show
    assert all(row.count("%") == 2 for row in rows)  # the trainable share and the MFU
    assert "peak RSS MB" in table and "MFU" in table
    assert f"Ran on {mfu.device_name('cpu')} (cpu, float32)." in table
    png = (out / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    # resume: nothing to do when every cell is recorded
    assert cli.main(["bench", bench_file, "--no-progress"]) == 0
    assert "4 cells: 0 ran, 4 already done" in capsys.readouterr().out
    assert len(read_results(out / "results.jsonl")) == 4

    # an interrupted bench: the last cell never got its line; a torn half line is ignored
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:40])
    assert cli.main(["bench", bench_file, "--no-progress"]) == 0
    assert "4 cells: 1 ran, 3 already done" in capsys.readouterr().out
    assert len(read_results(out / "results.jsonl")) == 4


def test_a_failing_cell_is_recorded_and_the_others_run(tmp_path, tiny_model_dir, calibrated, capsys):
    # a checkpoint whose weights file is corrupt passes every pre-flight check (config and tokenizer load)
    # and fails inside its cell, when the weights load
    import shutil

    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    strategies = {"broken": {"model": {"name_or_path": str(broken)}}, "full": {}}
    bench_file = _bench_file(tmp_path, tiny_model_dir, strategies, tasks=("alpha",), max_steps=2)
    out = tmp_path / "bench-out"

    assert cli.main(["bench", bench_file, "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "2 cells: 2 ran, 0 already done, 1 failed" in captured.out
    by = {r["strategy"]: r for r in read_results(out / "results.jsonl")}
    assert by["broken"]["status"] == "failed"
    assert by["broken"]["error"] and "safetensors" in (out / "cells/alpha/broken/seed1.log").read_text()
    assert by["broken"]["score"] is None
    assert by["full"]["status"] == "ok" and by["full"]["score"] is not None
    table = (out / "results.md").read_text()
    assert "## Failed cells" in table and "alpha/broken/seed1" in table
    assert "failed" in next(line for line in table.splitlines() if line.startswith("| alpha | broken"))

    # a re-run retries the failed cell only
    assert cli.main(["bench", bench_file, "--no-progress"]) == 1
    assert "2 cells: 1 ran, 1 already done, 1 failed" in capsys.readouterr().out


def test_a_cell_that_runs_out_of_time_is_stopped_and_recorded(tmp_path, tiny_model_dir, calibrated, capsys):
    bench_file = _bench_file(tmp_path, tiny_model_dir, {"full": {}}, tasks=("alpha",))
    assert cli.main(["bench", bench_file, "bench.cell_timeout_s=0.5", "--no-progress"]) == 1
    (record,) = read_results(tmp_path / "bench-out" / "results.jsonl")
    assert record["status"] == "failed" and record["error"] == "stopped after bench.cell_timeout_s=0.5s"
    assert not (tmp_path / "bench-out" / "cells" / "alpha" / "full" / "seed1" / "all_results.json").exists()


def _wait_until(condition, what: str, timeout: float = 120.0) -> None:
    """Poll ``condition`` until it holds; fail only after ``timeout`` seconds (a generous bound for a busy
    machine, not a speed requirement)."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.1)


def _running(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stopping_a_cell_stops_the_processes_it_started(tmp_path):
    """Stopping a cell (its timeout, or Ctrl-C / SIGTERM of the bench) stops its whole process group:
    the workers it started go with it."""
    import sys

    from hf_finetune.launch import run_child, start_child, stop_group

    pids = tmp_path / "pids"
    child = (
        "import os, subprocess, sys, time\n"
        "worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pids)!r} + '.tmp', 'w').write(f'{{os.getpid()}} {{worker.pid}}')\n"
        f"os.replace({str(pids)!r} + '.tmp', {str(pids)!r})\n"
        "time.sleep(600)\n"
    )
    with (tmp_path / "log").open("w") as log:
        proc = start_child([sys.executable, "-c", child], log)
        _wait_until(pids.exists, "the child writing its pid and its worker's")
        stop_group(proc)
    for pid in map(int, pids.read_text().split()):
        # the worker is re-parented to init, which reaps it shortly
        _wait_until(lambda pid=pid: not _running(pid), f"process {pid} ending")

    # a timeout stops the child the same way: run_child returns None (no exit code) instead of waiting
    with (tmp_path / "log").open("w") as log:
        assert run_child([sys.executable, "-c", "import time; time.sleep(600)"], log, timeout=0.5) is None


def test_impossible_strategies_and_missing_data_fail_before_any_cell_runs(tmp_path, tiny_model_dir, capsys):
    # the tiny model has 2 layers: freezing 5 is caught on the weightless model, before the first cell
    bench_file = _bench_file(
        tmp_path, tiny_model_dir, {"full": {}, "broken": {"strategy": {"freeze_layers": 5}}}, tasks=("alpha",)
    )
    assert cli.main(["bench", bench_file, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cell alpha/broken/seed1: `strategy.freeze_layers`" in err and "2 layers" in err
    assert not (tmp_path / "bench-out" / "results.jsonl").exists()

    missing = tmp_path / "nowhere.jsonl"
    assert cli.main(["bench", bench_file, f"data.files.train={missing}", "--no-progress"]) == 2
    assert "nowhere.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "bench-out" / "results.jsonl").exists()


def test_changed_settings_rerun_a_recorded_cell(tmp_path, tiny_model_dir, calibrated):
    bench_file = _bench_file(tmp_path, tiny_model_dir, {"full": {}}, tasks=("alpha",))
    bench = load_bench(bench_file)
    (bench.output_dir).mkdir(parents=True)
    (cell,) = bench.cells()
    record = {"task": "alpha", "strategy": "full", "seed": 1, "status": "ok", "fingerprint": cell.fingerprint}
    (bench.output_dir / "results.jsonl").write_text(json.dumps(record) + "\n")
    from hf_finetune.bench import run_bench

    assert run_bench(bench, progress=False)["ran"] == 0
    changed = load_bench(bench_file, ["training.learning_rate=1e-3"])
    assert [c.fingerprint for c in changed.cells()] != [cell.fingerprint]
    here = cell.fingerprint
    with pytest.MonkeyPatch.context() as patch:  # the same settings on another machine: not done there
        patch.setattr(mfu, "device_name", lambda device: "another CPU")
        assert [c.fingerprint for c in bench.cells()] != [here]
    assert [c.fingerprint for c in bench.cells()] == [here]
    summary = run_bench(changed, progress=True)  # the changed cell runs again, under a progress bar
    assert summary["ran"] == 1 and summary["failed"] == 0
    records = read_results(bench.output_dir / "results.jsonl")
    assert len(records) == 2 and records[-1]["status"] == "ok"
    table = (bench.output_dir / "results.md").read_text()
    (row,) = [line for line in table.splitlines() if line.startswith("| alpha | full |")]
    assert row.split(" | ")[3] == f"{records[-1]['score']:.4f}"  # the newest record is the one reported
    assert "Not shown" not in table  # the older record of the same cell is replaced, not hidden


def test_the_report_shows_this_benchs_cells_at_their_current_settings(tmp_path, tiny_model_dir):
    """Mean and sample std over the seeds; records of other settings (an earlier quick run into the same
    directory) or of cells the bench no longer has stay in results.jsonl but out of the table."""
    from hf_finetune.bench import write_report

    bench_file = _bench_file(tmp_path, tiny_model_dir, {"full": {}}, tasks=("alpha",), seeds=(1, 2, 3))
    bench = load_bench(bench_file)
    cells = bench.cells()
    fingerprints = {c.key: c.fingerprint for c in cells}
    bench.output_dir.mkdir(parents=True)

    def record(seed, score, fingerprint, task="alpha", runtime=10.0):
        return {
            **dict.fromkeys(RECORD_FIELDS),
            "task": task,
            "strategy": "full",
            "seed": seed,
            "metric": "accuracy",
            "score": score,
            "train_runtime": runtime,
            "status": "ok",
            "fingerprint": fingerprint,
        }

    lines = [
        record(1, 0.10, "an-older-setting", runtime=1.0),  # replaced by the newer record below
        record(1, 0.80, fingerprints[("alpha", "full", 1)]),
        record(2, 0.90, fingerprints[("alpha", "full", 2)], runtime=20.0),
        record(3, 0.99, "a-quick-run"),  # seed 3 last ran at other settings: not this bench's result
        record(1, 0.50, "x", task="gone"),  # a task no longer in the bench file
    ]
    (bench.output_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    write_report(bench, fingerprints)
    table = (bench.output_dir / "results.md").read_text()
    (row,) = [line for line in table.splitlines() if line.startswith("| alpha")]
    assert "| 0.8500 ± 0.0707 | 2 |" in row  # mean and sample std of 0.80 and 0.90
    assert "| 15.0 |" in row  # mean train time
    assert "Not shown: 2 record(s)" in table and "| gone" not in table
    assert (bench.output_dir / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert "CUDA peak MB" not in table  # CPU cells: no GPU column

    from hf_finetune.bench import format_markdown

    on_gpu = [{**r, "cuda_peak_memory_mb": 1234.0} for r in lines[1:3]]
    gpu_table = format_markdown(bench, on_gpu)
    assert "| peak RSS MB | CUDA peak MB | trainable | MFU |" in gpu_table
    (gpu_row,) = [line for line in gpu_table.splitlines() if line.startswith("| alpha")]
    assert "| 1,234 |" in gpu_row and gpu_row.count("|") == gpu_table.splitlines()[4].count("|")


def test_calibrate_from_the_command_line_caches_a_peak_per_dtype(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_FINETUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(mfu, "measure_peak_flops", _quick_measure)
    assert cli.main(["bench", "--calibrate"]) == 0
    out = capsys.readouterr().out
    for dtype in mfu.DTYPES:
        assert f") {dtype}: " in out and "TFLOP/s" in out
        assert mfu.read_cache()[mfu.cache_key("cpu", dtype)]["flops"] > 0


def test_bench_overrides_and_overlays_reach_the_cell_recipes(tmp_path, tiny_model_dir):
    strategies = {
        "lora": {"peft": {"method": "lora", "r": 4, "target_modules": ["query", "value"]}},
        "gradual": {"strategy": {"gradual_unfreezing": {"every": 2, "unit": "steps"}}},
    }
    bench_file = _bench_file(tmp_path, tiny_model_dir, strategies, tasks=("alpha",), seeds=(1, 2))
    bench = load_bench(bench_file, ["bench.seeds=[3]", "bench.max_steps=7", "training.weight_decay=0.05"])
    from hf_finetune.config.load import load_recipe

    cells = bench.cells()
    assert [(c.strategy, c.seed) for c in cells] == [("lora", 3), ("gradual", 3)]
    lora = load_recipe(cells[0].recipe_path, cells[0].overrides)
    assert lora.peft.method == "lora" and lora.peft.r == 4 and lora.peft.target_modules == ["query", "value"]
    assert lora.training.max_steps == 7 and lora.training.seed == 3 and lora.training.weight_decay == 0.05
    assert lora.training.per_device_train_batch_size == 16  # the bench file's common overrides
    assert str(lora.training.output_dir).endswith("cells/alpha/lora/seed3")
    gradual = load_recipe(cells[1].recipe_path, cells[1].overrides)
    assert (
        gradual.strategy.gradual_unfreezing.every == 2 and gradual.strategy.gradual_unfreezing.unit == "steps"
    )


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ({"benchh": {}}, "unknown key 'benchh'"),
        ({"bench": {"seeds": []}}, "`bench.seeds`: must be a non-empty list"),
        ({"bench": {"seed": [1]}}, "`bench.seed`: unknown field (did you mean: seeds?)"),
        ({"bench": {"max_steps": 0}}, "`bench.max_steps`: must be a positive integer"),
        ({"bench": {"max_steps": "many"}}, "`bench.max_steps`: expected an integer or null, got 'many'"),
        ({"strategies": {"x": {"stratgy": {"freeze_embeddings": True}}}}, "unknown recipe section 'stratgy'"),
        (
            {"strategies": {"x": {"strategy": {"freeze_layer": 2}}}},
            "cell alpha/x/seed1: `strategy.freeze_layer`: unknown field",
        ),
        ({"tasks": {"alpha": {"recipe": "nope.yaml"}}}, "tasks.alpha: recipe 'nope.yaml' not found"),
        ({"tasks": {"a/b": "x.yaml"}}, "names become directories"),
    ],
)
def test_bad_bench_files_fail_before_anything_runs(tmp_path, tiny_model_dir, capsys, edit, expected):
    bench_file = _bench_file(tmp_path, tiny_model_dir, {"full": {}}, tasks=("alpha",))
    raw = yaml.safe_load(open(bench_file))
    for key, value in edit.items():
        if isinstance(raw.get(key), dict) and key != "tasks":
            raw[key].update(value)
        else:
            raw[key] = value
    open(bench_file, "w").write(yaml.safe_dump(raw))
    assert cli.main(["bench", bench_file, "--no-progress"]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "bench-out" / "results.jsonl").exists()


def test_flops_per_token_follow_what_trains(tiny_model_dir):
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert mfu.training_flops_per_token(model)["total"] == 6 * linear  # full fine-tuning: the 6N rule

    for p in model.bert.embeddings.parameters():
        p.requires_grad_(False)
    assert mfu.training_flops_per_token(model)["total"] == 6 * linear  # embeddings are lookups, no matmul

    for p in model.bert.encoder.layer[0].parameters():
        p.requires_grad_(False)
    layer0 = sum(
        m.weight.numel() for m in model.bert.encoder.layer[0].modules() if isinstance(m, torch.nn.Linear)
    )
    # layer 0 gets neither weight nor input gradients: 2 FLOPs/weight forward only
    assert mfu.training_flops_per_token(model)["total"] == 6 * linear - 4 * layer0

    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.classifier.parameters():
        p.requires_grad_(True)
    head = model.classifier.weight.numel()
    assert mfu.training_flops_per_token(model) == {
        "forward": 2 * linear,
        "backward": 4 * head,
        "total": 2 * linear + 4 * head,
    }


def test_calibration_measures_and_caches_a_plausible_peak(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_FINETUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(mfu, "measure_peak_flops", _quick_measure)
    assert mfu.read_cache() == {}
    peak = mfu.peak_flops("cpu", "float32")
    assert 1e8 < peak < 1e14  # a real matmul rate on a CPU
    assert mfu.read_cache()[mfu.cache_key("cpu", "float32")]["flops"] == peak
    monkeypatch.setattr(mfu, "measure_peak_flops", lambda *a, **k: pytest.fail("measured again"))
    assert mfu.peak_flops("cpu", "float32") == peak  # cached


_real_measure = mfu.measure_peak_flops


def _quick_measure(device, dtype, min_seconds=0.05):
    return _real_measure(device, dtype, min_seconds=min_seconds, sizes=(256, 512))


def test_lora_flops_count_the_adapters_and_the_trained_head_once(tiny_model_dir):
    """peft keeps the original head beside the trained copy (modules_to_save); only the copy runs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]))
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    heads = [m for m in linears if m.weight.shape[0] == 2]
    assert len(heads) == 2  # the original classifier and the trained copy
    every_linear = sum(m.weight.numel() for m in linears)
    trainable = sum(m.weight.numel() for m in linears if m.weight.requires_grad)
    flops = mfu.training_flops_per_token(model)
    assert flops["forward"] == 2 * (every_linear - heads[0].weight.numel())
    assert trainable < every_linear // 10 and flops["backward"] > 2 * trainable  # adapters + input grads


def test_the_headline_metric_follows_the_task_and_its_eval_splits():
    from hf_finetune.tasks import get_task
    from hf_finetune.tasks.base import metric_key

    def default_metric(recipe, results):
        return get_task(recipe.task.name).task_class.headline_metric(recipe, results)

    from hf_finetune.catalog import resolve as resolve_recipe_path
    from hf_finetune.config.load import load_recipe

    sst2, mrpc, mnli = (load_recipe(resolve_recipe_path(f"glue/{name}")) for name in ("sst2", "mrpc", "mnli"))
    assert metric_key(sst2, "accuracy") == metric_key(sst2, "eval_accuracy") == "eval_accuracy"
    assert default_metric(mrpc, {"eval_f1": 0.8, "eval_accuracy": 0.7}) == "f1"
    # MNLI evaluates matched and mismatched: the headline is the first split's
    assert mnli.data.eval_splits[0] == "validation_matched" and len(mnli.data.eval_splits) == 2
    assert metric_key(mnli, "accuracy") == "eval_validation_matched_accuracy"
    assert metric_key(mnli, "validation_mismatched_accuracy") == "eval_validation_mismatched_accuracy"
    assert default_metric(mnli, {"eval_validation_matched_accuracy": 0.8}) == "accuracy"


@pytest.mark.parametrize(
    ("results", "status", "error"),
    [
        ({"eval_validation_matched_accuracy": 0.71}, "ok", None),
        ({"eval_validation_matched_pearson": float("nan")}, "failed", "validation_matched_pearson is nan"),
        ({"eval_loss": 0.5}, "failed", "eval_validation_matched_accuracy is not among the eval results"),
    ],
)
def test_a_cells_score_is_read_from_its_results(tmp_path, results, status, error):
    """The score key on a multi-split task; a NaN score (constant predictions) or a missing one fails the cell."""
    from hf_finetune.bench import Cell, run_cell
    from hf_finetune.catalog import resolve as resolve_recipe_path
    from hf_finetune.config.load import load_recipe
    from hf_finetune.launch import Launched

    recipe = load_recipe(resolve_recipe_path("glue/mnli"))
    metric = "pearson" if any("pearson" in k for k in results) else None
    cell = Cell("mnli", "full", 1, "glue/mnli", [], metric, tmp_path / "cell", recipe=recipe)

    def fake_launch(recipe_path, overrides, run_dir, timeout=None, env=None):
        run_dir.mkdir()  # as training would
        (run_dir / "all_results.json").write_text(json.dumps({**results, "train_runtime": 3.0}))
        return Launched(0, 3.5, tmp_path / "cell.log", {"max_rss_mb": 512.0})

    fake_bench = type("B", (), {"cell_timeout_s": None, "keep_models": False})()
    record = run_cell(cell, fake_bench, peak=None, launcher=fake_launch)
    assert record["status"] == status
    if status == "ok":
        assert record["metric"] == "validation_matched_accuracy" and record["score"] == 0.71
        assert record["peak_memory_mb"] == 512.0 and record["wall_s"] == 3.5
    else:
        assert record["score"] is None and error in record["error"], record["error"]
    json.dumps(record, allow_nan=False)  # the record stays strict JSON


def test_a_cells_record_carries_the_precision_and_machine_its_process_trained_on(tmp_path):
    """The cell's recipe asked for bf16, its process reported fp32 (a CPU without native bf16 turns it off):
    the record says fp32, on the machine the process named, and its MFU is against the fp32 peak."""
    from hf_finetune.bench import Cell, run_cell
    from hf_finetune.catalog import resolve as resolve_recipe_path
    from hf_finetune.config.load import load_recipe
    from hf_finetune.launch import Launched

    recipe = load_recipe(resolve_recipe_path("glue/sst2"))
    cell = Cell("sst2", "full", 1, "glue/sst2", [], None, tmp_path / "cell", recipe=recipe, dtype="bfloat16")
    reported = {"max_rss_mb": 100.0, "device": "cpu", "dtype": "float32", "machine": "Some CPU"}

    def fake_launch(recipe_path, overrides, run_dir, timeout=None, env=None):
        run_dir.mkdir()
        results = {"eval_accuracy": 0.8, "train_runtime": 2.0, "train_model_flops": 4.0e11}
        (run_dir / "all_results.json").write_text(json.dumps(results))
        return Launched(0, 2.5, tmp_path / "cell.log", reported)

    fake_bench = type("B", (), {"cell_timeout_s": None, "keep_models": False})()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            mfu, "peak_flops", lambda device, dtype, measure_if_missing=True: {"float32": 1e12}[dtype]
        )
        record = run_cell(cell, fake_bench, peak=5e12, launcher=fake_launch)
    assert record["status"] == "ok"
    assert (record["device"], record["dtype"], record["machine"]) == ("cpu", "float32", "Some CPU")
    assert record["peak_flops"] == 1e12 and record["mfu"] == pytest.approx(4.0e11 / 2.0 / 1e12)


def test_bench_workers_run_cells_at_once_with_the_same_results_files(
    tmp_path, tiny_model_dir, calibrated, capsys
):
    strategies = {"full": {}, "frozen-emb": {"strategy": {"freeze_embeddings": True}}}
    bench_file = _bench_file(tmp_path, tiny_model_dir, strategies)
    out = tmp_path / "bench-out"
    assert cli.main(["bench", bench_file, "--no-progress", "--workers", "2"]) == 0
    assert "4 cells: 4 ran, 0 already done, 0 failed" in capsys.readouterr().out
    records = read_results(out / "results.jsonl")
    assert {(r["task"], r["strategy"], r["status"]) for r in records} == {
        (t, s, "ok") for t in ("alpha", "beta") for s in strategies
    }
    assert all(r["train_steps"] == 4 and 0.0 <= r["score"] <= 1.0 for r in records)
    assert len([line for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")]) == 5
    # a rerun finds every cell done, as after a sequential bench
    assert cli.main(["bench", bench_file, "--no-progress", "--workers", "2"]) == 0
    assert "4 cells: 0 ran, 4 already done" in capsys.readouterr().out


def test_bench_workers_overlap_and_each_gets_its_device_and_share_of_the_cores(tmp_path, monkeypatch):
    import threading
    import time
    from types import SimpleNamespace

    from hf_finetune.bench.run import _run_parallel
    from hf_finetune.launch import Launched

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    seen, running, most = [], [0], [0]
    lock = threading.Lock()

    def fake_launch(recipe_path, overrides, run_dir, timeout=None, env=None):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            seen.append((env["CUDA_VISIBLE_DEVICES"], env["OMP_NUM_THREADS"]))
        time.sleep(0.3)
        with lock:
            running[0] -= 1
        return Launched(1, 0.3, tmp_path / "x.log")

    cells = [
        SimpleNamespace(
            task="t", strategy="s", seed=i, metric=None, device="cpu", dtype="float32", recipe_path="r",
            overrides=[], tracking=[], run_dir=tmp_path / f"c{i}", label=f"c{i}", key=i, recipe=None,
        )
        for i in range(6)
    ]  # fmt: skip
    bench = SimpleNamespace(cell_timeout_s=10, keep_models=False)
    done = []
    _run_parallel(cells, bench, {}, fake_launch, 3, ["0", "1", "2"], lambda c, r: done.append((c.seed, r)))
    assert sorted(seed for seed, _ in done) == list(range(6))
    assert all(r["status"] == "failed" for _, r in done)  # the fake cells "exit 1": recorded, not raised
    assert most[0] == 3  # three cells at once
    assert {device for device, _ in seen} == {"0", "1", "2"} and {t for _, t in seen} == {"2"}
