"""The implementations ``python -m fastrnn bench`` times, each built from one set of weights.

Every builder takes a :class:`Case` and torch-named weights (``weight_ih_l0``, ...), so all
of them compute the same function, and returns the calls to time: forward, and
forward+backward, or None for a peer that only runs inference. A case with ``lengths``
runs each sequence of the padded batch for its own length, as torch's
``pack_padded_sequence`` does; a peer that cannot do that at a cost proportional to the
lengths raises :class:`PeerUnavailable` instead of being timed at full length. torch, jax
and onnxruntime are imported inside the builders, so ``import fastrnn`` needs none of them.

``--api torch`` times modules rather than peers: :func:`torch_api_timers` gives
``fastrnn.torch``'s and ``torch.nn``'s module the same weights and input tensor, and
times both through the same calls.
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


# Neither the lax.scan models here nor ONNX's LSTM operator has LSTM's output projection.
PROJECTION_REASON = "it has no LSTM with an output projection (proj_size)"
# Why jax is not timed on a batch with lengths: lax.scan runs every padded step, so masking
# the finished sequences would give the right numbers for the full-length price, and a
# per-sequence reverse direction would add gathers on top.
JAX_LENGTHS_REASON = (
    "its lax.scan models run every padded step; masking would honour lengths at the full-length cost, "
    "so it is left out of tables with lengths rather than timed at full length"
)


@dataclass(frozen=True)
class Case:
    """One benchmark problem: a cell, a stack of layers, a dtype and the sequences' lengths.

    ``lengths`` holds B values in [1, T], in any order, or None when every sequence runs all
    T steps. ``proj_size`` is an LSTM's projection size P, 0 for none.
    """

    cell: str
    steps: int
    batch: int
    input_size: int
    hidden_size: int
    num_layers: int
    bidirectional: bool
    dtype: type
    lengths: tuple[int, ...] | None = None
    proj_size: int = 0

    @classmethod
    def from_shape(cls, cell: str, shape: tuple, dtype: type, lengths: np.ndarray | None = None,
                   proj_size: int = 0) -> Case:
        """``shape`` is the bench's (T, B, I, H, layers, bidirectional)."""
        return cls(cell, *shape, np.dtype(dtype).type, None if lengths is None else tuple(int(n) for n in lengths),
                   proj_size)

    @property
    def output_size(self) -> int:
        """Each direction's output width: P with a projection, else H."""
        return self.proj_size or self.hidden_size

    @property
    def layer_options(self) -> dict:
        """The keyword arguments every implementation's layer takes for the case, torch's names."""
        options = {"bidirectional": self.bidirectional}
        if self.proj_size:
            options["proj_size"] = self.proj_size
        return options

    @property
    def lengths_array(self) -> np.ndarray | None:
        """``lengths`` as the int64 array the layers take, or None."""
        return None if self.lengths is None else np.array(self.lengths, dtype=np.int64)

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
        module, case.cell, case.input_size, case.hidden_size, case.num_layers, dtype=case.dtype, seed=seed,
        **case.layer_options,
    )


def layer_timers(layer, x: np.ndarray, grad_output: np.ndarray, lengths: np.ndarray | None = None) -> Timers:
    """Inference on an eval-mode layer, and a training step's forward and backward."""

    def forward():
        layer.eval()
        layer(x, lengths=lengths)

    def forward_backward():
        layer.train()
        layer(x, lengths=lengths)
        layer.backward(grad_output)

    return forward, forward_backward


def numpy_peer(case: Case, weights: Mapping[str, np.ndarray], x: np.ndarray, grad_output: np.ndarray) -> Timers:
    from . import reference

    layer = build_case_layer(reference, case)
    layer.load_state_dict(weights)
    return layer_timers(layer, x, grad_output, case.lengths_array)


def torch_layer(case: Case, weights: Mapping[str, np.ndarray]):
    """The case's ``torch.nn`` layer holding ``weights``."""
    import torch

    layer = build_layer(
        torch.nn, case.cell, case.input_size, case.hidden_size, case.num_layers,
        dtype=torch.float64 if case.dtype == np.float64 else torch.float32, **case.layer_options,
    )
    layer.load_state_dict({name: torch.from_numpy(value) for name, value in weights.items()})
    return layer


def torch_output(layer, x, lengths=None):
    """The layer's padded (T, B, D*H) output for the tensor ``x``; with a tensor of
    ``lengths``, through torch's PackedSequence path, as a padded batch is run in torch."""
    if lengths is None:
        output, _ = layer(x)
        return output
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    packed_output, _ = layer(pack_padded_sequence(x, lengths, enforce_sorted=False))
    output, _ = pad_packed_sequence(packed_output, total_length=x.shape[0])
    return output


def torch_peer(case: Case, weights: Mapping[str, np.ndarray], x: np.ndarray, grad_output: np.ndarray) -> Timers:
    import torch

    layer = torch_layer(case, weights)
    x_tensor, grad_tensor = torch.from_numpy(x), torch.from_numpy(grad_output)
    lengths = None if case.lengths is None else torch.from_numpy(case.lengths_array)

    def forward():
        with torch.no_grad():
            torch_output(layer, x_tensor, lengths)

    def forward_backward():
        torch_output(layer, x_tensor, lengths).backward(grad_tensor)

    return forward, forward_backward


# ``--api torch``: the two modules timed, in the order the table shows them.
TORCH_API_MODULES = ("fastrnn.torch", "torch.nn")


