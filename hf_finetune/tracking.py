"""Experiment tracking: `training.report_to` with TensorBoard, trackio and MLflow, offline, into local stores.

transformers' own callbacks log the run (every loss and evaluation, at the Trainer's global step); this module
decides where each store lives and keeps one run per training:

- the stores go under ``<output_dir>/tracking/`` (``tensorboard/<run name>/`` event files, ``trackio/`` with
  trackio's SQLite databases, ``mlflow.db``, an MLflow SQLite store: MLflow 3 refuses its file store unless
  ``MLFLOW_ALLOW_FILE_STORE`` is set), or under ``$HF_FINETUNE_TRACKING_DIR``; a tracker's own variable wins
  (``TENSORBOARD_LOGGING_DIR``, ``TRACKIO_DIR``, ``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``);
- the project (trackio) or experiment (MLflow) is `training.project`, the run `training.run_name` (default:
  the output dir's name);
- the run stays open until the final evaluations (and a test split) are logged, so they land in the same
  run (transformers' callbacks end it when training ends, and MLflow would then open a second run for them);
- trackio never reaches the Hub: no Space unless `training.trackio_space_id` (or ``TRACKIO_SPACE_ID``) names
  one, no sync on push.

`bench` and `tune` point their runs at one store in their own directory (`child_env`, `run_overrides`):
the bench or search is the project, each cell or trial a run, tagged with ``$HF_FINETUNE_TRACKING_TAGS``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .errors import RecipeError, close_matches

logger = logging.getLogger("hf_finetune")

#: the trackers hf-finetune stores locally, and the module each needs
TRACKERS = {"tensorboard": "tensorboard", "trackio": "trackio", "mlflow": "mlflow"}
EXTRA = "pip install 'hf-finetune[track]'"
#: where the stores go instead of <output_dir>/tracking (bench and tune set it for their runs)
ROOT_ENV = "HF_FINETUNE_TRACKING_DIR"
#: a JSON object of tags every run gets (bench: task, strategy, seed; tune: trial, seed)
TAGS_ENV = "HF_FINETUNE_TRACKING_TAGS"
STORE_DIR = "tracking"
MLFLOW_DB = "mlflow.db"


def names(report_to: Any) -> list[str]:
    """``report_to`` as a list of names ('none' and None: empty)."""
    if report_to in (None, "none", ["none"]):
        return []
    if isinstance(report_to, str):
        return [report_to]
    return [str(name) for name in report_to]


def check_report_to(report_to: Any, where: str = "training.report_to", installed: bool = True) -> list[str]:
    """The tracker names, checked before any weights load: each must be one transformers knows, and (with
    ``installed``: before a training, not to use a finished run's output dir) the three hf-finetune stores
    locally need their package."""
    given = names(report_to)
    if not given:
        return []
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    known = ["all", *INTEGRATION_TO_CALLBACK]
    for name in given:
        if name not in known:
            raise RecipeError(
                where,
                f"unknown tracker {name!r}{close_matches(name, known)}; hf-finetune logs offline to "
                f"{', '.join(TRACKERS)} (install them with `{EXTRA}`), or `none`.",
            )
        module = TRACKERS.get(name)
        if installed and module is not None and importlib.util.find_spec(module) is None:
            raise RecipeError(
                where,
                f"{name} is not installed; install the trackers with `{EXTRA}` (or `pip install {module}`), "
                "or drop it from the list.",
            )
    return given


def prepare(report_to: Any) -> list[str]:
    """Before a training: every tracker in ``report_to`` known and installed; MLflow's usage telemetry
    (which it sends from the moment it is imported) off unless MLFLOW_DISABLE_TELEMETRY or DO_NOT_TRACK
    says otherwise, so a tracked run sends nothing off the machine."""
    given = check_report_to(report_to)
    if "mlflow" in given and "DO_NOT_TRACK" not in os.environ:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return given


# ------------------------------------------------------------------------------------------------
# Where the stores are
# ------------------------------------------------------------------------------------------------
def store_root(output_dir: str | Path) -> Path:
    """The directory of the local stores: $HF_FINETUNE_TRACKING_DIR, else <output_dir>/tracking."""
    root = os.environ.get(ROOT_ENV)
    return Path(root).expanduser() if root else Path(output_dir) / STORE_DIR


def tensorboard_dir(root: Path, run_name: str) -> Path:
    given = os.environ.get("TENSORBOARD_LOGGING_DIR")
    return Path(given).expanduser() if given else root / "tensorboard" / run_name


def trackio_dir(root: Path) -> Path:
    given = os.environ.get("TRACKIO_DIR")
    return Path(given).expanduser() if given else root / "trackio"


def mlflow_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / MLFLOW_DB).resolve()}"


def how_to_open(name: str, root: Path, run_name: str, project: str) -> str:
    """Where tracker ``name`` writes this run, and the command that shows it."""
    if name == "tensorboard":
        where = tensorboard_dir(root, run_name)
        return f"tensorboard: {where} (tensorboard --logdir {where.parent})"
    if name == "trackio":
        where = trackio_dir(root)
        return f"trackio: {where} (TRACKIO_DIR={where} trackio show --project {json.dumps(project)})"
    uri = mlflow_uri(root)
    return f"mlflow: {uri} (pip install mlflow; mlflow ui --backend-store-uri {uri})"


def tags_from_env() -> dict[str, str]:
    text = os.environ.get(TAGS_ENV)
    if not text:
        return {}
    try:
        tags = json.loads(text)
    except ValueError:
        logger.warning("%s is not a JSON object; ignored: %s", TAGS_ENV, text[:200])
        return {}
    return {str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else {}


def use_trackio_dir(directory: str | Path) -> None:
    """Point trackio at ``directory`` (trackio reads TRACKIO_DIR once, when it is imported): set for the
    import when it is not imported yet, else its module-level paths are moved there."""
    directory = Path(directory)
    if "trackio" not in sys.modules:
        previous = os.environ.get("TRACKIO_DIR")
        os.environ["TRACKIO_DIR"] = str(directory)
        try:
            import trackio  # noqa: F401
        finally:
            if previous is None:
                os.environ.pop("TRACKIO_DIR", None)
            else:
                os.environ["TRACKIO_DIR"] = previous
        return
    import trackio.utils

    old = trackio.utils.TRACKIO_DIR
    if Path(old) == directory:
        return
    moved = {
        id(old): directory,
        id(trackio.utils.MEDIA_DIR): directory / "media",
        id(trackio.utils.ARTIFACTS_DIR): directory / "artifacts",
    }
    for module_name, module in list(sys.modules.items()):
        if module is None or not (module_name == "trackio" or module_name.startswith("trackio.")):
            continue
        for attribute in ("TRACKIO_DIR", "MEDIA_DIR", "ARTIFACTS_DIR"):
            value = module.__dict__.get(attribute)
            if value is not None and id(value) in moved:
                setattr(module, attribute, moved[id(value)])


# ------------------------------------------------------------------------------------------------
# The callbacks
# ------------------------------------------------------------------------------------------------
def attach(trainer, recipe) -> list[str]:
    """Swap the TensorBoard, trackio and MLflow callbacks the Trainer made from `training.report_to` for
    ones that write to the local stores and keep the run open until `finish`. Returns what goes where."""
    args = trainer.args
    chosen = [name for name in names(args.report_to) if name in TRACKERS]
    if not chosen:
        return []
    from transformers.integrations import MLflowCallback, TensorBoardCallback, TrackioCallback

    if not args.run_name:
        args.run_name = Path(args.output_dir).resolve().name
    root = store_root(args.output_dir)
    if args.should_save:
        root.mkdir(parents=True, exist_ok=True)
    tags = {
        "task": recipe.task.name,
        "model": str(recipe.model.name_or_path),
        "seed": str(args.seed),
        **tags_from_env(),
    }
    stock = {"tensorboard": TensorBoardCallback, "trackio": TrackioCallback, "mlflow": MLflowCallback}
    made = {"tensorboard": _tensorboard, "trackio": _trackio, "mlflow": _mlflow}
    where = []
    for name in chosen:
        trainer.remove_callback(stock[name])
        trainer.add_callback(made[name](root, args, tags))
        where.append(how_to_open(name, root, args.run_name, args.project))
    if args.should_log:
        logger.info("tracking run %r of %r to %s", args.run_name, args.project, "; ".join(where))
    return where


def log(trainer, metrics: dict[str, Any]) -> None:
    """Send ``metrics`` computed after the Trainer's own evaluation (the temperature and ECE of calibrated
    scores) to the attached trackers, at the current step; nothing without trackers."""
    tracked = [c for c in trainer.callback_handler.callbacks if hasattr(c, "finish_run")]
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if not tracked or not numbers or not trainer.is_world_process_zero():
        return
    for callback in tracked:
        try:
            callback.on_log(trainer.args, trainer.state, trainer.control, logs=dict(numbers))
        except Exception as exc:  # the metrics are saved in all_results.json; a tracker must not cost the run
            logger.warning("could not log to %s (%s: %s)", type(callback).__name__, type(exc).__name__, exc)


def finish(trainer) -> None:
    """End the trackers' runs (after the final evaluations were logged)."""
    for callback in trainer.callback_handler.callbacks:
        if hasattr(callback, "finish_run"):
            try:
                callback.finish_run()
            except Exception as exc:  # the model and metrics are saved; a tracker must not cost the run
                logger.warning(
                    "could not close the %s run (%s: %s)", type(callback).__name__, type(exc).__name__, exc
                )


