"""torch.nn's recurrent modules with fastrnn's kernels behind ``forward``, and ``swap``.

Each class subclasses the torch.nn class of its name and overrides ``forward`` alone:
construction, parameters, ``state_dict``, ``repr`` and device or dtype moves are torch's.
``forward`` checks its arguments as torch does (raising torch's exceptions), then runs
fastrnn's kernels, or torch's own forward where fastrnn cannot run the call.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ._function import PreparedParameters, StackCall, cached_parameters, prepare_parameters, run_stack
from ._packing import PackedLayout

__all__ = ["GRU", "LSTM", "RNN", "FallbackWarning", "GRUCell", "LSTMCell", "RNNCell", "swap"]

_FLOAT_DTYPES = (torch.float32, torch.float64)
_PLAIN_TENSOR_TYPES = (torch.Tensor, nn.Parameter)


class FallbackWarning(UserWarning):
    """A fastrnn.torch module ran torch's own forward, because fastrnn cannot run that call.

    Shown once per module, the first time it happens.
    """


# torch.func transforms (grad, vmap, ...) wrap tensors in a way numpy() cannot read.
_functorch_check = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)


def _is_functorch_wrapped(tensor: Tensor) -> bool:
    return bool(_functorch_check(tensor)) if _functorch_check is not None else False


def _tensors_in(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [item for item in value if isinstance(item, Tensor)]
    return []


def _fallback_reason(tensors: list[Tensor]) -> str | None:
    """Why fastrnn's kernels cannot run on these tensors, or None when they can."""
    autocast = torch.is_autocast_enabled("cpu")
    if not autocast:
        # The usual case, in one pass (this runs on every call); the checks below give
        # the reasons, in order.
        for tensor in tensors:
            if not (type(tensor) in _PLAIN_TENSOR_TYPES and tensor.dtype in _FLOAT_DTYPES
                    and tensor.is_cpu and not _is_functorch_wrapped(tensor)):
                break
        else:
            return None
    for tensor in tensors:
        if tensor.device.type != "cpu":
            return f"a tensor is on {tensor.device}, and fastrnn runs on the CPU only"
    for tensor in tensors:
        if tensor.dtype not in _FLOAT_DTYPES:
            return f"a tensor has dtype {tensor.dtype}, and fastrnn runs float32 and float64 only"
    if autocast:
        return "CPU autocast is enabled, and fastrnn does not cast"
    for tensor in tensors:
        if _is_functorch_wrapped(tensor):
            return "a torch.func transform (grad, vmap, ...) wraps the tensors, and fastrnn reads plain memory"
        if type(tensor) not in _PLAIN_TENSOR_TYPES:
            return f"a tensor is a {type(tensor).__name__}, a tensor subclass, and fastrnn reads plain memory"
    return None


_FASTRNN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep


def _stacklevel_of_caller() -> int:
    """The ``stacklevel`` that makes a warning raised by our caller point at the first
    frame outside fastrnn and torch: the user's call of the module."""
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_code.co_filename.startswith((_FASTRNN_DIR, _TORCH_DIR)):
        frame, level = frame.f_back, level + 1
    return level


def _forward_outside_the_compiler(module: nn.Module, input: Any, hx: Any) -> Any:
    return module._fastrnn_forward(input, hx)


# torch.compile cannot trace into NumPy and numba, so compiled code calls forward through
# this, where dynamo breaks the graph and everything below runs eagerly, unhooked.
# torch._disable_dynamo defers importing torch._dynamo (seconds) to its first call, which
# only happens once something else has imported it; torch.compiler.disable would import
# it along with this module.
_forward_for_the_compiler = torch._disable_dynamo(_forward_outside_the_compiler)


