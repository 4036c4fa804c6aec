"""One way to run a training in a child process, parent side; `bench` cells and `tune` trials share it.

    launched = run_training(recipe_path, overrides, run_dir, timeout=900)
    launched.code, launched.wall_s, launched.peak_rss_mb, launched.dtype, launched.error()

The child (`python -m hf_finetune.child`, see `hf_finetune/child.py`) runs in its own session, so a timeout,
Ctrl-C or SIGTERM stops its whole process group (tokenisation and dataloader workers too), and it dies with
its parent. Next to the run directory ``D`` it leaves ``D.log`` (everything it printed, after a
``$ hf-finetune train ...`` header line) and ``D.memory.json`` (its peak RSS, peak CUDA memory, and the
device, precision and machine it trained on).

Also here: the progress bar bench and tune draw.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .outputs import read_json

CHILD_MODULE = "hf_finetune.child"
LOG_SUFFIX = ".log"
MEMORY_SUFFIX = ".memory.json"
#: seconds a stopped child gets between SIGTERM (save and stop) and SIGKILL
STOP_GRACE_S = 10
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt")
#: seconds between two looks at a running child (its end, its timeout, `STOP_CHILDREN`)
POLL_S = 0.5
#: set by the main thread to stop the children that other threads run (signals reach the main thread only)
STOP_CHILDREN = threading.Event()


@dataclass(frozen=True)
class ReportTo:
    """Where a trial's child reports its evaluations: an optuna storage URL, the study's name, the trial's
    number."""

    storage_url: str
    study: str
    trial: int
    metric: str | None = None


@dataclass(frozen=True)
class Launched:
    """How a training child ended. ``code`` is None when the timeout stopped it."""

    code: int | None
    wall_s: float
    log_file: Path
    memory: dict[str, Any] = field(default_factory=dict)

    @property
    def timed_out(self) -> bool:
        return self.code is None

    @property
    def peak_rss_mb(self) -> float | None:
        value = self.memory.get("max_rss_mb")
        return None if value is None else round(value, 1)

    @property
    def cuda_peak_mb(self) -> float | None:
        value = self.memory.get("cuda_max_allocated_mb")
        return None if value is None else round(value, 1)

    @property
    def device(self) -> str | None:
        """The device the run trained on ("cpu", "cuda", ...), as the child saw it; None if it never trained."""
        return self.memory.get("device")

    @property
    def dtype(self) -> str | None:
        """The precision the run trained in (float32, bfloat16, float16, tfloat32), as the child saw it."""
        return self.memory.get("dtype")

    @property
    def machine(self) -> str | None:
        """The CPU model or GPU name the run trained on."""
        return self.memory.get("machine")

    def error(self) -> str:
        return last_error(self.log_file, self.code)


# ------------------------------------------------------------------------------------------------
# Starting and stopping a child
# ------------------------------------------------------------------------------------------------
def log_path(run_dir: str | Path) -> Path:
    """The whole output of the process that trains into ``run_dir``: a sibling ``<name>.log``."""
    run_dir = Path(run_dir)
    return run_dir.with_name(run_dir.name + LOG_SUFFIX)


def memory_path(run_dir: str | Path) -> Path:
    """Next to the run's output dir, not in it: training refuses an output dir with files of no run."""
    run_dir = Path(run_dir)
    return run_dir.with_name(run_dir.name + MEMORY_SUFFIX)