def _tensorboard(root: Path, args, tags: dict[str, str]):
    from transformers.integrations import TensorBoardCallback

    class LocalTensorBoard(TensorBoardCallback):
        """Event files in <root>/tensorboard/<run name> (or TENSORBOARD_LOGGING_DIR); open until `finish`."""

        def __init__(self):
            super().__init__()
            self.logging_dir = str(tensorboard_dir(root, args.run_name))

        def on_train_begin(self, args, state, control, **kwargs):
            super().on_train_begin(args, state, control, **kwargs)
            if self.tb_writer is not None:
                self.tb_writer.add_text("tags", json.dumps(tags, indent=1))

        def on_train_end(self, args, state, control, **kwargs):
            if self.tb_writer is not None:
                self.tb_writer.flush()

        def finish_run(self):
            if self.tb_writer is not None:
                self.tb_writer.close()
                self.tb_writer = None

    return LocalTensorBoard()


#: logged once at the end of training, not as curves (transformers' trackio callback leaves them out too)
_SUMMARY_KEYS = (
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
    "train_loss",
    "total_flos",
)


def _trackio(root: Path, args, tags: dict[str, str]):
    from transformers.integrations import TrackioCallback
    from transformers.integrations.integration_utils import rewrite_logs

    use_trackio_dir(trackio_dir(root))
    group = tags.get("group")

    class LocalTrackio(TrackioCallback):
        """A run in trackio's local database, metrics at the Trainer's global step; no Space, no Hub sync."""

        def setup(self, args, state, model, **kwargs):
            if state.is_world_process_zero:
                config = args.to_dict()
                if getattr(model, "config", None) is not None:
                    model_config = model.config if isinstance(model.config, dict) else model.config.to_dict()
                    config = {**model_config, **config}
                self._trackio.init(
                    project=args.project,
                    name=args.run_name,
                    group=group,
                    space_id=args.trackio_space_id,
                    resume="allow",
                    embed=False,
                    auto_log_cpu=False,
                )
                self._space_id = self._trackio.context_vars.current_space_id.get()
                self._trackio.config.update({**config, **tags}, allow_val_change=True)
            self._initialized = True

        def on_log(self, args, state, control, model=None, logs=None, **kwargs):
            if not self._initialized:
                self.setup(args, state, model)
            if state.is_world_process_zero and logs:
                values = {k: v for k, v in logs.items() if k not in _SUMMARY_KEYS}
                self._trackio.log(rewrite_logs(values), step=state.global_step)

        def on_predict(self, args, state, control, metrics, **kwargs):
            if not self._initialized:
                self.setup(args, state, kwargs.get("model"))
            if state.is_world_process_zero:
                self._trackio.log(rewrite_logs(metrics), step=state.global_step)

        def on_train_end(self, args, state, control, model=None, **kwargs):
            pass  # `finish_run`, after the final evaluations

        def on_push_begin(self, args, state, control, model=None, **kwargs):
            pass  # no static Space synced to the Hub

        def finish_run(self):
            if self._initialized and self._trackio.context_vars.current_run.get() is not None:
                self._trackio.finish()
            self._initialized = False

    return LocalTrackio()


