"""`hf-finetune tune`: the search space, a tiny search end to end, pruning, resume, interruption, budget."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hf_finetune import cli
from hf_finetune.config.load import load_recipe
from hf_finetune.tune import load_space

from .conftest import REPO, tiny_recipe, write_recipe, write_sentiment_files


def _recipe(tmp_path, model_dir, epochs=2, **training) -> str:
    files = write_sentiment_files(tmp_path / "data")
    recipe = tiny_recipe(
        model_dir, files, tmp_path / "unused", training={"num_train_epochs": epochs, **training}
    )
    return write_recipe(tmp_path / "recipe.yaml", recipe)


def _space(tmp_path, space: dict, name: str = "space.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return str(path)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]


SEARCH = {
    "start_with": ["recipe"],
    "sampler": {"n_startup_trials": 2},
    "pruner": "none",
    "parameters": {
        "training.learning_rate": {"low": 1.0e-3, "high": 1.0e-2, "log": True},
        "strategy.freeze_layers": {"low": 0, "high": "layers"},
        "training.warmup_steps": {"low": 0.0, "high": 0.2},
    },
}


def test_tiny_search_writes_every_output_resumes_the_count_and_its_best_recipe_retrains(
    tmp_path, tiny_model_dir, capsys
):
    recipe = _recipe(tmp_path, tiny_model_dir)
    space = _space(tmp_path, SEARCH)
    out = tmp_path / "tune"
    args = ["tune", recipe, "--space", space, "--output-dir", str(out), "--no-progress"]

    assert cli.main([*args, "--trials", "2"]) == 0
    first = _rows(out)
    assert [r["trial"] for r in first] == [0, 1]
    # trial 0 is the recipe as given (start_with: [recipe])
    assert first[0]["start"] == "recipe"
    assert first[0]["params"] == {
        "training.learning_rate": 0.003,
        "strategy.freeze_layers": 0,
        "training.warmup_steps": 0.0,
    }

    # a second run with a larger count continues the study: trials 0 and 1 are not trained again; then the
    # recipe as given and the best recipe are retrained with seed 11
    assert cli.main([*args, "--trials", "3", "--confirm-seeds", "11"]) == 0
    assert "3 trials (1 this run" in capsys.readouterr().out
    rows = _rows(out)
    assert [r["trial"] for r in rows] == [0, 1, 2]
    assert rows[:2] == first
    for r in rows:
        assert r["status"] == "ok", r
        assert r["metric"] == "accuracy" and 0.0 <= r["score"] <= 1.0
        assert r["time_s"] > 0 and r["train_runtime"] > 0
        assert set(r["params"]) == set(SEARCH["parameters"])
        lr = r["params"]["training.learning_rate"]
        assert 1.0e-3 <= lr <= 1.0e-2 and r["params"]["strategy.freeze_layers"] in (0, 1, 2)
        assert list(r["intermediate"]) == ["50", "100"]  # an evaluation per epoch, at 50% and 100%
        trial_dir = Path(r["output_dir"])
        assert (trial_dir / "all_results.json").is_file() and not list(trial_dir.glob("*.safetensors"))
        # the trial trained what trials.jsonl says (its recipe.yaml and strategy)
        saved = load_recipe(trial_dir / "recipe.yaml")
        assert saved.training.learning_rate == lr
        assert saved.strategy.freeze_layers == r["params"]["strategy.freeze_layers"]
    assert len({r["params"]["training.learning_rate"] for r in rows}) == 3  # a resumed sampler draws anew

    best = max(rows, key=lambda r: (r["score"], -r["trial"]))
    board = (out / "leaderboard.md").read_text()
    assert f"Best: trial {best['trial']}, accuracy **{best['score']:.4f}**" in board
    assert board.count("| ok") == 3 and "training.learning_rate" in board
    assert "Parameter importance (PED-ANOVA over the finished trials): " in board
    assert (out / "importance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    confirmed = [json.loads(line) for line in (out / "confirm.jsonl").read_text().splitlines()]
    assert [(c["recipe"], c["seed"], c["status"]) for c in confirmed] == [
        ("recipe", 11, "ok"),
        ("best", 11, "ok"),
    ]
    assert confirmed[1]["best_trial"] == best["trial"]
    for c in confirmed:  # the run trained with the seed asked for
        assert load_recipe(out / "confirm" / c["recipe"] / "seed11" / "recipe.yaml").training.seed == 11
    assert "## Confirmation: retrained with seeds 11" in board
    assert f"| best (trial {best['trial']}) | {confirmed[1]['score']:.4f} |" in board

    # best_recipe.yaml is a complete recipe: it validates, and trains to the best trial's score (a fresh
    # head seeded before it is built, in every trial as in a plain run)
    best_recipe = out / "best_recipe.yaml"
    header = best_recipe.read_text().splitlines()[:4]
    assert header[1].startswith(f"# trial {best['trial']}, accuracy {best['score']:.4f}")
    recipe_obj = load_recipe(best_recipe)
    assert recipe_obj.training.learning_rate == best["params"]["training.learning_rate"]
    assert recipe_obj.training.save_strategy == "no" and recipe_obj.training.output_dir == str(out / "best")
    assert cli.main(["validate", str(best_recipe)]) == 0
    capsys.readouterr()
    assert cli.main(["train", str(best_recipe), "--output-dir", str(tmp_path / "retrained")]) == 0
    retrained = json.loads((tmp_path / "retrained" / "all_results.json").read_text())
    assert retrained["eval_accuracy"] == pytest.approx(best["score"], abs=1e-9)


#: trial 0 learns (lr 3e-3), trial 1 cannot (lr 1e-7); pruning from the first evaluation on
GOOD_THEN_HOPELESS = {
    "start_with": [{"training.learning_rate": 3.0e-3}, {"training.learning_rate": 1.0e-7}],
    "pruner": {"n_startup_trials": 1, "n_warmup_steps": 0},
    "parameters": {"training.learning_rate": {"choices": [3.0e-3, 1.0e-7]}},
}


def test_the_median_rule_stops_a_clearly_worse_trial(tmp_path, tiny_model_dir):
    # constructed: trial 0 learns (lr 3e-3), trial 1 cannot (lr 1e-7) and is at chance after its first epoch
    recipe = _recipe(tmp_path, tiny_model_dir, epochs=4)
    space = _space(tmp_path, GOOD_THEN_HOPELESS)
    out = tmp_path / "tune"
    code = cli.main(
        ["tune", recipe, "--space", space, "--trials", "2", "--output-dir", str(out), "--no-progress"]
    )
    assert code == 0
    good, bad = _rows(out)
    assert good["status"] == "ok" and list(good["intermediate"]) == ["25", "50", "75", "100"]
    assert bad["status"] == "pruned" and bad["params"] == {"training.learning_rate": 1.0e-7}
    assert list(bad["intermediate"]) == ["25"] and bad["pruned_at_percent"] == 25
    assert bad["last_score"] < good["intermediate"]["25"]
    # it stopped there: no final metrics, and a quarter of the training it would have done
    assert not (Path(bad["output_dir"]) / "all_results.json").exists()
    log = (out / "trials" / "trial-001.log").read_text()
    assert "pruned at 25% of its schedule" in log and "train metrics" not in log
    assert "0.0000001" not in (out / "best_recipe.yaml").read_text()
    assert "| pruned |" in (out / "leaderboard.md").read_text()


def _wait_until(condition, what: str, timeout: float = 120) -> None:
    """Poll until ``condition()`` holds; fail only after ``timeout`` seconds (a bound for a stuck test on a
    busy machine, not a speed requirement)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.2)


