"""The static description of a recurrent stack, shared by the layer and functional APIs."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

# Cell kind -> number of gate blocks stacked in each weight matrix (torch's layout).
GATE_COUNTS = {"rnn_tanh": 1, "rnn_relu": 1}
NONLINEARITIES = {"tanh": "rnn_tanh", "relu": "rnn_relu"}


@dataclass(frozen=True)
class StackSpec:
    cell: str
    input_size: int
    hidden_size: int
    num_layers: int
    bias: bool
    bidirectional: bool

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def gate_size(self) -> int:
        return GATE_COUNTS[self.cell] * self.hidden_size

    def layer_input_size(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.directions * self.hidden_size

    def direction_names(self, layer: int, direction: int) -> tuple[str, ...]:
        """Parameter names of one layer-direction, in torch's order."""
        return self._names[layer][direction]

    def kind_names(self, layer: int) -> tuple[tuple[str, ...], ...]:
        """Parameter names of one layer by kind (weight_ih, weight_hh[, bias_ih, bias_hh]), each per direction."""
        return self._kind_names[layer]

    @cached_property
    def _kind_names(self) -> tuple[tuple[tuple[str, ...], ...], ...]:
        return tuple(tuple(zip(*directions, strict=True)) for directions in self._names)

    @cached_property
    def _names(self) -> tuple[tuple[tuple[str, ...], ...], ...]:
        # Built once per spec: every forward and backward looks them up.
        return tuple(
            tuple(self._build_direction_names(layer, direction) for direction in range(self.directions))
            for layer in range(self.num_layers)
        )

    def _build_direction_names(self, layer: int, direction: int) -> tuple[str, ...]:
        suffix = f"l{layer}" + ("_reverse" if direction == 1 else "")
        names = (f"weight_ih_{suffix}", f"weight_hh_{suffix}")
        if self.bias:
            names += (f"bias_ih_{suffix}", f"bias_hh_{suffix}")
        return names

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter name mapped to its shape, in torch's ``state_dict`` order."""
        shapes: dict[str, tuple[int, ...]] = {}
        for layer in range(self.num_layers):
            for direction in range(self.directions):
                names = self.direction_names(layer, direction)
                shapes[names[0]] = (self.gate_size, self.layer_input_size(layer))
                shapes[names[1]] = (self.gate_size, self.hidden_size)
                if self.bias:
                    shapes[names[2]] = (self.gate_size,)
                    shapes[names[3]] = (self.gate_size,)
        return shapes
