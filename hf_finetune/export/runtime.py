"""An ONNX export directory as a model: an onnxruntime session behind the call signature of a transformers
head, so `eval`, `predict` and the export's parity check use an export exactly as they use the PyTorch model.

`OrtModel` is a `torch.nn.Module` (the Trainer and the tasks' predict code take it unchanged): called with
``input_ids``, ``attention_mask``, ``token_type_ids`` (and ``labels`` or QA's ``start_positions`` /
``end_positions``), it feeds the graph the inputs it declares, as int64, and returns the output class of the
PyTorch head (`SequenceClassifierOutput`, `TokenClassifierOutput`, `QuestionAnsweringModelOutput`) as torch
tensors on the CPU, with the loss the head computes when labels are given (transformers' own loss helpers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import FinetuneError

#: the graph file of an export directory
ONNX_FILE = "model.onnx"

INSTALL_HINT = "pip install hf-finetune[onnx]"

# what the head computes, by the end of its architecture name (config.architectures)
SEQUENCE, TOKEN, SPAN = "sequence", "token", "span"
_KINDS = {
    "ForSequenceClassification": SEQUENCE,
    "ForTokenClassification": TOKEN,
    "ForQuestionAnswering": SPAN,
}


def is_onnx_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding an ONNX export (its ``model.onnx``)."""
    path = Path(path)
    return path.is_dir() and (path / ONNX_FILE).is_file()


