"""Layer API: drop-ins for ``torch.nn.RNN``, ``LSTM`` and ``GRU`` that own their parameters and gradients."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import _rebuild, _stack
from ._frontend import run_backward, run_forward
from ._spec import StackSpec
from ._validation import (
    check_dropout,
    check_dtype,
    check_nonlinearity,
    check_positive_int,
    check_proj_size,
    check_state_dict,
)


def check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r} of type {type(value).__name__}")
    return bool(value)


class Parameters:
    """Parameters and gradients by torch's names, with torch's initialisation and modes.

    Shared by the layers and the cells: ``state_dict``/``load_state_dict``, ``grads``/
    ``zero_grad``, ``train``/``eval``, ``dtype``, and every parameter as an attribute.
    """

    _owner_name = "layer"  # what error messages call the object

    def _init_parameters(self, spec: StackSpec, dtype: DTypeLike, seed: int | None) -> None:
        self.spec = spec
        self.dtype = check_dtype(dtype)
        self.generator = np.random.default_rng(seed)
        bound = 1.0 / math.sqrt(spec.hidden_size)
        self._params = _stack.KernelArrays(
            (name, self.generator.uniform(-bound, bound, size=shape).astype(self.dtype))
            for name, shape in self._parameter_shapes().items()
        )
        self.grads = _stack.KernelArrays((name, np.zeros_like(value)) for name, value in self._params.items())
        self.training = True

    def _parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.spec.parameter_shapes()

    def __getattr__(self, name: str) -> np.ndarray:
        params = self.__dict__.get("_params", {})
        if name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        # Assigning a parameter copies the values into the layer's own array, as
        # load_state_dict does: an attribute of its own would hide that array, which the
        # kernels go on reading, and the layer would silently compute with the old values.
        if not name.startswith("_"):  # the layer's own state (``_saved`` at every forward) goes straight in
            params = self.__dict__.get("_params")
            if params is not None and name in params:
                self._copy_parameters_in({name: value})
                return
        object.__setattr__(self, name, value)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters by torch's names and order. The arrays are the layer's own, like
        torch's tensors: updating them in place updates the layer."""
        return dict(self._params)

    def load_state_dict(self, state_dict: Mapping[str, ArrayLike]) -> None:
        """Copy parameters in from any array-likes (torch tensors included).

        All entries are checked before any is copied; missing, extra or mis-shaped entries
        raise ``ValueError`` naming them.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping of names to arrays, got {type(state_dict).__name__}")
        arrays = check_state_dict(self._parameter_shapes(), state_dict, self.dtype, self._owner_name)
        for name, array in arrays.items():
            np.copyto(self._params[name], array, casting="unsafe")

    def _copy_parameters_in(self, values: Mapping[str, ArrayLike]) -> None:
        """``load_state_dict`` for some of the parameters: each is checked, then copied in."""
        shapes = self._parameter_shapes()
        unknown = [name for name in values if name not in shapes]
        if unknown:
            raise ValueError(f"{self._owner_name} has no parameters {unknown}; its parameters are {list(shapes)}")
        arrays = check_state_dict({name: shapes[name] for name in values}, values, self.dtype, self._owner_name)
        for name, array in arrays.items():
            np.copyto(self._params[name], array, casting="unsafe")

    def named_parameters(self) -> Iterator[tuple[str, np.ndarray]]:
        return iter(self._params.items())

    def parameters(self) -> Iterator[np.ndarray]:
        return iter(self._params.values())

    def zero_grad(self) -> None:
        for grad in self.grads.values():
            grad.fill(0)

    def train(self, mode: bool = True):
        self.training = check_flag("mode", mode)
        return self

    def eval(self):
        return self.train(False)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle parameters, hyper-parameters, mode and generator; not gradients, nor what a forward kept."""
        return _rebuild.pickle_state(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        _rebuild.restore_pickle_state(self, state)


class _Recurrent(Parameters):
    """A stack of recurrent layers of one cell kind; see ``RNN``, ``LSTM`` and ``GRU``."""

    _engine = _stack

    def _init_stack(self, cell: str, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                    bidirectional, proj_size, dtype, seed) -> None:
        hidden_size = check_positive_int("hidden_size", hidden_size)
        spec = StackSpec(
            cell=cell,
            input_size=check_positive_int("input_size", input_size),
            hidden_size=hidden_size,
            num_layers=check_positive_int("num_layers", num_layers),
            bias=check_flag("bias", bias),
            bidirectional=check_flag("bidirectional", bidirectional),
            proj_size=check_proj_size(proj_size, hidden_size),
        )
        self.batch_first = check_flag("batch_first", batch_first)
        self.dropout = check_dropout(dropout)
        if self.dropout > 0 and spec.num_layers == 1:
            warnings.warn(
                f"dropout={self.dropout} has no effect with num_layers=1: dropout applies "
                "between layers, after every layer but the last",
                UserWarning,
                stacklevel=3,
            )
        self._init_parameters(spec, dtype, seed)
        self._saved = None

    # torch's read-only hyper-parameters
    input_size = property(lambda self: self.spec.input_size)
    hidden_size = property(lambda self: self.spec.hidden_size)
    num_layers = property(lambda self: self.spec.num_layers)
    bias = property(lambda self: self.spec.bias)
    bidirectional = property(lambda self: self.spec.bidirectional)

    def _repr_extras(self) -> list[str]:
        return []

    def __repr__(self) -> str:
        extras = [f"{self.input_size}", f"{self.hidden_size}"]
        if self.num_layers != 1:
            extras.append(f"num_layers={self.num_layers}")
        extras += self._repr_extras()
        for flag, default in (("bias", True), ("batch_first", False), ("bidirectional", False)):
            if getattr(self, flag) != default:
                extras.append(f"{flag}={getattr(self, flag)}")
        if self.dropout:
            extras.append(f"dropout={self.dropout}")
        extras.append(f"dtype={self.dtype}")
        return f"{type(self).__name__}({', '.join(extras)})"

    def _states_out(self, states: tuple):
        """The states as torch returns them: one array, or a tuple for LSTM's (h, c)."""
        return states[0] if len(states) == 1 else states

    def forward(self, x: ArrayLike, hx: Any = None, *, requires_grad: bool | None = None,
                lengths: ArrayLike | None = None):
        """``output, h_n = layer(x, hx)`` (LSTM: ``output, (h_n, c_n)``).

        ``requires_grad`` defaults to ``self.training``: in eval mode forward keeps no
        per-step state, so pass ``requires_grad=True`` to differentiate an eval-mode call.

        ``lengths`` (B integers in [0, T], in any order) runs each sequence of a padded
        batch for its own length only, with torch's ``pack_padded_sequence`` results:
        ``output`` is zero past each sequence's end, the final states are those after its
        last step, and the reverse direction starts at that step. A length of 0 gives zero
        output and the initial state as final state.
        """
        keep = self.training if requires_grad is None else bool(requires_grad)
        output, finals, saved = run_forward(
            self._engine, self.spec, x, hx, self._params, dtype=self.dtype,
            batch_first=self.batch_first, dropout=self.dropout, training=self.training,
            requires_grad=keep, generator=self.generator, lengths=lengths,
        )
        self._saved = saved
        return output, self._states_out(finals)

    def __call__(self, x: ArrayLike, hx: Any = None, *, requires_grad: bool | None = None,
                 lengths: ArrayLike | None = None):
        return self.forward(x, hx, requires_grad=requires_grad, lengths=lengths)

    def backward(self, grad_output: ArrayLike, grad_state: Any = None):
        """Differentiate the most recent forward that kept its state.

        Returns ``(grad_x, grad_hx)`` (LSTM: ``(grad_x, (grad_h_0, grad_c_0))``) and
        accumulates parameter gradients into ``grads`` until ``zero_grad()``.
        """
        if self._saved is None:
            raise ValueError(
                "backward needs a forward that kept its state, got none: call the layer "
                "in training mode or with requires_grad=True first"
            )
        grad_x, grad_initials, _ = run_backward(self._saved, grad_output, grad_state, self.grads)
        return grad_x, self._states_out(grad_initials)


class RNN(_Recurrent):
    """Multi-layer Elman RNN with tanh or ReLU, matching ``torch.nn.RNN``.

    ``h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)``.

    Same arguments, shapes and parameter names as torch. ``forward`` returns
    ``(output, h_n)``; ``backward(grad_output, grad_h_n=None)`` returns ``(grad_x, grad_hx)``
    and accumulates parameter gradients into ``grads`` until ``zero_grad()``.
    In eval mode (or with ``requires_grad=False``) forward keeps nothing for backward.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        dtype: DTypeLike = np.float32,
        seed: int | None = None,
    ) -> None:
        cell = check_nonlinearity(nonlinearity)
        self.nonlinearity = nonlinearity
        self._init_stack(cell, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0,
                         dtype, seed)

    def _repr_extras(self) -> list[str]:
        return [f"nonlinearity={self.nonlinearity!r}"] if self.nonlinearity != "tanh" else []

    def forward(
        self, x: ArrayLike, hx: ArrayLike | None = None, *, requires_grad: bool | None = None,
        lengths: ArrayLike | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``output, h_n = rnn(x, hx)``; see the class docstring."""
        return super().forward(x, hx, requires_grad=requires_grad, lengths=lengths)

    def backward(self, grad_output: ArrayLike, grad_h_n: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Differentiate the most recent forward; returns ``(grad_x, grad_hx)``."""
        return super().backward(grad_output, grad_h_n)


class LSTM(_Recurrent):
    """Multi-layer LSTM, matching ``torch.nn.LSTM``, projection (``proj_size``) included.

    Gates in torch's order i, f, g, o: ``c_t = f c_{t-1} + i g``, ``h_t = o tanh(c_t)``,
    projected by ``weight_hr`` to ``proj_size`` values when ``proj_size > 0``.
    ``forward(x, (h_0, c_0))`` returns ``(output, (h_n, c_n))``; ``backward(grad_output,
    (grad_h_n, grad_c_n))`` returns ``(grad_x, (grad_h_0, grad_c_0))``, either gradient
    may be None (zeros), and the pair may be omitted.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        *,
        dtype: DTypeLike = np.float32,
        seed: int | None = None,
    ) -> None:
        self._init_stack("lstm", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, dtype, seed)

    proj_size = property(lambda self: self.spec.proj_size)

    def _repr_extras(self) -> list[str]:
        return [f"proj_size={self.proj_size}"] if self.proj_size else []

    def forward(
        self, x: ArrayLike, hx: tuple[ArrayLike, ArrayLike] | None = None, *, requires_grad: bool | None = None,
        lengths: ArrayLike | None = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """``output, (h_n, c_n) = lstm(x, (h_0, c_0))``; see the class docstring."""
        return super().forward(x, hx, requires_grad=requires_grad, lengths=lengths)

    def backward(
        self, grad_output: ArrayLike, grad_state: tuple[ArrayLike | None, ArrayLike | None] | None = None
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Differentiate the most recent forward; returns ``(grad_x, (grad_h_0, grad_c_0))``."""
        return super().backward(grad_output, grad_state)


class GRU(_Recurrent):
    """Multi-layer GRU, matching ``torch.nn.GRU``: gates r, z, n in torch's order and formula,
    ``n = tanh(x W_in^T + b_in + r (h W_hn^T + b_hn))``, ``h' = (1 - z) n + z h``.

    ``forward`` returns ``(output, h_n)``; ``backward(grad_output, grad_h_n=None)`` returns
    ``(grad_x, grad_hx)``, as for ``RNN``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        dtype: DTypeLike = np.float32,
        seed: int | None = None,
    ) -> None:
        self._init_stack("gru", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0,
                         dtype, seed)

    def forward(
        self, x: ArrayLike, hx: ArrayLike | None = None, *, requires_grad: bool | None = None,
        lengths: ArrayLike | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``output, h_n = gru(x, hx)``; see the class docstring."""
        return super().forward(x, hx, requires_grad=requires_grad, lengths=lengths)

    def backward(self, grad_output: ArrayLike, grad_h_n: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Differentiate the most recent forward; returns ``(grad_x, grad_hx)``."""
        return super().backward(grad_output, grad_h_n)
