"""Where the embeddings, the transformer layers, the pooler and the task head are, in any encoder.

Found by structure, not by a table of architectures:

- the **base model** is ``model.<base_model_prefix>`` (``bert``, ``roberta``, ``distilbert``, ``deberta``...);
  every parameter outside it belongs to the **head** (``classifier``, ``pre_classifier``, ``qa_outputs``,
  DeBERTa's ``pooler``, which is new at fine-tuning time);
- the **layers** are the ``nn.ModuleList`` of identical blocks holding the most parameters in the base
  (``encoder.layer``, ``transformer.layer``), bottom to top in list order;
- inside the base, a parameter whose path names an embedding, or that sits in a module registered before
  the one holding the layers, belongs to the **embeddings**; one registered after it (``pooler``, a final
  norm) to the **pooler**; one next to the layers inside their own container (DeBERTa-v2's relative-position
  LayerNorm and conv, shared by every layer) joins the embeddings.

Works on a model built on the ``meta`` device, so the whole strategy is checked before weights load.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

EMBEDDINGS, POOLER, HEAD = "embeddings", "pooler", "head"
PROMPT = "prompt"  # a peft prompt encoder (virtual tokens), outside the transformers model


def layer_part(index: int) -> str:
    return f"layer.{index}"


@dataclass
class Layout:
    """Each parameter's part: ``embeddings``, ``layer.<i>`` (0 = bottom), ``pooler`` or ``head``."""

    architecture: str
    num_layers: int
    #: parameter name -> part
    parts: dict[str, str]
    #: part -> the modules it covers, for display
    modules: dict[str, list[str]] = field(default_factory=dict)
    #: why "layer N" has no meaning for this model (shared layers), else None
    layer_sharing: str | None = None
    #: full name of the ModuleList holding the layers (``bert.encoder.layer``)
    layers_module: str = ""

    def order(self) -> list[str]:
        """Parts bottom to top: (prompt), embeddings, layer.0 ... layer.L-1, pooler, head (those present)."""
        present = set(self.parts.values())
        ordered = [PROMPT, EMBEDDINGS, *(layer_part(i) for i in range(self.num_layers)), POOLER, HEAD]
        return [p for p in ordered if p in present]

    def params_of(self, part: str) -> list[str]:
        return [name for name, p in self.parts.items() if p == part]


class LayoutError(ValueError):
    """The model's structure does not support a layer-indexed strategy."""


def discover_layout(model: nn.Module) -> Layout:
    architecture = type(model).__name__
    prefix = getattr(model, "base_model_prefix", "") or ""
    base = getattr(model, prefix, None) if prefix else None
    if not isinstance(base, nn.Module) or base is model:
        base, prefix = model, ""
    container_name, container = _layer_container(base)
    full = (lambda rel: f"{prefix}.{rel}") if prefix else (lambda rel: rel)

    parts: dict[str, str] = {}
    modules: dict[str, list[str]] = {}

    def assign(name: str, part: str, module: str) -> None:
        parts[name] = part
        shown = modules.setdefault(part, [])
        if module not in shown:
            shown.append(module)

    if container is None:
        raise LayoutError(f"{architecture}: found no list of transformer layers in its base model.")
    children = [name for name, _ in base.named_children()]
    container_top = container_name.split(".")[0]
    container_index = children.index(container_top)
    base_params = {id(p) for p in base.parameters()}
    for name, param in model.named_parameters():
        if base is not model and id(param) not in base_params:
            assign(name, HEAD, name.split(".")[0])
            continue
        rel = name[len(prefix) + 1 :] if prefix else name
        if rel.startswith(container_name + "."):
            index = int(rel[len(container_name) + 1 :].split(".")[0])
            assign(name, layer_part(index), full(f"{container_name}.{index}"))
            continue
        pieces = rel.split(".")
        top = pieces[0]
        position = children.index(top) if top in children else container_index
        if any("embed" in piece.lower() for piece in pieces[:-1]) or position < container_index:
            owner = full(top if top != container_top else ".".join(pieces[:2]))
            assign(name, EMBEDDINGS, owner)
        elif position > container_index:
            assign(name, POOLER, full(top))
        else:  # next to the layers, shared by all of them
            assign(name, EMBEDDINGS, full(".".join(pieces[:2])))

    num_layers = len(container)
    config = getattr(model, "config", None)
    declared = getattr(config, "num_hidden_layers", None)
    sharing = None
    if isinstance(declared, int) and declared != num_layers:
        sharing = (
            f"{architecture} runs {declared} layers with {num_layers} shared set(s) of weights "
            f"({full(container_name)}), so a layer index has no meaning for it"
        )
    return Layout(architecture, num_layers, parts, modules, sharing, full(container_name))


def _layer_container(base: nn.Module) -> tuple[str, nn.ModuleList | None]:
    """The ModuleList of same-class blocks with the most parameters (the first one on ties)."""
    best_name, best, best_size = "", None, 0
    for name, module in base.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size > best_size:
            best_name, best, best_size = name, module, size
    return best_name, best