def child_command(
    memory_file: str | Path,
    recipe_path: str,
    overrides: Sequence[str],
    report_to: ReportTo | None = None,
) -> list[str]:
    cmd = [sys.executable, "-m", CHILD_MODULE, "train", str(memory_file)]
    if report_to is not None:
        cmd += ["--report", report_to.storage_url, report_to.study, str(report_to.trial)]
        cmd += [report_to.metric or ""]
    return [*cmd, str(recipe_path), *overrides]


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Linux: this process gets ``sig`` when its parent dies (a trial's or a cell's training: SIGKILL; a
    worker of `tune --workers`: SIGTERM, so that it stops its trial and queues it again)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(sig))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def run_training(
    recipe_path: str,
    overrides: Sequence[str],
    run_dir: str | Path,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
    report_to: ReportTo | None = None,
) -> Launched:
    """`hf-finetune train RECIPE overrides` in a child process. ``run_dir`` is the run's output dir (the
    overrides set it): it is removed first, so the run starts clean. ``report_to``: report each evaluation
    to that optuna trial (whose pruner may stop the run; the child then exits with `tune.trial.EXIT_PRUNED`)."""
    run_dir = Path(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log_file, memory_file = log_path(run_dir), memory_path(run_dir)
    memory_file.unlink(missing_ok=True)
    cmd = child_command(memory_file, recipe_path, overrides, report_to)
    started = time.time()
    with log_file.open("w", encoding="utf-8") as log:
        log.write(log_header(recipe_path, overrides))
        log.flush()
        code = run_child(cmd, log, timeout, env=env)
    return Launched(code, round(time.time() - started, 2), log_file, read_memory(memory_file))


def log_header(recipe_path: str, overrides: Sequence[str]) -> str:
    """The first line of a child's log: the command it runs, as a user would type it."""
    return "$ hf-finetune train " + " ".join([str(recipe_path), *overrides]) + "\n"


def start_child(cmd: Sequence[str], log: IO[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own session (its own process group), its output into ``log``."""
    return subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)


def run_child(
    cmd: Sequence[str], log: IO[str], timeout: float | None, env: dict[str, str] | None = None
) -> int | None:
    """Run ``cmd`` in its own process group; its exit code, or None when it ran out of time.

    On a timeout, Ctrl-C or SIGTERM (see `sigterm_as_exit`) the whole group is stopped, so workers the
    child started go with it. A child run from another thread (`bench --workers`) is stopped, and None
    returned, when the main thread sets `STOP_CHILDREN`."""
    proc = start_child(cmd, log, env)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            try:
                return proc.wait(timeout=POLL_S)
            except subprocess.TimeoutExpired:
                pass
            if STOP_CHILDREN.is_set() or (deadline is not None and time.monotonic() > deadline):
                stop_group(proc)
                return None
    except BaseException:  # KeyboardInterrupt, SystemExit from SIGTERM: leave nothing running
        stop_group(proc)
        raise


def stop_group(proc: subprocess.Popen, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM the child's process group (a training saves and stops), SIGKILL it after ``grace`` seconds;
    once the leader has ended, SIGKILL what it left behind."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            if sig == signal.SIGTERM:
                os.killpg(proc.pid, signal.SIGKILL)  # workers the leader left behind
            break
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            break
    proc.wait()


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """SIGTERM raises SystemExit(143) while children run, so `run_child` stops the running child's group
    instead of orphaning it. Outside the main thread (no signal handlers there) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def worker_env(index: int, workers: int, devices: Sequence[str], base: dict[str, str] | None = None):
    """The environment of the ``index``-th of ``workers`` processes that run at once (`bench --workers`, the
    workers of `tune --workers`): with ``devices``, the ``index``-th of them in turn alone visible
    (CUDA_VISIBLE_DEVICES); the CPU's cores split between them (OMP_NUM_THREADS, MKL_NUM_THREADS, unless
    set)."""
    env = dict(os.environ if base is None else base)
    if devices:
        env["CUDA_VISIBLE_DEVICES"] = devices[index % len(devices)]
    threads = max(1, (os.cpu_count() or 1) // max(workers, 1))
    env.setdefault("OMP_NUM_THREADS", str(threads))
    env.setdefault("MKL_NUM_THREADS", str(threads))
    return env


def single_device_env() -> dict[str, str]:
    """The environment for a child that trains on one device: with several GPUs visible and no
    CUDA_VISIBLE_DEVICES, the Trainer would wrap the model in DataParallel over all of them, and its speed
    and MFU would not compare across machines (multi-GPU runs are `accelerate launch`'s job)."""
    import torch

    env = dict(os.environ)
    if "CUDA_VISIBLE_DEVICES" not in env and torch.cuda.device_count() > 1:
        env["CUDA_VISIBLE_DEVICES"] = "0"
    return env


def calibrate_in_child(device: str, dtype: str) -> str | None:
    """Measure the peak FLOP/s of ``device`` in ``dtype`` in a child process (so the parent holds no CUDA
    context), cached as `hf_finetune.mfu.calibrate` does; None, or the error when it failed."""
    cmd = [sys.executable, "-m", CHILD_MODULE, "calibrate", device, dtype]
    proc = subprocess.run(cmd, env=single_device_env(), capture_output=True, text=True)
    return None if proc.returncode == 0 else (proc.stderr[-500:] or f"exit code {proc.returncode}")


# ------------------------------------------------------------------------------------------------
# What a child left behind
# ------------------------------------------------------------------------------------------------
def read_memory(memory_file: str | Path) -> dict[str, Any]:
    """The child's memory file: max_rss_mb, cuda_max_allocated_mb (on a GPU), device, dtype, machine."""
    try:
        data = read_json(memory_file)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def last_error(log_file: str | Path, code: int | None) -> str:
    """The reason a child failed, from its log: its `hf-finetune: error:` line, else the last line that
    mentions an error, else the exit code and the last line."""
    if code == -signal.SIGKILL:
        return "killed by SIGKILL (out of memory?)"
    try:
        text = Path(log_file).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("hf-finetune: error:"):
            return line[len("hf-finetune: error:") :].strip()
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[:500]
    return f"exit code {code}" + (f": {lines[-1][:300]}" if lines else "")


# ------------------------------------------------------------------------------------------------
# Progress
# ------------------------------------------------------------------------------------------------
def progress_bar(total: int | None, initial: int, enabled: bool, desc: str, unit: str):
    """The tqdm bar of bench cells, tune trials and confirmation runs (``enabled=False``: none)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)