def _mlflow(root: Path, args, tags: dict[str, str]):
    from transformers.integrations import MLflowCallback

    uri = mlflow_uri(root)
    own_store = "MLFLOW_TRACKING_URI" not in os.environ
    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or args.project

    class LocalMLflow(MLflowCallback):
        """A run of experiment `training.project` in <root>/mlflow.db (or MLFLOW_TRACKING_URI), tagged;
        open until `finish`."""

        def setup(self, args, state, model):
            if state.is_world_process_zero:
                mlflow = self._ml_flow
                mlflow.set_tracking_uri(uri)
                if own_store:  # a new experiment keeps its artifacts beside the store, not in ./mlruns
                    client = mlflow.MlflowClient(uri)
                    if client.get_experiment_by_name(experiment) is None:
                        artifacts = (root / "mlartifacts").resolve().as_uri()
                        client.create_experiment(experiment, artifact_location=artifacts)
                mlflow.set_experiment(experiment)
            super().setup(args, state, model)
            if state.is_world_process_zero and self._ml_flow.active_run() is not None:
                self._ml_flow.set_tags(tags)

        def on_train_end(self, args, state, control, **kwargs):
            pass  # `finish_run`, after the final evaluations

        def finish_run(self):
            if self._initialized and self._auto_end_run and self._ml_flow.active_run() is not None:
                self._ml_flow.end_run()
            self._auto_end_run = False

    return LocalMLflow()


