"""Layer API: a drop-in for ``torch.nn.RNN`` that owns its parameters and gradients."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import _stack
from ._frontend import run_backward, run_forward
from ._spec import StackSpec
from ._validation import check_dropout, check_dtype, check_nonlinearity, check_positive_int, check_state_dict


def _check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r} of type {type(value).__name__}")
    return bool(value)


class RNN:
    """Multi-layer Elman RNN with tanh or ReLU, matching ``torch.nn.RNN``.

    ``h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)``.

    Same arguments, shapes and parameter names as torch. ``forward`` returns
    ``(output, h_n)``; ``backward(grad_output, grad_h_n=None)`` returns ``(grad_x, grad_hx)``
    and accumulates parameter gradients into ``grads`` until ``zero_grad()``.
    In eval mode (or with ``requires_grad=False``) forward keeps nothing for backward.
    """

    _engine = _stack

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
        self.spec = StackSpec(
            cell=check_nonlinearity(nonlinearity),
            input_size=check_positive_int("input_size", input_size),
            hidden_size=check_positive_int("hidden_size", hidden_size),
            num_layers=check_positive_int("num_layers", num_layers),
            bias=_check_flag("bias", bias),
            bidirectional=_check_flag("bidirectional", bidirectional),
        )
        self.nonlinearity = nonlinearity
        self.batch_first = _check_flag("batch_first", batch_first)
        self.dropout = check_dropout(dropout)
        self.dtype = check_dtype(dtype)
        if self.dropout > 0 and self.spec.num_layers == 1:
            warnings.warn(
                f"dropout={self.dropout} has no effect with num_layers=1: dropout applies "
                "between layers, after every layer but the last",
                UserWarning,
                stacklevel=2,
            )
        self.generator = np.random.default_rng(seed)
        bound = 1.0 / math.sqrt(self.spec.hidden_size)
        self._params = {
            name: self.generator.uniform(-bound, bound, size=shape).astype(self.dtype)
            for name, shape in self.spec.parameter_shapes().items()
        }
        self.grads = {name: np.zeros_like(value) for name, value in self._params.items()}
        self.training = True
        self._saved = None

    # torch's read-only hyper-parameters
    input_size = property(lambda self: self.spec.input_size)
    hidden_size = property(lambda self: self.spec.hidden_size)
    num_layers = property(lambda self: self.spec.num_layers)
    bias = property(lambda self: self.spec.bias)
    bidirectional = property(lambda self: self.spec.bidirectional)

    def __getattr__(self, name: str) -> np.ndarray:
        params = self.__dict__.get("_params", {})
        if name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    def __repr__(self) -> str:
        extras = [f"{self.input_size}", f"{self.hidden_size}"]
        if self.num_layers != 1:
            extras.append(f"num_layers={self.num_layers}")
        if self.nonlinearity != "tanh":
            extras.append(f"nonlinearity={self.nonlinearity!r}")
        for flag, default in (("bias", True), ("batch_first", False), ("bidirectional", False)):
            if getattr(self, flag) != default:
                extras.append(f"{flag}={getattr(self, flag)}")
        if self.dropout:
            extras.append(f"dropout={self.dropout}")
        extras.append(f"dtype={self.dtype}")
        return f"{type(self).__name__}({', '.join(extras)})"

    # ------------------------------------------------------------------ parameters
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
        arrays = check_state_dict(self.spec, state_dict, self.dtype)
        for name, array in arrays.items():
            np.copyto(self._params[name], array, casting="unsafe")

    def named_parameters(self) -> Iterator[tuple[str, np.ndarray]]:
        return iter(self._params.items())

    def parameters(self) -> Iterator[np.ndarray]:
        return iter(self._params.values())

    def zero_grad(self) -> None:
        for grad in self.grads.values():
            grad.fill(0)

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> RNN:
        self.training = _check_flag("mode", mode)
        return self

    def eval(self) -> RNN:
        return self.train(False)

    # ------------------------------------------------------------------ compute
    def forward(
        self, x: ArrayLike, hx: ArrayLike | None = None, *, requires_grad: bool | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``output, h_n = rnn(x, hx)``.

        ``requires_grad`` defaults to ``self.training``: in eval mode forward keeps no
        per-step state, so pass ``requires_grad=True`` to differentiate an eval-mode call.
        """
        keep = self.training if requires_grad is None else bool(requires_grad)
        output, h_n, saved = run_forward(
            self._engine, self.spec, x, hx, self._params, dtype=self.dtype,
            batch_first=self.batch_first, dropout=self.dropout, training=self.training,
            requires_grad=keep, generator=self.generator,
        )
        self._saved = saved
        return output, h_n

    __call__ = forward

    def backward(
        self, grad_output: ArrayLike, grad_h_n: ArrayLike | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Differentiate the most recent forward; returns ``(grad_x, grad_hx)``."""
        if self._saved is None:
            raise ValueError(
                "backward needs a forward that kept its state, got none: call the layer "
                "in training mode or with requires_grad=True first"
            )
        grad_x, grad_hx, _ = run_backward(self._saved, grad_output, grad_h_n, self.grads)
        return grad_x, grad_hx
