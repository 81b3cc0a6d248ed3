"""The implementations ``python -m fastrnn bench`` times, each built from one set of weights.

Every builder takes a :class:`Case` and torch-named weights (``weight_ih_l0``, ...), so all
of them compute the same function, and returns the calls to time: forward, and
forward+backward, or None for a peer that only runs inference. torch, jax and onnxruntime
are imported inside the builders, so ``import fastrnn`` needs none of them.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType

import numpy as np

# The layer class of each cell, looked up by name in fastrnn, fastrnn.reference and
# torch.nn alike. ONNX names its operators the same way.
LAYER_CLASSES = {"rnn_tanh": "RNN", "rnn_relu": "RNN", "lstm": "LSTM", "gru": "GRU"}
CELLS = tuple(LAYER_CLASSES)
CELL_TITLES = {"rnn_tanh": "Elman RNN, tanh", "rnn_relu": "Elman RNN, relu", "lstm": "LSTM", "gru": "GRU"}
# Gate blocks stacked in each weight matrix: weight_ih is (GATES * H, I).
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
# torch's gate blocks in the order ONNX stacks them: LSTM i,f,g,o -> i,o,f,c; GRU r,z,n -> z,r,h.
ONNX_GATE_ORDER = {"rnn_tanh": [0], "rnn_relu": [0], "lstm": [0, 3, 1, 2], "gru": [1, 0, 2]}
ONNX_OPSET = 17
DIRECTION_SUFFIXES = ("", "_reverse")

Timers = tuple[Callable[[], None], Callable[[], None] | None]


class PeerUnavailable(Exception):
    """A peer cannot run a case (a dtype it lacks, say); the message says why."""


@dataclass(frozen=True)
class Case:
    """One benchmark problem: a cell, a stack of layers and a dtype."""

    cell: str
    steps: int
    batch: int
    input_size: int
    hidden_size: int
    num_layers: int
    bidirectional: bool
    dtype: type

    @classmethod
    def from_shape(cls, cell: str, shape: tuple, dtype: type) -> Case:
        """``shape`` is the bench's (T, B, I, H, layers, bidirectional)."""
        return cls(cell, *shape, np.dtype(dtype).type)

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def elman(self) -> bool:
        return self.cell.startswith("rnn_")


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def build_layer(module: ModuleType, cell: str, input_size: int, hidden_size: int, num_layers: int, **options):
    """``module.RNN``, ``.LSTM`` or ``.GRU`` for ``cell``; the Elman cells also set their nonlinearity."""
    if cell.startswith("rnn_"):
        options["nonlinearity"] = cell.removeprefix("rnn_")
    return getattr(module, LAYER_CLASSES[cell])(input_size, hidden_size, num_layers, **options)


def build_case_layer(module: ModuleType, case: Case, seed: int = 0):
    """A fastrnn or fastrnn.reference layer for the case."""
    return build_layer(
        module, case.cell, case.input_size, case.hidden_size, case.num_layers,
        bidirectional=case.bidirectional, dtype=case.dtype, seed=seed,
    )


def layer_timers(layer, x: np.ndarray, grad_output: np.ndarray) -> Timers:
    """Inference on an eval-mode layer, and a training step's forward and backward."""

    def forward():
        layer.eval()
        layer(x)

    def forward_backward():
        layer.train()
        layer(x)
        layer.backward(grad_output)

    return forward, forward_backward


def numpy_peer(case: Case, weights: Mapping[str, np.ndarray], x: np.ndarray, grad_output: np.ndarray) -> Timers:
    from . import reference

    layer = build_case_layer(reference, case)
    layer.load_state_dict(weights)
    return layer_timers(layer, x, grad_output)


def torch_peer(case: Case, weights: Mapping[str, np.ndarray], x: np.ndarray, grad_output: np.ndarray) -> Timers:
    import torch

    layer = build_layer(
        torch.nn, case.cell, case.input_size, case.hidden_size, case.num_layers, bidirectional=case.bidirectional,
        dtype=torch.float64 if case.dtype == np.float64 else torch.float32,
    )
    layer.load_state_dict({name: torch.from_numpy(value) for name, value in weights.items()})
    x_tensor, grad_tensor = torch.from_numpy(x), torch.from_numpy(grad_output)

    def forward():
        with torch.no_grad():
            layer(x_tensor)

    def forward_backward():
        output, _ = layer(x_tensor)
        output.backward(grad_tensor)

    return forward, forward_backward


