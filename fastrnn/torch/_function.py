"""The bridge between torch tensors and fastrnn's kernels, autograd included.

Tensors go to the kernels as NumPy views of their memory (``tensor.detach().numpy()``) and
results come back as tensors over the kernels' own arrays (``torch.from_numpy``), so the
only copies are the ones the kernels make when an array is not laid out as they need.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from .. import _parallel, _stack
from .._frontend import run_backward, run_forward
from .._spec import StackSpec
from .._validation import spec_from_params


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no truth value to compare by
class PreparedParameters:
    """A module's parameters as checked NumPy views of their tensors, and the stack they describe.

    ``key`` says which tensors they are (see ``_parameters_key``). The views share the
    tensors' memory, so they see in-place updates (an optimiser's step) without being
    made again.
    """

    key: list
    spec: StackSpec
    arrays: dict[str, np.ndarray]


def _parameters_key(params: Sequence[torch.Tensor]) -> list:
    # Which tensor objects, over which memory, with which shape and strides: a tensor
    # replaced, moved, cast or given new ``.data`` changes one of them. The cached views
    # keep the old memory alive, so its address cannot be taken by another tensor.
    # (One flat list: this runs on every call.)
    key = []
    for param in params:
        key += (id(param), param.data_ptr(), param.shape, param.stride())
    return key


# Per module, weakly: a module's copies (deepcopy, pickle) do not carry another's views.
_prepared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cached_parameters(owner: torch.nn.Module, params: Sequence[torch.Tensor]) -> PreparedParameters | None:
    """The parameters ``prepare_parameters`` last made for ``owner``, if they are still ``params``."""
    prepared = _prepared.get(owner)
    return prepared if prepared is not None and prepared.key == _parameters_key(params) else None


def prepare_parameters(owner: torch.nn.Module, cell: str, names: Sequence[str],
                       params: Sequence[torch.Tensor]) -> PreparedParameters:
    """Check ``params`` (named ``names``, torch's names) and keep them as ``owner``'s, for
    ``cached_parameters`` to return while they match."""
    spec, arrays = spec_from_params({name: _as_array(param) for name, param in zip(names, params, strict=True)}, cell)
    prepared = PreparedParameters(_parameters_key(params), spec, _stack.KernelArrays(arrays))
    _prepared[owner] = prepared
    return prepared


@dataclass(eq=False)  # not frozen: made on every call, and a frozen dataclass sets each field through object
class StackCall:
    """Everything about one call of fastrnn's front end except its tensors.

    ``param_names`` are the torch names of the parameters passed, in order, and
    ``prepared`` their checked views with the stack (and so the cell) they describe;
    ``state_count`` is 2 for LSTM's (h, c), else 1. ``seed`` seeds the dropout masks (None
    when dropout is off) and ``lengths`` (int64, one per sequence, or None) runs a padded
    batch as packed sequences.
    """

    param_names: tuple[str, ...]
    state_count: int
    prepared: PreparedParameters
    batch_first: bool = False
    dropout: float = 0.0
    training: bool = False
    seed: int | None = None
    lengths: np.ndarray | None = None

    def forward(self, x: np.ndarray, hx, requires_grad: bool):
        """``(output, finals, saved)`` from fastrnn's front end, ``finals`` one array per state.

        The parameters were checked when they were prepared, and the module checked the
        rest as torch does, so the call goes straight to the front end, which checks the
        input and state shapes.
        """
        generator = None if self.seed is None else np.random.default_rng(self.seed)
        return run_forward(
            _stack, self.prepared.spec, x, hx, self.prepared.arrays, dtype=x.dtype, batch_first=self.batch_first,
            dropout=self.dropout, training=self.training, requires_grad=requires_grad, generator=generator,
            lengths=self.lengths,
        )

    def backward(self, saved, grad_output: np.ndarray, grad_state):
        """``(grad_x, grad_initials, param_grads)``, ``grad_initials`` one array per state,
        on no more threads than torch's (autograd may run this on a thread of its own)."""
        return on_torch_threads(run_backward, saved, grad_output, grad_state, None)


def on_torch_threads(function, *args):
    """``function(*args)`` on no more of fastrnn's threads than ``torch.get_num_threads()``."""
    threads = torch.get_num_threads()
    if threads < _parallel.get_num_threads():
        with _parallel.thread_limit(threads):
            return function(*args)
    return function(*args)