class _FastrnnModule:
    """What the layers and the cells share: the compiler hook and the fallback to torch."""

    def forward(self, input: Any, hx: Any = None) -> Any:
        # Inside a compiled region dynamo may also run this frame eagerly, with its hook
        # still set for every frame called from here, so the NumPy side goes through the
        # disabled entry whenever dynamo is loaded at all; without it, no frame is hooked.
        if torch.compiler.is_compiling() or "torch._dynamo" in sys.modules:
            return _forward_for_the_compiler(self, input, hx)
        return self._fastrnn_forward(input, hx)

    def _fastrnn_forward(self, input: Any, hx: Any) -> Any:
        raise NotImplementedError

    def _torch_forward(self, input: Any, hx: Any) -> Any:
        return super().forward(input, hx)

    def _fall_back(self, reason: str, input: Any, hx: Any) -> Any:
        """torch's own forward, with a warning the first time for this module."""
        if not self.__dict__.get("_fastrnn_fallback_warned", False):
            warnings.warn(
                f"fastrnn.torch.{type(self).__name__}: {reason}; this module runs torch's own forward for such "
                "calls (warned once per module)",
                FallbackWarning,
                stacklevel=_stacklevel_of_caller(),
            )
            # Straight into __dict__: a plain flag, not module state for nn.Module to track.
            self.__dict__["_fastrnn_fallback_warned"] = True
        return self._torch_forward(input, hx)

    def _prepare(self, data: Any, hx: Any, cell: str, names: tuple[str, ...],
                 params: list[Tensor]) -> tuple[PreparedParameters | None, str | None]:
        """``(prepared, reason)``: the checked parameters when fastrnn runs this call; else
        None, and the reason to warn about why torch's forward takes it (None for calls
        torch takes only to raise its own error, or that hold nothing to compute).

        The parameters are checked when they change, not on every call: a module's
        parameters are the same tensors from call to call, updated in place.
        """
        if not isinstance(data, Tensor):
            return None, None
        per_call = [data] if hx is None else [data, *_tensors_in(hx)]
        reason = _fallback_reason(per_call)
        if reason is not None:
            return None, reason
        prepared = cached_parameters(self, params)
        if prepared is None:
            reason = _fallback_reason(params)
            if reason is not None:
                return None, reason
            if len({param.dtype for param in params}) > 1:
                return None, None  # torch raises its own error
            prepared = prepare_parameters(self, cell, names, params)
        # Mixed dtypes and empty inputs: torch raises its own error (or, for an empty
        # batch, returns empty results).
        dtype = params[0].dtype
        for tensor in per_call:
            if tensor.dtype != dtype:
                return None, None
        return (prepared, None) if data.numel() else (None, None)


