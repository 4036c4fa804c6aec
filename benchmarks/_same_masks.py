"""Common random numbers for `padding.py --same-dropout-masks`: both runs draw the same dropout masks.

Padding changes the shape every dropout mask is drawn over, so a padded run and a dynamic one differ in
their masks as well as in their padding, and one pair of runs then differs by as much as two seeds do.
Installed in a training process, this makes each dropout call draw its mask over the real tokens only,
the region a dynamically padded batch has: the same random numbers, from the same generator state, in both
runs. Positions past the batch's longest sequence (padding, which no real token attends to) pass
unchanged; attention probabilities there are 0. Attention runs eagerly, as explicit dropout on the
attention probabilities, because SDPA draws its own masks inside the kernel. What is left between the two
runs is what padding itself does: longer rows in every matmul and softmax, and their rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_DROPOUT = F.dropout
_LENGTH: list[int | None] = [None]  # the longest real sequence of the batch in the forward pass


def _dropout(input, p=0.5, training=True, inplace=False):
    length = _LENGTH[0]
    if training and p > 0 and length is not None:
        if input.dim() == 3 and input.shape[1] > length:  # hidden states: (batch, tokens, width)
            out = input.clone()
            out[:, :length] = _DROPOUT(input[:, :length].contiguous(), p, True)
            return out
        if input.dim() == 4 and input.shape[2] > length and input.shape[3] > length:  # attention probs
            out = input.clone()
            out[:, :, :length, :length] = _DROPOUT(input[:, :, :length, :length].contiguous(), p, True)
            return out
    return _DROPOUT(input, p, training, inplace)


def _remember_length(module, args, kwargs):
    mask = kwargs.get("attention_mask")
    _LENGTH[0] = int(mask.sum(dim=1).max()) if isinstance(mask, torch.Tensor) else None


def install() -> None:
    from hf_finetune import pipeline

    load = pipeline.load_model

    def load_with_same_masks(prepared):
        model = load(prepared)
        model.set_attn_implementation("eager")
        model.register_forward_pre_hook(_remember_length, with_kwargs=True)
        return model

    pipeline.load_model = load_with_same_masks
    F.dropout = _dropout