def require_onnxruntime():
    """The onnxruntime module, or a FinetuneError that says how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise FinetuneError(
            f"running an ONNX export needs onnxruntime, which is not installed: `{INSTALL_HINT}`."
        ) from None
    return onnxruntime


def session_options(threads: int | None = None, spinning: bool = True):
    """Session options for CPU inference: ``threads`` intra-op threads (default: torch's thread count,
    as onnxruntime would otherwise size its pool from every core of the machine, not this process's share),
    one inter-op thread, sequential execution, every graph optimisation. ``spinning=False`` keeps idle
    threads from spinning (for a session that shares the process with other CPU work)."""
    import torch

    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def load_session(model_file: str | Path, threads: int | None = None, spinning: bool = True):
    """An onnxruntime CPU session on ``model_file`` with `session_options`."""
    ort = require_onnxruntime()
    try:
        return ort.InferenceSession(
            str(model_file),
            sess_options=session_options(threads, spinning),
            providers=["CPUExecutionProvider"],
        )
    except Exception as exc:  # onnxruntime raises its own exception types for a broken or foreign file
        raise FinetuneError(
            f"{model_file}: onnxruntime cannot load it ({str(exc).splitlines()[0] if str(exc) else exc!r}); "
            "export the run again with `hf-finetune export RUN --format onnx`."
        ) from None


def _kind(config, output_names: list[str]) -> str:
    for architecture in getattr(config, "architectures", None) or []:
        for suffix, kind in _KINDS.items():
            if architecture.endswith(suffix):
                return kind
    if "start_logits" in output_names:
        return SPAN
    return SEQUENCE  # told apart from a token head by the rank of its logits at run time


class OrtModel(torch.nn.Module):
    """An ONNX export run by onnxruntime, called like the transformers head it was exported from.

    Build it with :meth:`from_dir`. It holds no weights of its own (one empty parameter tells callers that
    look for the model's device that it is the CPU); ``.to()``, ``.eval()`` and dtype casts leave it as is.
    """

    main_input_name = "input_ids"
    accepts_loss_kwargs = False  # the heads' losses are batch means (see trainer.loss_counts_items)
    supports_gradient_checkpointing = False

    def __init__(self, session, config, kind: str | None = None):
        super().__init__()
        self.session = session
        self.config = config
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]
        self.kind = kind or _kind(config, self.output_names)
        wanted = ["start_logits", "end_logits"] if self.kind == SPAN else ["logits"]
        missing = [name for name in wanted if name not in self.output_names]
        if missing:
            raise FinetuneError(
                f"the ONNX graph has no output named {missing[0]!r} (its outputs: "
                f"{', '.join(self.output_names)}); export the run again with `hf-finetune export RUN --format onnx`."
            )
        self._anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)
        self.train(False)

    @classmethod
    def from_dir(
        cls, path: str | Path, config=None, threads: int | None = None, spinning: bool = True
    ) -> OrtModel:
        """The export in directory ``path`` (its ``model.onnx``); ``config``: the directory's transformers
        config (label maps, problem type), read from its config.json when None."""
        path = Path(path)
        if not is_onnx_dir(path):
            raise FinetuneError(
                f"{path}: holds no {ONNX_FILE}; give the directory `hf-finetune export` wrote."
            )
        session = load_session(path / ONNX_FILE, threads, spinning)
        if config is None:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(path)
        model_class = OrtModelForQuestionAnswering if _kind(config, []) == SPAN else cls
        model = model_class(session, config)
        model.name_or_path = str(path)
        return model

    # ---------------------------------------------------------------- what callers expect of a model
    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def to(self, *args, **kwargs) -> OrtModel:
        return self

    def cuda(self, *args, **kwargs) -> OrtModel:
        return self

    def half(self) -> OrtModel:
        return self

    def bfloat16(self) -> OrtModel:
        return self

    def float(self) -> OrtModel:
        return self

    def train(self, mode: bool = True) -> OrtModel:
        return super().train(False)  # inference only: `training` stays False

    def num_parameters(self, *args, **kwargs) -> int:
        return 0

    # ---------------------------------------------------------------- inference
    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The graph's outputs (numpy, by name) for model inputs (tensors, arrays or lists, by name): the
        inputs the graph declares, as int64; a missing ``attention_mask`` is all ones and a missing
        ``token_type_ids`` all zeros, as the PyTorch model takes them."""
        import numpy as np

        if inputs.get("input_ids") is None:
            raise ValueError("OrtModel needs input_ids")
        ids = _numpy(inputs["input_ids"])
        feed = {}
        for name in self.input_names:
            value = inputs.get(name)
            if value is not None:
                feed[name] = _numpy(value)
            elif name == "attention_mask":
                feed[name] = np.ones_like(ids)
            elif name == "token_type_ids":
                feed[name] = np.zeros_like(ids)
            else:
                raise ValueError(f"the ONNX graph needs the input {name!r}, which was not given")
        return dict(zip(self.output_names, self.session.run(None, feed), strict=True))

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        labels=None,
        **kwargs,
    ):
        """The head's output for a batch; with ``labels``, its loss (the problem type's, or token CE)."""
        return self._output(input_ids, attention_mask, token_type_ids, position_ids, labels=labels)

    def _output(
        self,
        input_ids,
        attention_mask,
        token_type_ids,
        position_ids,
        labels=None,
        start_positions=None,
        end_positions=None,
    ):
        from transformers.loss.loss_utils import (
            ForQuestionAnsweringLoss,
            ForSequenceClassificationLoss,
            ForTokenClassification,
        )
        from transformers.modeling_outputs import (
            QuestionAnsweringModelOutput,
            SequenceClassifierOutput,
            TokenClassifierOutput,
        )

        given = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "position_ids": position_ids,
        }
        outputs = self.run(given)
        if self.kind == SPAN:
            start_logits = torch.from_numpy(outputs["start_logits"])
            end_logits = torch.from_numpy(outputs["end_logits"])
            loss = None
            if start_positions is not None and end_positions is not None:
                loss = ForQuestionAnsweringLoss(
                    start_logits, end_logits, start_positions.cpu(), end_positions.cpu()
                )
            return QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits)
        logits = torch.from_numpy(outputs["logits"])
        if self.kind == TOKEN or logits.dim() == 3:
            loss = None if labels is None else ForTokenClassification(logits, labels.cpu(), self.config)
            return TokenClassifierOutput(loss=loss, logits=logits)
        loss = None if labels is None else ForSequenceClassificationLoss(labels.cpu(), logits, self.config)
        return SequenceClassifierOutput(loss=loss, logits=logits)


class OrtModelForQuestionAnswering(OrtModel):
    """An extractive-QA export: its name tells the Trainer that its labels are ``start_positions`` and
    ``end_positions`` (`transformers.utils.find_labels`), so an evaluation reports the loss."""

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        start_positions=None,
        end_positions=None,
        **kwargs,
    ):
        """Start and end logits; with both positions, the mean of their cross-entropies."""
        return self._output(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            start_positions=start_positions,
            end_positions=end_positions,
        )


def _numpy(value):
    import numpy as np

    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(value, dtype=np.int64)
