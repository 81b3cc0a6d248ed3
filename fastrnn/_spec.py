"""The static description of a recurrent stack, shared by the layer and functional APIs."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from ._cells import CELL_KINDS, CellKind

NONLINEARITIES = {"tanh": "rnn_tanh", "relu": "rnn_relu"}


@dataclass(frozen=True)
class StackSpec:
    cell: str
    input_size: int
    hidden_size: int
    num_layers: int
    bias: bool
    bidirectional: bool
    proj_size: int = 0

    @cached_property
    def kind(self) -> CellKind:
        return CELL_KINDS[self.cell]

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @cached_property
    def gate_size(self) -> int:
        return self.kind.gates * self.hidden_size

    @cached_property
    def output_size(self) -> int:
        """Width of ``h`` per direction: ``proj_size`` when projected, else ``hidden_size``."""
        return self.proj_size or self.hidden_size

    @cached_property
    def state_sizes(self) -> tuple[int, ...]:
        """Width of each state of ``kind.states``: ``h`` is ``output_size``, any other ``hidden_size``."""
        return tuple(self.output_size if name == "h" else self.hidden_size for name in self.kind.states)

    def state_shapes(self, batch: int) -> tuple[tuple[int, int, int], ...]:
        """Time-major shape of each initial or final state: (L*D, B, width)."""
        stacked = self.num_layers * self.directions
        return tuple((stacked, batch, size) for size in self.state_sizes)

    def layer_input_size(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.directions * self.output_size

    @cached_property
    def parameter_kinds(self) -> tuple[str, ...]:
        """The parameter kinds each layer-direction has, in torch's order."""
        kinds = ("weight_ih", "weight_hh")
        if self.bias:
            kinds += ("bias_ih", "bias_hh")
        if self.proj_size:
            kinds += ("weight_hr",)
        return kinds

    def direction_names(self, layer: int, direction: int) -> dict[str, str]:
        """Parameter kind -> torch's name, for one layer-direction."""
        return self._names[layer][direction]

    def kind_names(self, layer: int) -> dict[str, tuple[str, ...]]:
        """Parameter kind -> its name in each direction of one layer."""
        return self._kind_names[layer]

    @cached_property
    def _kind_names(self) -> tuple[dict[str, tuple[str, ...]], ...]:
        return tuple(
            {kind: tuple(names[kind] for names in directions) for kind in self.parameter_kinds}
            for directions in self._names
        )

    @cached_property
    def _names(self) -> tuple[tuple[dict[str, str], ...], ...]:
        # Built once per spec: every forward and backward looks them up.
        return tuple(
            tuple(self._build_direction_names(layer, direction) for direction in range(self.directions))
            for layer in range(self.num_layers)
        )

    def _build_direction_names(self, layer: int, direction: int) -> dict[str, str]:
        suffix = f"l{layer}" + ("_reverse" if direction == 1 else "")
        return {kind: f"{kind}_{suffix}" for kind in self.parameter_kinds}

    def kind_shape(self, layer: int, kind: str) -> tuple[int, ...]:
        """The shape of one parameter kind in ``layer``."""
        return {
            "weight_ih": (self.gate_size, self.layer_input_size(layer)),
            "weight_hh": (self.gate_size, self.output_size),
            "bias_ih": (self.gate_size,),
            "bias_hh": (self.gate_size,),
            "weight_hr": (self.proj_size, self.hidden_size),
        }[kind]

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter name mapped to its shape, in torch's ``state_dict`` order."""
        return self._shapes.copy()

    @cached_property
    def _shapes(self) -> dict[str, tuple[int, ...]]:
        return {
            name: self.kind_shape(layer, kind)
            for layer in range(self.num_layers)
            for direction in range(self.directions)
            for kind, name in self.direction_names(layer, direction).items()
        }

