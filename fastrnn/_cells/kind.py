"""The description of a cell kind (see the package docstring)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# Every parameter kind a layer-direction can have, in torch's ``state_dict`` order.
PARAMETER_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


@dataclass(frozen=True)
class CellKind:
    """What the plumbing needs to know about one kind of recurrent cell.

    ``gates`` blocks of ``hidden_size`` rows are stacked in ``weight_ih``, ``weight_hh``
    and the biases, in torch's order. ``states`` names the recurrent states, ``h``
    first: ``h`` is the output (``proj_size`` wide when projected), any other state is
    ``hidden_size`` wide.
    """

    name: str
    gates: int
    states: tuple[str, ...]
    activation: str
    separate_hidden_bias: bool  # the hidden bias sits inside a gate product (GRU's b_hn)
    takes_proj_size: bool
    kernel_module: str  # imported on first use, so unused cells compile nothing
    reference_step: Callable
    reference_step_backward: Callable