def _jax_cell(cell: str):
    """``(step, initial_carry)`` with torch's gate math: ``step(carry, projected_x, weight_hh,
    bias_hh) -> (carry, h)``, where ``projected_x`` is the step's ``x @ weight_ih.T + bias_ih``."""
    import jax
    import jax.numpy as jnp

    sigmoid = jax.nn.sigmoid

    def elman_step(activation):
        def step(h, projected_x, weight_hh, bias_hh):
            h = activation(projected_x + h @ weight_hh.T + bias_hh)
            return h, h

        return step

    def lstm_step(carry, projected_x, weight_hh, bias_hh):
        h, c = carry
        i, f, g, o = jnp.split(projected_x + h @ weight_hh.T + bias_hh, 4, axis=-1)
        c = sigmoid(f) * c + sigmoid(i) * jnp.tanh(g)
        h = sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    def gru_step(h, projected_x, weight_hh, bias_hh):
        x_r, x_z, x_n = jnp.split(projected_x, 3, axis=-1)
        h_r, h_z, h_n = jnp.split(h @ weight_hh.T + bias_hh, 3, axis=-1)
        r = sigmoid(x_r + h_r)
        z = sigmoid(x_z + h_z)
        n = jnp.tanh(x_n + r * h_n)
        h = (1 - z) * n + z * h
        return h, h

    steps = {"rnn_tanh": elman_step(jnp.tanh), "rnn_relu": elman_step(jax.nn.relu), "lstm": lstm_step, "gru": gru_step}
    initial_carry = (lambda h0: (h0, h0)) if cell == "lstm" else (lambda h0: h0)
    return steps[cell], initial_carry


def jax_model(cell: str) -> Callable:
    """``model(params, x) -> output`` for :func:`jax_params`' params, zero initial states."""
    import jax
    import jax.numpy as jnp

    step, initial_carry = _jax_cell(cell)

    def run_direction(params, layer_input, reverse):
        weight_ih, weight_hh, bias_ih, bias_hh = params
        projected = layer_input @ weight_ih.T + bias_ih
        h0 = jnp.zeros((layer_input.shape[1], weight_hh.shape[1]), layer_input.dtype)
        _, states = jax.lax.scan(
            lambda carry, projected_x: step(carry, projected_x, weight_hh, bias_hh),
            initial_carry(h0), projected, reverse=reverse,
        )
        return states

    def model(params, x):
        layer_input = x
        for layer_params in params:
            outputs = [run_direction(p, layer_input, reverse=d == 1) for d, p in enumerate(layer_params)]
            layer_input = jnp.concatenate(outputs, axis=-1)
        return layer_input

    return model


def jax_params(case: Case, weights: Mapping[str, np.ndarray]) -> list:
    """Per layer, per direction: (weight_ih, weight_hh, bias_ih, bias_hh) as jax arrays."""
    import jax.numpy as jnp

    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    return [
        [tuple(jnp.asarray(weights[f"{name}_l{layer}{suffix}"]) for name in names)
         for suffix in DIRECTION_SUFFIXES[:case.directions]]
        for layer in range(case.num_layers)
    ]


def jax_peer(case: Case, weights: Mapping[str, np.ndarray], x: np.ndarray, grad_output: np.ndarray) -> Timers:
    import jax
    import jax.numpy as jnp

    if case.dtype == np.float64:
        # Without it jax computes in float32 whatever it is given.
        jax.config.update("jax_enable_x64", True)
    model = jax_model(case.cell)
    params = jax_params(case, weights)
    x_array, grad_array = jnp.asarray(x), jnp.asarray(grad_output)
    forward_jit = jax.jit(model)
    grad_jit = jax.jit(jax.grad(lambda p, xs, g: jnp.sum(model(p, xs) * g), argnums=(0, 1)))

    def forward():
        forward_jit(params, x_array).block_until_ready()

    def forward_backward():
        jax.block_until_ready(grad_jit(params, x_array, grad_array))

    return forward, forward_backward