# ------------------------------------------------------------------------------------------------
# bench and tune: one store, one run per cell or trial
# ------------------------------------------------------------------------------------------------
def run_overrides(report_to: list[str], project: str, run_name: str) -> list[str]:
    """The overrides that send one bench cell or tune trial to the trackers, as run ``run_name`` of
    ``project`` (none without trackers)."""
    if not report_to:
        return []
    return [
        f"training.report_to={json.dumps(list(report_to))}",
        f"training.project={json.dumps(project)}",
        f"training.run_name={json.dumps(run_name)}",
    ]


def child_env(
    report_to: list[str], root: Path, run_name: str, tags: dict[str, Any], env: dict[str, str] | None = None
) -> dict[str, str] | None:
    """The environment of a bench cell's or tune trial's process: the shared store ``root`` (unless the
    user set $HF_FINETUNE_TRACKING_DIR), the run's tags, and with a TENSORBOARD_LOGGING_DIR of the user's, a
    directory per run under it. ``env``: the environment to start from (default: this process's). None
    (the inherited environment) without trackers."""
    if not report_to:
        return env
    out = dict(os.environ if env is None else env)
    out.setdefault(ROOT_ENV, str(Path(root).resolve()))
    if out.get("TENSORBOARD_LOGGING_DIR") and "tensorboard" in report_to:
        out["TENSORBOARD_LOGGING_DIR"] = str(Path(out["TENSORBOARD_LOGGING_DIR"]) / run_name)
    out[TAGS_ENV] = json.dumps({k: str(v) for k, v in tags.items()})
    return out