def _wait_for(path: Path, text: str, timeout: float = 120) -> None:
    _wait_until(
        lambda: path.is_file() and text in path.read_text(errors="replace"),
        f"{path} showing {text!r}",
        timeout,
    )


def _processes_with(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_and_sigkill_during_a_trial_leave_a_search_that_resumes(tmp_path, tiny_model_dir):
    recipe = _recipe(tmp_path, tiny_model_dir)
    space = _space(tmp_path, {**SEARCH, "start_with": []})
    out = tmp_path / "tune"
    cmd = [sys.executable, "-m", "hf_finetune", "tune", recipe, "--space", space, "--trials", "1"]
    cmd += ["--output-dir", str(out), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    # SIGTERM while trial 0 runs: the search stops it, records it as interrupted and exits 143
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(out / "trials" / "trial-000.log", "$ hf-finetune train")
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 143, output
    assert [(r["trial"], r["status"]) for r in _rows(out)] == [(0, "interrupted")]
    _wait_until(lambda: not _processes_with(str(out / "trials" / "trial-000")), "trial 0's processes ending")

    # SIGKILL while its retry (trial 1) runs: nothing is recorded, and the trial process dies with the search
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(out / "trials" / "trial-001.log", "$ hf-finetune train")
    _wait_until(lambda: _processes_with(str(out / "trials" / "trial-001")), "trial 1's process starting")
    proc.kill()
    proc.wait(timeout=120)
    # the trial dies with the search (it asked the kernel to, see hf_finetune.launch.die_with_parent)
    _wait_until(
        lambda: not _processes_with(str(out / "trials" / "trial-001")), "the trial dying with the search"
    )

    # the next run finds trial 1 left running, runs its values again as trial 2, and ends at 1 counted trial
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = _rows(out)
    assert [(r["trial"], r["status"]) for r in rows] == [(0, "interrupted"), (1, "interrupted"), (2, "ok")]
    assert rows[1]["retry_of"] == 0 and rows[2]["retry_of"] == 1
    assert rows[0]["params"] == rows[1]["params"] == rows[2]["params"]
    board = (out / "leaderboard.md").read_text()
    assert "2 stopped and run again" in board
    assert re.search(r"^- trial 0 \(interrupted\): \S.*; run again as trial 1$", board, re.M)
    assert "- trial 1 (interrupted): its search was stopped (killed); run again as trial 2" in board


def test_the_budget_stops_the_running_trial_and_queues_it_again(tmp_path, tiny_model_dir, capsys):
    import optuna

    recipe = _recipe(tmp_path, tiny_model_dir, epochs=200)  # far longer than the budget
    space = _space(tmp_path, SEARCH)
    out = tmp_path / "tune"
    code = cli.main(
        [
            "tune",
            recipe,
            "--space",
            space,
            "--budget-minutes",
            "0.25",
            "--output-dir",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 1 and "no trial finished" in capsys.readouterr().out
    (row,) = _rows(out)
    assert row["status"] == "budget" and "--budget-minutes=0.25" in row["error"]
    study = optuna.load_study(study_name="hf-finetune-tune", storage=f"sqlite:///{out / 'study.db'}")
    waiting = [t for t in study.trials if t.state == optuna.trial.TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].user_attrs["retry_of"] == 0


def test_space_alternatives_and_conditions(tmp_path):
    import optuna

    space = load_space(REPO / "recipes" / "tune" / "default-space.yaml")
    assert space.fields[:3] == ["peft.method", "peft.r", "training.learning_rate"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {"lora": 0, None: 0}
    for _ in range(40):
        values = space.sample(study.ask(), lambda name: None, layers=6)
        method = values["peft.method"]
        seen[method] += 1
        lr = values["training.learning_rate"]
        if method == "lora":
            assert "strategy.freeze_layers" not in values and values["peft.r"] in (4, 8, 16)
            assert 1.0e-4 <= lr <= 3.0e-3
        else:
            assert "peft.r" not in values and 0 <= values["strategy.freeze_layers"] <= 6
            assert 1.0e-5 <= lr <= 2.0e-4
        assert (
            isinstance(values["training.num_train_epochs"], int)
            and 2 <= values["training.num_train_epochs"] <= 8
        )
    assert seen["lora"] and seen[None]


def test_pairs_space_samples_full_fine_tuning_with_both_sequence_lengths():
    import optuna

    space = load_space(REPO / "recipes" / "tune" / "pairs-space.yaml")
    assert space.start_with == ["recipe"] and not any(f.startswith("peft.") for f in space.fields)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    lengths = set()
    for _ in range(30):
        values = space.sample(study.ask(), lambda name: None, layers=6)
        lengths.add(values["data.max_seq_length"])
        assert 0 <= values["strategy.freeze_layers"] <= 6
        assert 1.0e-5 <= values["training.learning_rate"] <= 2.0e-4
        assert 3 <= values["training.num_train_epochs"] <= 10
    assert lengths == {128, 256}


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        (
            {"parameters": {"training.learning_rate": {"low": 1e-2, "high": 1e-3}}},
            "low (0.01) must be below high",
        ),
        (
            {"parameters": {"training.learning_rat": {"low": 1e-3, "high": 1e-2}}},
            "did you mean: learning_rate",
        ),
        (
            {"parameters": {"learning_rate": {"low": 1e-3, "high": 1e-2}}},
            "name a recipe field as section.field",
        ),
        (
            {"parameters": {"training.learning_rate": {"low": 1e-3, "hi": 1e-2}}},
            "`parameters.training.learning_rate.hi`: unknown field (did you mean: high?)",
        ),
        ({"parameters": {"training.seed": {"choices": [1, 1]}}}, "lists a value twice"),
        ({"parameters": {"strategy.freeze_layers": {"low": 0, "high": 5}}}, "has 2 layers"),
        (
            {
                "parameters": {
                    "peft.r": {"choices": [4], "when": {"peft.method": "lora"}},
                    "peft.method": {"choices": [None, "lora"]},
                }
            },
            "list peft.method first",
        ),
        (
            {"start_with": ["recipe"], "parameters": {"training.learning_rate": {"low": 1e-5, "high": 1e-4}}},
            "training.learning_rate=0.003 is outside the space",
        ),
        (
            {
                "parameters": {"training.learning_rate": {"low": 1e-3, "high": 1e-2}},
                "pruner": {"patience": 2},
            },
            "`pruner.patience`: unknown field",
        ),
        ({"parametres": {}}, "a search space is a mapping with `parameters`"),
    ],
)
def test_bad_spaces_fail_before_any_weights_load(
    tmp_path, tiny_model_dir, no_weights, capsys, space, expected
):
    recipe = _recipe(tmp_path, tiny_model_dir)
    path = _space(tmp_path, space)
    code = cli.main(["tune", recipe, "--space", path, "--trials", "2", "--output-dir", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert expected in err and str(path) in err, err
    assert not (tmp_path / "t").exists()


def test_bad_options_and_a_tune_dir_of_another_search(tmp_path, tiny_model_dir, no_weights, capsys):
    import optuna

    recipe = _recipe(tmp_path, tiny_model_dir)
    space = _space(tmp_path, SEARCH)
    out = tmp_path / "tune"
    assert cli.main(["tune", recipe, "--space", space]) == 2
    assert "give --trials N and/or --budget-minutes M" in capsys.readouterr().err
    assert cli.main(["tune", recipe, "--space", str(tmp_path / "missing.yaml"), "--trials", "1"]) == 2
    assert "--space: file not found" in capsys.readouterr().err

    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert cli.main(["tune", recipe, "--space", space, "--trials", "1", "--output-dir", str(out)]) == 2
    assert "is not empty and holds no search" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"

    other = tmp_path / "other"
    other.mkdir()
    study = optuna.create_study(study_name="hf-finetune-tune", storage=f"sqlite:///{other / 'study.db'}")
    study.set_user_attr(
        "fingerprint",
        {"recipe": "x", "overrides": [], "space": "y", "metric": None, "direction": "maximize", "seed": 0},
    )
    assert cli.main(["tune", recipe, "--space", space, "--trials", "1", "--output-dir", str(other)]) == 2
    err = capsys.readouterr().err
    assert "holds a search with another recipe, space" in err and "give a new --output-dir" in err
    assert len(study.trials) == 0


def test_the_pruner_compares_each_trial_at_the_same_share_of_its_own_schedule():
    import optuna
    from optuna.trial import TrialState, create_trial

    from hf_finetune.tune import PrunerSettings, make_pruner

    pruner = make_pruner(PrunerSettings(n_startup_trials=1, n_warmup_steps=20))
    study = optuna.create_study(direction="maximize", pruner=pruner)
    # a finished 2-epoch trial evaluated at 50% and 100% of its schedule
    study.add_trial(create_trial(value=0.70, intermediate_values={50: 0.60, 100: 0.70}))

    def running(**values):
        return create_trial(
            state=TrialState.RUNNING,
            intermediate_values=values and {int(k[1:]): v for k, v in values.items()},
        )

    # an 8-epoch trial at 62%: compared with the other's latest score at or before 62% (0.60 at 50%), which
    # optuna's MedianPruner never does (it needs a score at exactly 62%)
    assert pruner.prune(study, running(s12=0.50, s25=0.52, s62=0.55))
    assert not pruner.prune(study, running(s12=0.50, s25=0.52, s62=0.61))
    assert not pruner.prune(study, running(s12=0.50, s25=0.62, s62=0.55))  # its best so far counts
    assert not pruner.prune(study, running(s12=0.10, s37=0.10))  # nothing to compare with before 50%
    assert not pruner.prune(study, running(s10=0.10))  # warm-up: below 20%
    assert not pruner.prune(study, running(s50=0.10, s100=0.10))  # never at the end: nothing left to save
    assert not optuna.pruners.MedianPruner(1, 20).prune(study, running(s12=0.50, s25=0.52, s62=0.55))


def test_a_trial_stopped_again_and_again_is_failed_not_queued_forever(tmp_path):
    import types

    import optuna

    from hf_finetune.tune import MAX_ATTEMPTS, status_of, stop_trial

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(study_name="hf-finetune-tune", storage=storage)
    tune = types.SimpleNamespace(storage=storage, keep_models=False, output_dir=tmp_path)
    study.enqueue_trial({"x": 1.0}, user_attrs={"start": "recipe"})
    for attempt in range(1, MAX_ATTEMPTS + 1):
        trial = study.ask()
        trial.suggest_float("x", 0.0, 2.0)
        assert trial.user_attrs.get("attempt", 1) == attempt
        assert trial.user_attrs["start"] == "recipe"  # a rerun of the baseline is still the baseline
        status = stop_trial(tune, study, trial.number, "budget", "the budget ran out")
        assert status == ("budget" if attempt < MAX_ATTEMPTS else "failed")
    frozen = study.get_trials()
    assert [status_of(t) for t in frozen] == ["budget"] * (MAX_ATTEMPTS - 1) + ["failed"]
    assert "stopped 3 times in a row" in frozen[-1].user_attrs["error"]
    assert not study.get_trials(states=(optuna.trial.TrialState.WAITING,))


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        (
            {"parameters": {"peft.r": {"choices": [4], "when": {"peft.methd": "lora"}}}},
            "`peft.methd`: unknown field (did you mean: method?)",
        ),
        (
            {"parameters": {"strategy.freeze_layers": {"low": 0, "high": "layers", "log": True}}},
            "a log range needs low > 0",
        ),
        (
            {"parameters": {"strategy.freeze_layers": {"low": 3, "high": "layers"}}},
            "`layers` is 2 for this model",
        ),
        (
            {
                "start_with": [{"training.learning_rate": 1e-3}],
                "parameters": {
                    "peft.method": {"choices": [None, "lora"]},
                    "training.learning_rate": [
                        {"low": 1e-4, "high": 1e-2, "when": {"peft.method": None}},
                        {"low": 1e-3, "high": 1e-1, "when": {"peft.method": "lora"}},
                    ],
                },
            },
            "training.learning_rate depends on peft.method (its `when`); give peft.method too",
        ),
        (
            {
                "start_with": [{"peft.method": None, "peft.r": 8}],
                "parameters": {
                    "peft.method": {"choices": [None, "lora"]},
                    "peft.r": {"choices": [4, 8], "when": {"peft.method": "lora"}},
                },
            },
            "peft.r would not be used",
        ),
        (
            {"parameters": {"training.seed": {"choices": [1, 2]}}, "pruner": {"n_min_trials": 0}},
            "a whole number >= 1",
        ),
    ],
)
def test_more_bad_spaces(tmp_path, tiny_model_dir, no_weights, capsys, space, expected):
    recipe = _recipe(tmp_path, tiny_model_dir)
    path = _space(tmp_path, space)
    assert (
        cli.main(["tune", recipe, "--space", path, "--trials", "1", "--output-dir", str(tmp_path / "t")]) == 2
    )
    err = capsys.readouterr().err
    assert expected in err and str(path) in err, err


def test_a_second_search_on_a_busy_tune_dir_is_refused(tmp_path, tiny_model_dir, no_weights, capsys):
    import fcntl

    recipe = _recipe(tmp_path, tiny_model_dir)
    space = _space(tmp_path, SEARCH)
    out = tmp_path / "tune"
    out.mkdir()
    with (out / ".lock").open("a+") as held:  # what a running search holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert cli.main(["tune", recipe, "--space", space, "--trials", "1", "--output-dir", str(out)]) == 2
    assert "another `hf-finetune tune` is running on it" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_pruner_null_or_none_turns_pruning_off(tmp_path):
    for value in (None, "none", False):
        path = _space(tmp_path, {"pruner": value, "parameters": {"training.seed": {"choices": [1, 2]}}})
        assert load_space(path).pruner is None
    from hf_finetune.tune import PrunerSettings

    default = load_space(_space(tmp_path, {"parameters": {"training.seed": {"choices": [1, 2]}}})).pruner
    assert default == PrunerSettings()  # on, with its defaults


def test_when_the_recipe_as_given_wins_confirmation_trains_it_once_per_seed(tmp_path, tiny_model_dir):
    """The best trial equal to the recipe: retraining 'best' would repeat the recipe's runs, so each seed
    trains once and the leaderboard says the two are the same."""
    from hf_finetune import tune as tune_mod

    out = tmp_path / "tune"
    tune = tune_mod.prepare_tune(
        _recipe(tmp_path, tiny_model_dir), [], _space(tmp_path, SEARCH), out, trials=1, confirm_seeds=[4, 5]
    )
    out.mkdir()  # as the search leaves it
    runs = []

    def fake_run(tune, values, run_dir, seed):  # no training: this test is about which runs are asked for
        runs.append((run_dir.relative_to(out).as_posix(), values))
        return {"status": "ok", "metric": "accuracy", "score": 0.5 + seed / 100, "time_s": 1.0}

    baseline = {"trial": 0, "params": {f: tune.base_value(f) for f in SEARCH["parameters"]}}
    summary = tune_mod.confirm(tune, None, baseline, progress=False, run=fake_run)
    assert runs == [("confirm/recipe/seed4", {}), ("confirm/recipe/seed5", {})]
    assert summary["same_as_recipe"] and summary["best"] == summary["recipe"]
    assert summary["recipe"]["mean"] == pytest.approx(0.545)
    row = {"trial": 0, "status": "ok", "score": 0.6, "metric": "accuracy", "start": "recipe", "time_s": 60.0}
    board = tune_mod.format_leaderboard(tune, [{**row, "params": baseline["params"]}], None, summary)
    assert "| the recipe as given = best (trial 0) | 0.5450 ± 0.0071 | 0.5400 | 0.5500 |" in board
    assert "| best (trial" not in board

    # a best trial that changes a value: both arms, and the recipe's runs already done are not repeated
    runs.clear()
    better = {"trial": 3, "params": {**baseline["params"], "training.learning_rate": 0.005}}
    summary = tune_mod.confirm(tune, None, better, progress=False, run=fake_run)
    assert runs == [("confirm/best/seed4", better["params"]), ("confirm/best/seed5", better["params"])]
    assert "same_as_recipe" not in summary and summary["best"]["mean"] == pytest.approx(0.545)


def test_trial_seeds_score_each_trial_by_its_mean_and_a_pruned_trial_trains_no_other_seed(
    tmp_path, tiny_model_dir, capsys
):
    # constructed as in the pruning test: trial 0 learns (lr 3e-3), trial 1 cannot (lr 1e-7)
    recipe = _recipe(tmp_path, tiny_model_dir, epochs=4)
    space = _space(tmp_path, GOOD_THEN_HOPELESS)
    out = tmp_path / "tune"
    args = ["tune", recipe, "--space", space, "--output-dir", str(out), "--no-progress"]

    # seeds chosen for the search cannot be the confirmation's (it would retrain what was selected on);
    # refused before any weights load, and nothing is written
    assert cli.main([*args, "--trials", "2", "--trial-seeds", "5", "6", "--confirm-seeds", "6", "8"]) == 2
    assert "--confirm-seeds: [6] also in --trial-seeds" in capsys.readouterr().err
    assert not out.exists()
    assert cli.main([*args, "--trials", "2", "--confirm-seeds", "7"]) == 2  # the recipe's training.seed is 7
    assert "[7] also in the recipe's training.seed" in capsys.readouterr().err
    assert cli.main([*args, "--trials", "2", "--trial-seeds", "5", "5"]) == 2
    assert "--trial-seeds: repeats a seed" in capsys.readouterr().err

    assert cli.main([*args, "--trials", "2", "--trial-seeds", "5", "6"]) == 0
    assert "trial 0: " in capsys.readouterr().out
    good, bad = _rows(out)
    assert good["status"] == "ok" and set(good["seed_scores"]) == {"5", "6"}
    trial_dir = Path(good["output_dir"])
    for seed in (5, 6):  # one run per seed, with that seed, and its score is what the row says
        results = json.loads((trial_dir / f"seed{seed}" / "all_results.json").read_text())
        assert results["eval_accuracy"] == good["seed_scores"][str(seed)]
        assert load_recipe(trial_dir / f"seed{seed}" / "recipe.yaml").training.seed == seed
        assert (trial_dir / f"seed{seed}.log").is_file()
        assert not list((trial_dir / f"seed{seed}").glob("*.safetensors"))
    assert good["score"] == pytest.approx((good["seed_scores"]["5"] + good["seed_scores"]["6"]) / 2)
    # the runs differ (a seed changes the head's init and the data order): the mean is of two real runs
    first = json.loads((trial_dir / "seed5" / "all_results.json").read_text())
    second = json.loads((trial_dir / "seed6" / "all_results.json").read_text())
    assert first["train_loss"] != second["train_loss"]
    assert good["train_runtime"] == pytest.approx(first["train_runtime"] + second["train_runtime"], abs=1e-3)
    # only the first seed's run reported to the study: one evaluation per epoch, four in all
    assert list(good["intermediate"]) == ["25", "50", "75", "100"]

    # the hopeless trial is pruned in its first seed's run, and never trains the second
    assert bad["status"] == "pruned" and bad["pruned_at_percent"] < 100 and "seed_scores" not in bad
    bad_dir = Path(bad["output_dir"])
    assert f"pruned at {bad['pruned_at_percent']}% of its schedule" in (bad_dir / "seed5.log").read_text()
    assert not (bad_dir / "seed6").exists() and not (bad_dir / "seed6.log").exists()

    board = (out / "leaderboard.md").read_text()
    assert "Each trial trains once per seed (5, 6); its accuracy is the mean" in board
    assert (
        f"| {good['score']:.4f} | {good['seed_scores']['5']:.4f} / {good['seed_scores']['6']:.4f} | ok"
        in board
    )

    # best_recipe.yaml trains the first trial seed, and retrains to that seed's score
    best_recipe = out / "best_recipe.yaml"
    assert "(the mean over seeds 5: " in best_recipe.read_text().splitlines()[1]
    assert load_recipe(best_recipe).training.seed == 5
    assert cli.main(["train", str(best_recipe), "--output-dir", str(tmp_path / "retrained")]) == 0
    retrained = json.loads((tmp_path / "retrained" / "all_results.json").read_text())
    assert retrained["eval_accuracy"] == pytest.approx(good["seed_scores"]["5"], abs=1e-9)

    # the search continues only with the same seeds
    capsys.readouterr()
    assert cli.main([*args, "--trials", "3", "--trial-seeds", "5", "7"]) == 2
    assert "holds a search with another trial_seeds" in capsys.readouterr().err
    assert cli.main([*args, "--trials", "3"]) == 2
    assert "another trial_seeds" in capsys.readouterr().err