def onnx_model(case: Case, weights: Mapping[str, np.ndarray]):
    """An ONNX graph ``x (T, B, I) -> output (T, B, D*H)``: one RNN, LSTM or GRU operator per layer."""
    from onnx import helper, numpy_helper

    hidden = case.hidden_size
    order = ONNX_GATE_ORDER[case.cell]
    suffixes = DIRECTION_SUFFIXES[:case.directions]

    def onnx_gates(array):
        return array.reshape(len(order), hidden, *array.shape[1:])[order].reshape(array.shape)

    def stacked(name, layer):
        return np.stack([onnx_gates(weights[f"{name}_l{layer}{suffix}"]) for suffix in suffixes])

    attributes = {"hidden_size": hidden, "direction": "bidirectional" if case.bidirectional else "forward"}
    if case.cell == "gru":
        attributes["linear_before_reset"] = 1  # the reset gate scales W_hn h + b_hn, as in torch
    if case.elman:
        attributes["activations"] = [case.cell.removeprefix("rnn_").capitalize()] * case.directions
    # Each operator's Y is (T, D, B, H); the next layer and the caller take (T, B, D*H).
    merged_shape = "merged_shape"
    initializers = [numpy_helper.from_array(np.array([0, -1, case.directions * hidden], np.int64), merged_shape)]
    nodes = []
    layer_input = "x"
    for layer in range(case.num_layers):
        parameters = {
            f"W_l{layer}": stacked("weight_ih", layer),
            f"R_l{layer}": stacked("weight_hh", layer),
            f"B_l{layer}": np.concatenate([stacked("bias_ih", layer), stacked("bias_hh", layer)], axis=1),
        }
        initializers += [numpy_helper.from_array(value.astype(case.dtype), name) for name, value in parameters.items()]
        by_direction = f"y_l{layer}"
        nodes.append(helper.make_node(LAYER_CLASSES[case.cell], [layer_input, *parameters], [by_direction],
                                      **attributes))
        if case.bidirectional:
            # One direction needs no transpose: its direction axis has size 1.
            by_batch = f"y_l{layer}_by_batch"
            nodes.append(helper.make_node("Transpose", [by_direction], [by_batch], perm=[0, 2, 1, 3]))
            by_direction = by_batch
        layer_input = "output" if layer == case.num_layers - 1 else f"x_l{layer + 1}"
        nodes.append(helper.make_node("Reshape", [by_direction, merged_shape], [layer_input]))
    element_type = helper.np_dtype_to_tensor_dtype(np.dtype(case.dtype))
    graph = helper.make_graph(
        nodes, f"fastrnn_bench_{case.cell}",
        [helper.make_tensor_value_info("x", element_type, [None, None, case.input_size])],
        [helper.make_tensor_value_info("output", element_type, [None, None, case.directions * hidden])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])


def ort_session(case: Case, weights: Mapping[str, np.ndarray]):
    """An onnxruntime session of :func:`onnx_model` on every core, run once to prove it can.

    onnxruntime refuses some dtypes, some when the session is made, others on the first
    run; either way the case is reported as one it cannot run.
    """
    import onnxruntime
    from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented
    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException as OrtRuntimeException

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = available_cores()
    # A refusal arrives as the exception below; onnxruntime would also log it to stderr.
    options.log_severity_level = 4
    probe = np.zeros((1, case.batch, case.input_size), case.dtype)
    try:
        session = onnxruntime.InferenceSession(
            onnx_model(case, weights).SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        session.run(["output"], {"x": probe})
    except (OrtNotImplemented, OrtRuntimeException) as error:
        raise PeerUnavailable(
            f"onnxruntime {onnxruntime.__version__} cannot run {case.cell} in {np.dtype(case.dtype).name}: {error}"
        ) from error
    return session


def ort_peer(case: Case, weights: Mapping[str, np.ndarray], x: np.ndarray, grad_output: np.ndarray) -> Timers:
    session = ort_session(case, weights)

    def forward():
        session.run(["output"], {"x": x})

    return forward, None


PEER_BUILDERS: dict[str, Callable[[Case, Mapping[str, np.ndarray], np.ndarray, np.ndarray], Timers]] = {
    "numpy": numpy_peer, "torch": torch_peer, "jax": jax_peer, "ort": ort_peer,
}
# The modules each peer imports; a peer whose modules are missing is skipped.
PEER_MODULES = {"numpy": (), "torch": ("torch",), "jax": ("jax",), "ort": ("onnx", "onnxruntime")}


def missing_modules(peer: str) -> list[str]:
    missing = []
    for module in PEER_MODULES[peer]:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    return missing