def torch_api_modules(case: Case, weights: Mapping[str, np.ndarray]) -> dict:
    """``fastrnn.torch``'s and ``torch.nn``'s module for the case, both holding ``weights``,
    under the names of :data:`TORCH_API_MODULES`."""
    import torch

    import fastrnn.torch

    dtype = torch.float64 if case.dtype == np.float64 else torch.float32
    tensors = {name: torch.from_numpy(value) for name, value in weights.items()}
    modules = {}
    for name, namespace in zip(TORCH_API_MODULES, (fastrnn.torch, torch.nn), strict=True):
        module = build_layer(namespace, case.cell, case.input_size, case.hidden_size, case.num_layers, dtype=dtype,
                             **case.layer_options)
        module.load_state_dict(tensors)
        modules[name] = module
    return modules


def torch_module_timers(module, x, lengths=None) -> Timers:
    """Inference and one training step through a torch module, the same calls whichever
    module it is, so that fastrnn.torch and torch.nn are timed doing the same work.

    Inference is ``module(x)`` in eval mode under ``torch.no_grad()``. The training step
    sets the gradients of the parameters and of ``x`` to None (so that every step does the
    same work rather than accumulating into the last step's), runs ``out, _ = module(x)``
    in training mode and ``out.sum().backward()``. With a tensor of ``lengths`` the call
    goes through ``pack_padded_sequence`` and ``pad_packed_sequence``, both timed.
    """
    import torch

    def inference():
        module.eval()
        with torch.no_grad():
            torch_output(module, x, lengths)

    def training_step():
        module.train()
        module.zero_grad(set_to_none=True)
        x.grad = None
        torch_output(module, x, lengths).sum().backward()

    return inference, training_step


def torch_api_timers(case: Case, weights: Mapping[str, np.ndarray], x: np.ndarray) -> dict[str, Timers]:
    """The timers of :func:`torch_module_timers` for both modules of :func:`torch_api_modules`.

    Both take one input tensor over ``x``'s memory. It requires grad, so that both
    training steps compute the input gradient as well, as a layer inside a model does and
    as the bench's FLOP count assumes.
    """
    import torch

    x_tensor = torch.from_numpy(x).requires_grad_(True)
    lengths = None if case.lengths is None else torch.from_numpy(case.lengths_array)
    return {name: torch_module_timers(module, x_tensor, lengths)
            for name, module in torch_api_modules(case, weights).items()}


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
    if case.lengths is not None:
        raise PeerUnavailable(JAX_LENGTHS_REASON)
    if case.proj_size:
        raise PeerUnavailable(PROJECTION_REASON)
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
    """An ONNX graph ``x (T, B, I) -> output (T, B, D*H)``: one RNN, LSTM or GRU operator per layer.

    A case with ``lengths`` also takes ``sequence_lens`` (B int32 values), which every
    operator reads natively: it steps each sequence for its own length, zeroes its output
    past the end, and starts the reverse direction at its last step.
    """
    from onnx import TensorProto, helper, numpy_helper

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
    # The operators' optional inputs are positional: W, R, B, then sequence_lens.
    lengths_input = [] if case.lengths is None else ["sequence_lens"]
    for layer in range(case.num_layers):
        parameters = {
            f"W_l{layer}": stacked("weight_ih", layer),
            f"R_l{layer}": stacked("weight_hh", layer),
            f"B_l{layer}": np.concatenate([stacked("bias_ih", layer), stacked("bias_hh", layer)], axis=1),
        }
        initializers += [numpy_helper.from_array(value.astype(case.dtype), name) for name, value in parameters.items()]
        by_direction = f"y_l{layer}"
        nodes.append(helper.make_node(LAYER_CLASSES[case.cell], [layer_input, *parameters, *lengths_input],
                                      [by_direction], **attributes))
        if case.bidirectional:
            # One direction needs no transpose: its direction axis has size 1.
            by_batch = f"y_l{layer}_by_batch"
            nodes.append(helper.make_node("Transpose", [by_direction], [by_batch], perm=[0, 2, 1, 3]))
            by_direction = by_batch
        layer_input = "output" if layer == case.num_layers - 1 else f"x_l{layer + 1}"
        nodes.append(helper.make_node("Reshape", [by_direction, merged_shape], [layer_input]))
    element_type = helper.np_dtype_to_tensor_dtype(np.dtype(case.dtype))
    inputs = [helper.make_tensor_value_info("x", element_type, [None, None, case.input_size])]
    if case.lengths is not None:
        inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, [None]))
    graph = helper.make_graph(
        nodes, f"fastrnn_bench_{case.cell}",
        inputs,
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
    # One step of every sequence: the probe is about dtypes, not about the case's lengths.
    probe = ort_inputs(case, np.zeros((1, case.batch, case.input_size), case.dtype), np.ones(case.batch, np.int64))
    try:
        session = onnxruntime.InferenceSession(
            onnx_model(case, weights).SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        session.run(["output"], probe)
    except (OrtNotImplemented, OrtRuntimeException) as error:
        raise PeerUnavailable(
            f"onnxruntime {onnxruntime.__version__} cannot run {case.cell} in {np.dtype(case.dtype).name}: {error}"
        ) from error
    return session


def ort_inputs(case: Case, x: np.ndarray, lengths: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The feed of :func:`onnx_model`'s graph: ``x``, and for a case with lengths
    ``sequence_lens`` (the case's own unless ``lengths`` is given)."""
    if case.lengths is None:
        return {"x": x}
    lengths = case.lengths_array if lengths is None else lengths
    return {"x": x, "sequence_lens": np.asarray(lengths, dtype=np.int32)}


def ort_peer(case: Case, weights: Mapping[str, np.ndarray], x: np.ndarray, grad_output: np.ndarray) -> Timers:
    if case.proj_size:
        raise PeerUnavailable(PROJECTION_REASON)
    session = ort_session(case, weights)
    feed = ort_inputs(case, x)

    def forward():
        session.run(["output"], feed)

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