def _as_array(tensor: torch.Tensor) -> np.ndarray:
    """A NumPy view of a CPU tensor's memory, strides included; the kernels copy only if they must.

    A tensor may carry a lazy negation (autograd hands gradients on as neg views), which
    numpy() refuses; resolve_neg() materialises it. Each step is taken only when needed:
    this runs several times per call.
    """
    if tensor.requires_grad:
        tensor = tensor.detach()
    if tensor.is_neg():
        tensor = tensor.resolve_neg()
    return tensor.numpy()


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor over ``array``'s memory.

    fastrnn hands back the output read-only when backward will read it, so that NumPy
    callers cannot corrupt their gradients; torch warns on read-only arrays and has its
    own guard instead (the output is saved for backward, so an in-place change to it
    fails there). So a writable view is made of it, which costs no copy.
    """
    if not array.flags.writeable:
        view = array.view()
        try:
            view.flags.writeable = True
        except ValueError:  # memory NumPy does not own as writable: copy it
            view = array.copy()
        array = view
    return torch.from_numpy(array)


def _states_tuple(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def _state_argument(states: Sequence[torch.Tensor | None]):
    """The front end's state argument for the tensors of each state (None: zeros): one
    array, a pair for LSTM, or None when no state is given."""
    # The usual call: nothing to convert, no list to build. (Not ``states.count(None)``,
    # which compares each tensor with None through torch's __eq__: 10-15 µs a state.)
    if all(state is None for state in states):
        return None
    arrays = [None if state is None else _as_array(state) for state in states]
    return arrays[0] if len(arrays) == 1 else tuple(arrays)


def _run_arrays(call: StackCall, x: torch.Tensor, states: Sequence[torch.Tensor | None], requires_grad: bool):
    output, finals, saved = call.forward(_as_array(x), _state_argument(states), requires_grad)
    return _as_tensor(output), tuple([_as_tensor(final) for final in finals]), saved


class StackFunction(torch.autograd.Function):
    """fastrnn's forward and backward kernels as one autograd node.

    ``apply(call, x, *states, *params)``: ``states`` are ``call.state_count`` tensors or
    Nones (zeros), ``params`` follow ``call.param_names``. Returns ``(output, *finals)``.
    """

    @staticmethod
    def forward(ctx, call: StackCall, x: torch.Tensor, *tensors: torch.Tensor | None):
        # The parameters follow the states so that autograd tracks them; the kernels read
        # them through ``call.prepared``, views of the same memory.
        states = tensors[: call.state_count]
        output, finals, saved = _run_arrays(call, x, states, requires_grad=True)
        ctx.call = call
        ctx.fastrnn_saved = saved
        # Outputs the loss does not use (h_n, c_n, often) then arrive in backward as None,
        # not as zero tensors that would be converted and read.
        ctx.set_materialize_grads(False)
        # The kernels' record reads the input, the states and the parameters through
        # views of these tensors' memory, and the output is its own buffer: saving them
        # lets torch's version counters refuse a backward after any of them was changed
        # in place, as torch's own RNNs do.
        ctx.save_for_backward(x, *tensors, output)
        return (output, *finals)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor | None, *grad_finals: torch.Tensor | None):
        # once_differentiable makes the gradients raise when differentiated, but only when
        # a gradient arriving here requires grad. Under create_graph that is not always so
        # (a loss that is a plain sum of the output), and the gradients would then pass for
        # constants in a double backward; a marker that requires grad makes it always so.
        marker = torch.empty(0, requires_grad=True) if torch.is_grad_enabled() else None
        return _first_order_backward(ctx, marker, grad_output, *grad_finals)


@once_differentiable
def _first_order_backward(ctx, marker: torch.Tensor | None, grad_output: torch.Tensor | None,
                          *grad_finals: torch.Tensor | None):
    saved = ctx.saved_tensors  # the read raises if a saved tensor was modified in place
    call: StackCall = ctx.call
    grad_state = _state_argument(grad_finals)
    if grad_output is None:
        grad_output = torch.zeros_like(saved[-1])  # the output, saved last
    grad_x, grad_initials, param_grads = call.backward(ctx.fastrnn_saved, _as_array(grad_output), grad_state)
    needs = ctx.needs_input_grad  # (call, x, *states, *params)
    grads: list[torch.Tensor | None] = [None, torch.from_numpy(grad_x) if needs[1] else None]
    for need, grad in zip(needs[2: 2 + call.state_count], _states_tuple(grad_initials), strict=True):
        grads.append(torch.from_numpy(grad) if need else None)
    for need, name in zip(needs[2 + call.state_count:], call.param_names, strict=True):
        grads.append(torch.from_numpy(param_grads[name]) if need else None)
    return tuple(grads)


def run_stack(call: StackCall, x: torch.Tensor, states: Sequence[torch.Tensor | None],
              params: Sequence[torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """``(output, finals)`` of one fastrnn call on tensors, differentiable when autograd needs it.

    With grad mode off (``no_grad``, ``inference_mode``) or nothing requiring grad, the
    kernels run their inference path and keep no per-step state. The kernels use no more
    threads than torch's own ``torch.get_num_threads()``, as torch's modules would.
    """
    return on_torch_threads(_run_stack, call, x, states, params)


def _run_stack(call: StackCall, x: torch.Tensor, states: Sequence[torch.Tensor | None],
               params: Sequence[torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    if torch.is_grad_enabled():
        tracked = [x, *(state for state in states if state is not None), *params]
        if any(tensor.requires_grad for tensor in tracked):
            output, *finals = StackFunction.apply(call, x, *states, *params)
            return output, tuple(finals)
    output, finals, _ = _run_arrays(call, x, states, requires_grad=False)
    return output, finals
