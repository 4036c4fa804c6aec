"""Fine-tuning strategies as pure functions of a model: layer discovery, the plan (freezing, layer-wise
learning rates, weight decay), and the gradual-unfreezing callback."""

from .layers import Layout, discover_layout
from .plan import GroupPlan, StrategyPlan, make_plan

__all__ = ["GroupPlan", "Layout", "StrategyPlan", "discover_layout", "make_plan"]