class _Stack(_FastrnnModule):
    """The forward of RNN, LSTM and GRU: torch's argument handling, fastrnn's kernels."""

    _cell_by_mode = {"RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu", "LSTM": "lstm", "GRU": "gru"}
    _state_count = 1

    def _input_dim_error(self, dim: int) -> ValueError:
        return ValueError(f"{type(self).__name__}: Expected input to be 2D or 3D, got {dim}D instead")

    def _batched_hx(self, hx: Any, is_batched: bool) -> Any:
        """``hx`` with a batch dimension, its dimensions checked as torch checks them."""
        if not is_batched:
            if hx.dim() != 2:
                raise RuntimeError(f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor")
            return hx.unsqueeze(1)
        if hx.dim() != 3:
            raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor")
        return hx

    def _dropout_seed(self) -> int | None:
        """A seed for this call's dropout masks, from torch's generator, so ``torch.manual_seed``
        makes a run reproducible; None (and nothing drawn) when no dropout applies."""
        if self.training and self.dropout > 0 and self.num_layers > 1:
            return int(torch.randint(0, 2**62, (1,)).item())
        return None

    def _fastrnn_forward(self, input: Tensor | PackedSequence, hx: Any) -> Any:
        packed = isinstance(input, PackedSequence)
        data = input.data if packed else input
        names = tuple(self._flat_weights_names)
        params = list(self._flat_weights)  # torch's forward reads them from here too
        cell = self._cell_by_mode[self.mode]
        prepared, reason = self._prepare(data, hx, cell, names, params)
        if prepared is None:
            return self._torch_forward(input, hx) if reason is None else self._fall_back(reason, input, hx)

        lengths, layout, is_batched, batch_first = None, None, True, self.batch_first
        if packed:
            if hx is None:
                self.check_input(data, input.batch_sizes)
            else:
                self.check_forward_args(data, hx, input.batch_sizes)
            # Packed data is time-major whatever batch_first says, as in torch.
            layout, batch_first = PackedLayout.of(input.batch_sizes, input.sorted_indices), False
            x, lengths = layout.pad(data), layout.lengths
        else:
            if input.dim() not in (2, 3):
                raise self._input_dim_error(input.dim())
            is_batched = input.dim() == 3
            x = input if is_batched else input.unsqueeze(0 if batch_first else 1)
            if hx is None:
                # torch's check_input judges dtype, dimensions and input size; _prepare has
                # matched the dtypes and x is 3-D here, so only the size is left to look at,
                # and torch's own check runs (and raises its own error) when it is wrong.
                if x.shape[-1] != self.input_size:
                    self.check_input(x, None)
            else:
                hx = self._batched_hx(hx, is_batched)
                self.check_forward_args(x, hx, None)

        states = (None,) * self._state_count if hx is None else tuple(hx) if self._state_count > 1 else (hx,)
        call = StackCall(
            param_names=names, state_count=self._state_count, prepared=prepared, batch_first=batch_first,
            dropout=float(self.dropout), training=self.training, seed=self._dropout_seed(), lengths=lengths,
        )
        output, finals = run_stack(call, x, states, params)
        if packed:
            output = PackedSequence(layout.pack(output), input.batch_sizes, input.sorted_indices,
                                    input.unsorted_indices)
        elif not is_batched:
            output = output.squeeze(0 if batch_first else 1)
            finals = tuple(final.squeeze(1) for final in finals)
        return output, (finals if self._state_count > 1 else finals[0])


class RNN(_Stack, nn.RNN):
    """``torch.nn.RNN`` whose forward runs on fastrnn's kernels.

    Same constructor, parameters, ``state_dict`` and results as ``torch.nn.RNN``;
    ``output, h_n = rnn(input, h_0)`` with padded or packed input. Calls fastrnn cannot
    run (tensors off the CPU, dtypes other than float32 and float64, autocast, tensor
    subclasses, torch.func transforms) go to ``torch.nn.RNN.forward`` with a
    :class:`FallbackWarning`, once per module.
    """

    def _input_dim_error(self, dim: int) -> ValueError:
        return ValueError(f"RNN: Expected input to be 2D or 3D, got {dim}D tensor instead")  # torch's words

    def forward(self, input: Tensor | PackedSequence, hx: Tensor | None = None
                ) -> tuple[Tensor | PackedSequence, Tensor]:
        return super().forward(input, hx)


class LSTM(_Stack, nn.LSTM):
    """``torch.nn.LSTM`` whose forward runs on fastrnn's kernels, ``proj_size`` included.

    ``output, (h_n, c_n) = lstm(input, (h_0, c_0))``; otherwise as :class:`RNN`.
    """

    _state_count = 2

    def _batched_hx(self, hx: Any, is_batched: bool) -> Any:
        dims = (hx[0].dim(), hx[1].dim())
        if is_batched:
            if dims != (3, 3):
                raise RuntimeError(
                    f"For batched 3-D input, hx and cx should also be 3-D but got ({dims[0]}-D, {dims[1]}-D) tensors"
                )
            return hx
        if dims != (2, 2):
            raise RuntimeError(
                f"For unbatched 2-D input, hx and cx should also be 2-D but got ({dims[0]}-D, {dims[1]}-D) tensors"
            )
        return hx[0].unsqueeze(1), hx[1].unsqueeze(1)

    def forward(self, input: Tensor | PackedSequence, hx: tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor | PackedSequence, tuple[Tensor, Tensor]]:
        return super().forward(input, hx)


class GRU(_Stack, nn.GRU):
    """``torch.nn.GRU`` whose forward runs on fastrnn's kernels; as :class:`RNN`."""

    def forward(self, input: Tensor | PackedSequence, hx: Tensor | None = None
                ) -> tuple[Tensor | PackedSequence, Tensor]:
        return super().forward(input, hx)


class _Cell(_FastrnnModule):
    """The forward of the cells: one step of a one-layer stack, its parameters under layer 0's names."""

    _state_count = 1

    def _cell_kind(self) -> str | None:
        raise NotImplementedError

    def _states_of(self, hx: Any) -> tuple | None:
        """``hx`` as one entry per state (Nones for zeros), dimensions checked as torch
        does; None when torch's own forward should judge it."""
        name = type(self).__name__
        if hx is None:
            return (None,) * self._state_count
        if self._state_count == 1:
            if not isinstance(hx, Tensor):
                return None
            if hx.dim() not in (1, 2):
                raise ValueError(f"{name}: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
            return (hx,)
        if not isinstance(hx, (tuple, list)) or len(hx) != 2 or not all(isinstance(v, Tensor) for v in hx):
            return None
        for index, value in enumerate(hx):
            if value.dim() not in (1, 2):
                raise ValueError(f"{name}: Expected hx[{index}] to be 1D or 2D, got {value.dim()}D instead")
        return tuple(hx)

    def _fastrnn_forward(self, input: Tensor, hx: Any) -> Any:
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if self.bias else ("weight_ih", "weight_hh")
        params = [getattr(self, name) for name in names]
        cell = self._cell_kind()
        if cell is None:
            return self._torch_forward(input, hx)
        # A cell is one step of a one-layer stack: its parameters go under layer 0's names.
        layer_names = tuple(f"{name}_l0" for name in names)
        prepared, reason = self._prepare(input, hx, cell, layer_names, params)
        if prepared is None:
            return self._fall_back(reason, input, hx) if reason is not None else self._torch_forward(input, hx)
        if input.dim() not in (1, 2):
            raise ValueError(f"{type(self).__name__}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        states = self._states_of(hx)
        if states is None:
            return self._torch_forward(input, hx)
        is_batched = input.dim() == 2
        x = input if is_batched else input.unsqueeze(0)
        states = tuple(state if state is None or is_batched else state.unsqueeze(0) for state in states)
        expected = (x.shape[0], self.hidden_size)
        if x.shape[1] != self.input_size or any(s is not None and tuple(s.shape) != expected for s in states):
            # torch's forward raises its own error for these shapes
            return self._torch_forward(input, hx)

        call = StackCall(param_names=layer_names, state_count=self._state_count, prepared=prepared)
        # One step of a one-layer stack: x as (1, B, I), each state as (1, B, H).
        _, finals = run_stack(call, x.unsqueeze(0), [None if s is None else s.unsqueeze(0) for s in states], params)
        new_states = tuple(final[0] if is_batched else final[0, 0] for final in finals)
        return new_states if self._state_count > 1 else new_states[0]


class RNNCell(_Cell, nn.RNNCell):
    """``torch.nn.RNNCell`` whose forward runs on fastrnn's kernels: ``h_1 = cell(input, h_0)``.

    ``input`` is (B, I) or (I,); ``h_0`` (B, H) or (H,), zeros when None. Calls fastrnn
    cannot run go to torch's forward, as for :class:`RNN`.
    """

    def _cell_kind(self) -> str | None:
        return {"tanh": "rnn_tanh", "relu": "rnn_relu"}.get(self.nonlinearity)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        return super().forward(input, hx)


class LSTMCell(_Cell, nn.LSTMCell):
    """``torch.nn.LSTMCell`` whose forward runs on fastrnn's kernels: ``h_1, c_1 = cell(input, (h_0, c_0))``."""

    _state_count = 2

    def _cell_kind(self) -> str | None:
        return "lstm"

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        return super().forward(input, hx)


class GRUCell(_Cell, nn.GRUCell):
    """``torch.nn.GRUCell`` whose forward runs on fastrnn's kernels: ``h_1 = cell(input, h_0)``."""

    def _cell_kind(self) -> str | None:
        return "gru"

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        return super().forward(input, hx)


_TWINS: dict[type[nn.Module], type[nn.Module]] = {
    nn.RNN: RNN, nn.LSTM: LSTM, nn.GRU: GRU, nn.RNNCell: RNNCell, nn.LSTMCell: LSTMCell, nn.GRUCell: GRUCell,
}


def swap(model: nn.Module) -> nn.Module:
    """Make every ``torch.nn`` RNN, LSTM, GRU and cell in ``model`` (``model`` included) its
    fastrnn.torch twin, in place, and return ``model``.

    Each module's class is changed and nothing else: its Parameter objects, hooks,
    training mode and device stay as they are, so an optimiser built before the swap
    keeps updating the same tensors. Only modules whose type is exactly the torch.nn
    class are swapped; a subclass may have its own forward, and is left alone.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"swap takes a torch.nn.Module, got {type(model).__name__}")
    for module in model.modules():
        twin = _TWINS.get(type(module))
        if twin is not None:
            module.__class__ = twin
    return model
