"""fastrnn.torch against torch.nn: results, gradients, autograd modes, swap, fallback and training.

Every parity test runs one loss, ``sum(output * W) + sum(h_n * W_h)`` (LSTM: ``+ sum(c_n * W_c)``),
through a torch.nn module and through its fastrnn.torch twin with the same weights, and
compares the forward results, the input and state gradients and every parameter's grad.
"""

from __future__ import annotations

import copy
import os
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence  # noqa: E402

import fastrnn  # noqa: E402
import fastrnn.torch as ft  # noqa: E402
from fastrnn.torch import _function as torch_function  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STEPS, BATCH, INPUT, HIDDEN = 5, 3, 4, 5
UNSORTED_LENGTHS = [5, 2, 4]  # packed with enforce_sorted=False
SORTED_LENGTHS = [5, 4, 2]  # packed with enforce_sorted=True
LAYER_NAMES = ("RNN", "LSTM", "GRU")
CELL_NAMES = ("RNNCell", "LSTMCell", "GRUCell")


def tolerances(dtype: torch.dtype) -> dict[str, float]:
    # The kernels sum in another order than torch: float32 agrees to ~1e-6, float64 to ~1e-15.
    return {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-9, "atol": 1e-10}


def loss_weights(tensor: torch.Tensor) -> torch.Tensor:
    """Fixed, distinct weights for each entry of a result, so every entry's gradient is tested."""
    return torch.sin(torch.arange(1, tensor.numel() + 1, dtype=tensor.dtype)).reshape(tensor.shape)


def twins(name: str, dtype: torch.dtype = torch.float32, seed: int = 0, **kwargs):
    """A torch.nn module and its fastrnn.torch twin with the same weights."""
    torch.manual_seed(seed)
    reference = getattr(nn, name)(INPUT, HIDDEN, **kwargs).to(dtype)
    fast = getattr(ft, name)(INPUT, HIDDEN, **kwargs).to(dtype)
    fast.load_state_dict(reference.state_dict())
    return reference, fast


def state_shapes(module: nn.Module, batch: int | None) -> list[tuple[int, ...]]:
    """The shapes of a layer's (h, [c]) states; ``batch`` None for unbatched input."""
    stacked = module.num_layers * (2 if module.bidirectional else 1)
    widths = [getattr(module, "proj_size", 0) or module.hidden_size]
    if isinstance(module, nn.LSTM):
        widths.append(module.hidden_size)
    return [(stacked, width) if batch is None else (stacked, batch, width) for width in widths]


def as_tuple(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def from_tuple(values: tuple):
    return values if len(values) > 1 else values[0]


def run_layer(module: nn.Module, mode: str, with_hx: bool, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Forward and backward of one layer call; ``mode`` is padded, unbatched, packed or packed_sorted."""
    generator = torch.Generator().manual_seed(1)
    batch_first = module.batch_first and mode != "unbatched"
    if mode == "unbatched":
        shape = (STEPS, INPUT)
    else:
        shape = (BATCH, STEPS, INPUT) if batch_first else (STEPS, BATCH, INPUT)
    x = torch.randn(shape, generator=generator, dtype=dtype).requires_grad_()
    batch = None if mode == "unbatched" else BATCH
    hx = [torch.randn(s, generator=generator, dtype=dtype).requires_grad_() for s in state_shapes(module, batch)]
    if mode.startswith("packed"):
        lengths = SORTED_LENGTHS if mode == "packed_sorted" else UNSORTED_LENGTHS
        inputs = pack_padded_sequence(x, torch.tensor(lengths), batch_first=batch_first,
                                      enforce_sorted=mode == "packed_sorted")
    else:
        inputs = x
    output, state = module(inputs, from_tuple(tuple(hx)) if with_hx else None)
    results = {"output": output.data if mode.startswith("packed") else output}
    if mode.startswith("packed"):
        assert isinstance(output, PackedSequence)
        assert torch.equal(output.batch_sizes, inputs.batch_sizes)
        for name in ("sorted_indices", "unsorted_indices"):
            expected = getattr(inputs, name)
            assert (getattr(output, name) is None) if expected is None else torch.equal(getattr(output, name), expected)
    for name, value in zip(("h_n", "c_n"), as_tuple(state), strict=False):
        results[name] = value
    module.zero_grad()
    loss = sum((value * loss_weights(value)).sum() for value in results.values())
    loss.backward()
    results["grad_x"] = x.grad
    if with_hx:
        results.update({f"grad_{name}": state.grad for name, state in zip(("h_0", "c_0"), hx, strict=False)})
    results.update({name: param.grad for name, param in module.named_parameters()})
    return results


def assert_same(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        assert actual[name].dtype == value.dtype, name
        scale = max(1.0, float(value.detach().abs().max()))
        tol = tolerances(dtype)
        torch.testing.assert_close(actual[name], value, rtol=tol["rtol"], atol=tol["atol"] * scale, msg=name)


F32, F64 = torch.float32, torch.float64
LAYER_CASES = [
    # (class, constructor arguments, input mode, hx given, dtype)
    ("RNN", {}, "padded", True, F32),
    ("RNN", {"nonlinearity": "relu", "num_layers": 2, "bidirectional": True}, "packed", False, F64),
    ("RNN", {"batch_first": True, "bias": False}, "unbatched", True, F32),
    ("RNN", {"num_layers": 2, "batch_first": True}, "packed_sorted", True, F64),
    ("LSTM", {}, "padded", False, F64),
    ("LSTM", {"num_layers": 2, "bidirectional": True, "proj_size": 3}, "padded", True, F32),
    ("LSTM", {"batch_first": True, "proj_size": 2}, "packed", True, F64),
    ("LSTM", {"num_layers": 2, "bias": False}, "unbatched", True, F64),
    ("LSTM", {"bidirectional": True}, "packed_sorted", False, F32),
    ("LSTM", {"num_layers": 2, "bidirectional": True}, "packed", True, F32),
    ("GRU", {}, "padded", True, F64),
    ("GRU", {"num_layers": 2, "bidirectional": True, "batch_first": True}, "padded", False, F32),
    ("GRU", {"bidirectional": True}, "packed", True, F32),
    ("GRU", {"bias": False}, "unbatched", False, F64),
]


def case_id(case) -> str:
    name, kwargs, mode, with_hx, dtype = case
    options = ",".join(f"{key}={value}" for key, value in kwargs.items())
    return f"{name}({options})-{mode}-{'hx' if with_hx else 'nohx'}-{str(dtype).removeprefix('torch.')}"


@pytest.mark.parametrize("case", LAYER_CASES, ids=case_id)
def test_layers_match_torch(case):
    name, kwargs, mode, with_hx, dtype = case
    reference, fast = twins(name, dtype, **kwargs)
    assert_same(run_layer(fast, mode, with_hx, dtype), run_layer(reference, mode, with_hx, dtype), dtype)


def gradients_of_some_results(module: nn.Module, used: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Every gradient of a loss on only the ``used`` results of a layer call (output, h_n, c_n)."""
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(STEPS, BATCH, INPUT, generator=generator, dtype=torch.float64).requires_grad_()
    shapes = state_shapes(module, BATCH)
    hx = [torch.randn(shape, generator=generator, dtype=torch.float64).requires_grad_() for shape in shapes]
    output, state = module(x, from_tuple(tuple(hx)))
    results = dict(zip(("output", "h_n", "c_n"), (output, *as_tuple(state)), strict=False))
    sum((results[name] * loss_weights(results[name])).sum() for name in used).backward()
    grads = {"x": x.grad, **{f"state {i}": state.grad for i, state in enumerate(hx)}}
    return {**grads, **{name: param.grad for name, param in module.named_parameters()}}


@pytest.mark.parametrize(("name", "used"), [
    ("RNN", ("h_n",)), ("GRU", ("output",)), ("LSTM", ("h_n",)), ("LSTM", ("c_n",)), ("LSTM", ("output", "c_n")),
])
def test_gradients_of_losses_on_some_results_match_torch(name, used):
    # The results a loss leaves out reach backward as None, not as zeros.
    reference, fast = twins(name, torch.float64, num_layers=2)
    expected = gradients_of_some_results(reference, used)
    actual = gradients_of_some_results(fast, used)
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=1e-9, atol=1e-10, msg=key)


CELL_CASES = [
    # (class, constructor arguments, batched, hx given, dtype)
    ("RNNCell", {}, True, True, F32),
    ("RNNCell", {"nonlinearity": "relu", "bias": False}, False, True, F64),
    ("RNNCell", {}, True, False, F64),
    ("LSTMCell", {}, True, True, F64),
    ("LSTMCell", {"bias": False}, False, False, F32),
    ("LSTMCell", {}, False, True, F32),
    ("GRUCell", {}, True, False, F32),
    ("GRUCell", {"bias": False}, True, True, F64),
    ("GRUCell", {}, False, True, F64),
]


def run_cell(cell: nn.Module, batched: bool, with_hx: bool, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Three steps of a Python loop over the cell, so the graph chains one call into the next."""
    generator = torch.Generator().manual_seed(2)
    lead = (BATCH,) if batched else ()
    x = torch.randn((3, *lead, INPUT), generator=generator, dtype=dtype).requires_grad_()
    count = 2 if isinstance(cell, nn.LSTMCell) else 1
    hx = [torch.randn((*lead, HIDDEN), generator=generator, dtype=dtype).requires_grad_() for _ in range(count)]
    state = from_tuple(tuple(hx)) if with_hx else None
    outputs = []
    for step in range(3):
        state = cell(x[step], state)
        outputs.extend(as_tuple(state))
    results = {f"out{index}": value for index, value in enumerate(outputs)}
    cell.zero_grad()
    sum((value * loss_weights(value)).sum() for value in outputs).backward()
    results["grad_x"] = x.grad
    if with_hx:
        results.update({f"grad_hx{index}": state.grad for index, state in enumerate(hx)})
    results.update({name: param.grad for name, param in cell.named_parameters()})
    return results


@pytest.mark.parametrize("case", CELL_CASES, ids=lambda case: case_id((*case[:2], "batched" if case[2] else
                                                                       "unbatched", *case[3:])))
def test_cells_match_torch(case):
    name, kwargs, batched, with_hx, dtype = case
    reference, fast = twins(name, dtype, **kwargs)
    assert_same(run_cell(fast, batched, with_hx, dtype), run_cell(reference, batched, with_hx, dtype), dtype)


GRADCHECK_CASES = [
    ("RNN", {"num_layers": 2, "bidirectional": True}, "packed"),
    ("RNN", {"nonlinearity": "relu", "batch_first": True}, "padded"),
    ("LSTM", {"bidirectional": True, "proj_size": 2}, "packed"),
    ("LSTM", {"num_layers": 2, "batch_first": True}, "padded"),
    ("GRU", {"num_layers": 2}, "packed_sorted"),
    ("GRU", {"bidirectional": True, "bias": False}, "padded"),
]


@pytest.mark.parametrize("name,kwargs,mode", GRADCHECK_CASES,
                         ids=[case_id((*case, True, F64)) for case in GRADCHECK_CASES])
def test_layer_gradcheck(name, kwargs, mode):
    torch.manual_seed(3)
    layer = getattr(ft, name)(2, 3, **kwargs).double()
    batch_first = layer.batch_first
    x = torch.randn((3, 4, 2) if batch_first else (4, 3, 2), dtype=F64, requires_grad=True)
    stacked = layer.num_layers * (2 if layer.bidirectional else 1)
    widths = [kwargs.get("proj_size", 3)] + ([3] if name == "LSTM" else [])
    hx = [torch.randn(stacked, 3, width, dtype=F64, requires_grad=True) for width in widths]
    lengths = torch.tensor([4, 3, 1] if mode == "packed_sorted" else [2, 4, 3])

    def run(x, *states_and_params):
        states = from_tuple(states_and_params[: len(hx)])
        if mode == "padded":
            output, state = layer(x, states)
        else:
            packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=mode == "packed_sorted")
            output, state = layer(packed, states)
            output = output.data
        return (output, *as_tuple(state))

    # The parameters are the layer's own, so gradcheck perturbing them in place perturbs the layer.
    assert torch.autograd.gradcheck(run, (x, *hx, *layer.parameters()))


@pytest.mark.parametrize("name,kwargs,batched", [
    ("RNNCell", {"nonlinearity": "relu"}, True), ("LSTMCell", {}, True), ("LSTMCell", {"bias": False}, False),
    ("GRUCell", {}, False),
])
def test_cell_gradcheck(name, kwargs, batched):
    torch.manual_seed(4)
    cell = getattr(ft, name)(2, 3, **kwargs).double()
    lead = (2,) if batched else ()
    x = torch.randn((*lead, 2), dtype=F64, requires_grad=True)
    hx = [torch.randn((*lead, 3), dtype=F64, requires_grad=True) for _ in range(2 if name == "LSTMCell" else 1)]

    def run(x, *states_and_params):
        return as_tuple(cell(x, from_tuple(states_and_params[: len(hx)])))

    assert torch.autograd.gradcheck(run, (x, *hx, *cell.parameters()))


class Tagger(nn.Module):
    """Embedding, a recurrent stack and a linear head on the last step: a small training target."""

    def __init__(self, recurrent: type[nn.Module], vocabulary: int = 12, width: int = 6, classes: int = 3):
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, width)
        self.recurrent = recurrent(width, 8, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(16, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        output, _ = self.recurrent(self.embedding(tokens))
        return self.head(output[:, -1])


def train(model: nn.Module, tokens: torch.Tensor, labels: torch.Tensor, steps: int) -> None:
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(tokens), labels).backward()
        optimiser.step()


@pytest.mark.parametrize("recurrent", [nn.LSTM, nn.GRU], ids=["LSTM", "GRU"])
def test_training_after_swap_follows_torch(recurrent):
    torch.manual_seed(5)
    reference = Tagger(recurrent)
    fast = ft.swap(copy.deepcopy(reference))
    assert type(fast.recurrent) is getattr(ft, recurrent.__name__)
    tokens, labels = torch.randint(0, 12, (8, 7)), torch.randint(0, 3, (8,))

    train(reference, tokens, labels, 20)
    train(fast, tokens, labels, 20)

    for (name, expected), actual in zip(reference.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5, msg=name)


def spy_on_forwards(monkeypatch) -> list[bool]:
    """Record the ``requires_grad`` of every forward the modules hand to fastrnn's front end."""
    calls: list[bool] = []
    real = torch_function.run_forward

    def spy(*args, **kwargs):
        calls.append(kwargs["requires_grad"])
        return real(*args, **kwargs)

    monkeypatch.setattr(torch_function, "run_forward", spy)
    return calls


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
def test_no_grad_modes_run_inference_and_keep_nothing(monkeypatch, context):
    calls = spy_on_forwards(monkeypatch)
    _, lstm = twins("LSTM", num_layers=2)
    x = torch.randn(STEPS, BATCH, INPUT, requires_grad=True)
    with context():
        output, (h_n, c_n) = lstm(x)
    assert calls == [False]
    assert all(tensor.grad_fn is None and not tensor.requires_grad for tensor in (output, h_n, c_n))
    output, _ = lstm(x)  # grad mode again: the kernels keep their state for backward
    assert calls == [False, True] and output.grad_fn is not None


def test_nothing_requiring_grad_runs_inference(monkeypatch):
    calls = spy_on_forwards(monkeypatch)
    _, gru = twins("GRU")
    gru.requires_grad_(False)
    output, h_n = gru(torch.randn(STEPS, BATCH, INPUT))
    assert calls == [False] and output.grad_fn is None
    # One tensor that requires grad is enough to keep the state, and only its gradient is made.
    x = torch.randn(STEPS, BATCH, INPUT, requires_grad=True)
    output, h_n = gru(x)
    h_n.sum().backward()
    assert calls == [False, True] and x.grad is not None and gru.weight_ih_l0.grad is None


def test_cells_follow_grad_mode(monkeypatch):
    calls = spy_on_forwards(monkeypatch)
    _, cell = twins("RNNCell")
    with torch.no_grad():
        assert cell(torch.randn(BATCH, INPUT)).grad_fn is None
    assert cell(torch.randn(BATCH, INPUT)).grad_fn is not None
    assert calls == [False, True]


@pytest.mark.parametrize("name", ["LSTM", "GRUCell"])
def test_double_backward_raises(name):
    _, module = twins(name)
    x = torch.randn((STEPS, BATCH, INPUT) if name == "LSTM" else (BATCH, INPUT), requires_grad=True)
    output = as_tuple(module(x))[0]
    (grad_x,) = torch.autograd.grad(output.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad_x.sum().backward()


def test_in_place_change_of_the_output_before_backward_raises():
    _, lstm = twins("LSTM")
    output, _ = lstm(torch.randn(STEPS, BATCH, INPUT, requires_grad=True))
    output.mul_(2)  # backward reads the output the kernels wrote: torch's version counter refuses this
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        output.sum().backward()


def test_results_are_writable_tensors_without_warnings():
    _, lstm = twins("LSTM")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        output, (h_n, _) = lstm(torch.randn(STEPS, BATCH, INPUT, requires_grad=True))
        with torch.no_grad():
            inference_output, _ = lstm(torch.randn(STEPS, BATCH, INPUT))
    inference_output.add_(1)
    h_n.detach().add_(1)


def have_cpp_compiler() -> bool:
    return any(shutil.which(name) for name in ("g++", "c++", "clang++"))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_matches_eager(backend):
    if backend == "inductor" and not have_cpp_compiler():
        pytest.skip("inductor compiles C++ for the CPU and no C++ compiler is on PATH")
    import torch._dynamo

    torch.manual_seed(6)
    model = ft.swap(Tagger(nn.LSTM))
    tokens = torch.randint(0, 12, (4, 6))
    expected = model(tokens)
    expected.sum().backward()
    expected_grads = [param.grad.clone() for param in model.parameters()]
    model.zero_grad()
    try:
        # dynamo breaks the graph around the fastrnn module and compiles the rest.
        compiled = torch.compile(model, backend=backend)
        actual = compiled(tokens)
        actual.sum().backward()
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(actual, expected)
    for param, grad in zip(model.parameters(), expected_grads, strict=True):
        torch.testing.assert_close(param.grad, grad)


def test_swap_keeps_parameter_objects_and_the_optimiser():
    torch.manual_seed(7)
    model = nn.ModuleDict({
        "lstm": nn.LSTM(INPUT, HIDDEN), "gru": nn.GRU(INPUT, HIDDEN), "rnn": nn.RNN(INPUT, HIDDEN),
        "cell": nn.LSTMCell(INPUT, HIDDEN), "gru_cell": nn.GRUCell(INPUT, HIDDEN),
        "rnn_cell": nn.RNNCell(INPUT, HIDDEN),
        "linear": nn.Linear(HIDDEN, 1),
    })
    params = list(model.parameters())
    before = [param.detach().clone() for param in params]
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    repr_before = repr(model)

    assert ft.swap(model) is model

    for key, module in model.items():
        if key != "linear":
            assert type(module) is getattr(ft, type(module).__name__)
            assert isinstance(module, getattr(nn, type(module).__name__))
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))
    assert repr(model) == repr_before
    x = torch.randn(STEPS, BATCH, INPUT)
    loss = sum(model[key](x)[0].sum() for key in ("lstm", "gru", "rnn"))
    h = torch.randn(BATCH, HIDDEN)  # not zeros: weight_hh then gets a gradient
    loss = loss + model["cell"](x[0], (h, h))[0].sum() + model["gru_cell"](x[0], h).sum()
    loss = loss + model["rnn_cell"](x[0], h).sum()
    loss.backward()
    optimiser.step()
    changed = [not torch.equal(param, old) for param, old in zip(params, before, strict=True)]
    assert all(changed[:-2])  # every recurrent parameter moved; the unused linear layer has no grad
    restored = pickle.loads(pickle.dumps(model))  # pickles name the public classes
    assert type(restored["lstm"]) is ft.LSTM and type(restored["rnn_cell"]) is ft.RNNCell


def test_swap_of_a_module_itself_and_of_subclasses():
    lstm = nn.LSTM(INPUT, HIDDEN)
    assert ft.swap(lstm) is lstm and type(lstm) is ft.LSTM

    class OwnLSTM(nn.LSTM):
        pass

    own = OwnLSTM(INPUT, HIDDEN)
    assert type(ft.swap(own)) is OwnLSTM  # a subclass may have its own forward: left alone
    already = ft.GRU(INPUT, HIDDEN)
    assert type(ft.swap(already)) is ft.GRU
    with pytest.raises(TypeError, match="torch.nn.Module"):
        ft.swap("not a module")


def test_state_dicts_move_both_ways_and_modules_stay_torch_modules(monkeypatch):
    torch.manual_seed(8)
    reference = nn.LSTM(INPUT, HIDDEN, num_layers=2, proj_size=2)
    fast = ft.LSTM(INPUT, HIDDEN, num_layers=2, proj_size=2)
    assert fast.state_dict().keys() == reference.state_dict().keys()
    assert repr(fast) == repr(reference)
    fast.load_state_dict(reference.state_dict())
    back = nn.LSTM(INPUT, HIDDEN, num_layers=2, proj_size=2)
    back.load_state_dict(fast.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(back.parameters(), reference.parameters(), strict=True))
    assert all(isinstance(param, nn.Parameter) for param in fast.parameters())

    calls = spy_on_forwards(monkeypatch)
    fast.double()
    output, _ = fast(torch.randn(STEPS, BATCH, INPUT, dtype=F64))
    assert output.dtype == F64 and calls == [True]
    fast.to(torch.float32)
    assert fast(torch.randn(STEPS, BATCH, INPUT))[0].dtype == F32 and len(calls) == 2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ["LSTM", "GRUCell"])
def test_half_precision_falls_back_to_torch_with_one_warning(name, dtype):
    reference, fast = twins(name)
    reference.to(dtype)
    fast.to(dtype)
    x = torch.randn((STEPS, BATCH, INPUT) if name == "LSTM" else (BATCH, INPUT)).to(dtype)
    with pytest.warns(ft.FallbackWarning, match=f"dtype {dtype}"):
        output = fast(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = fast(x)
    for result in (output, again):
        torch.testing.assert_close(as_tuple(result)[0], as_tuple(reference(x))[0])


def test_autocast_and_torch_func_fall_back_to_torch():
    reference, fast = twins("GRUCell")
    x = torch.randn(BATCH, INPUT)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.warns(ft.FallbackWarning, match="autocast") as record:
            output = fast(x)
        expected = reference(x)
    assert record[0].filename == __file__  # the warning points at the module's caller
    assert output.dtype == expected.dtype
    torch.testing.assert_close(output, expected)

    reference, fast = twins("GRU")
    x = torch.randn(STEPS, BATCH, INPUT)
    with pytest.warns(ft.FallbackWarning, match="torch.func"):
        grad = torch.func.grad(lambda x: fast(x)[0].sum())(x)
    torch.testing.assert_close(grad, torch.func.grad(lambda x: reference(x)[0].sum())(x))


def test_tensors_off_the_cpu_fall_back_to_torch():
    _, fast = twins("GRU")
    fast.to("meta")  # a device fastrnn cannot read, which torch runs on any machine
    with pytest.warns(ft.FallbackWarning, match="meta"):
        output, h_n = fast(torch.randn(STEPS, BATCH, INPUT, device="meta"))
    assert output.device.type == "meta" and output.shape == (STEPS, BATCH, HIDDEN)


def raised(call) -> tuple[type, str]:
    with pytest.raises(Exception) as info:  # noqa: B017 -- the test compares which type torch raised
        call()
    return type(info.value), str(info.value)


BAD_LAYER_CALLS = {
    "4-D input": lambda m: m(torch.randn(2, 3, 4, 1)),
    "wrong input size": lambda m: m(torch.randn(STEPS, BATCH, INPUT + 1)),
    "wrong dtype": lambda m: m(torch.randn(STEPS, BATCH, INPUT, dtype=F64)),
    "wrong hx batch": lambda m: m(torch.randn(STEPS, BATCH, INPUT), bad_state(m, (1, BATCH + 1, HIDDEN))),
    "2-D hx for batched input": lambda m: m(torch.randn(STEPS, BATCH, INPUT), bad_state(m, (1, HIDDEN))),
    "3-D hx for unbatched input": lambda m: m(torch.randn(STEPS, INPUT), bad_state(m, (1, 1, HIDDEN))),
    "wrong packed input size": lambda m: m(pack_padded_sequence(torch.randn(STEPS, BATCH, 2), torch.tensor([5, 2, 4]),
                                                                enforce_sorted=False)),
    "empty sequence": lambda m: m(torch.randn(0, BATCH, INPUT)),
}


def bad_state(module: nn.Module, shape: tuple[int, ...]):
    state = torch.randn(shape)
    return (state, state) if isinstance(module, nn.LSTM) else state


@pytest.mark.parametrize("call", list(BAD_LAYER_CALLS), ids=list(BAD_LAYER_CALLS))
@pytest.mark.parametrize("name", LAYER_NAMES)
def test_bad_layer_input_raises_as_torch_does(name, call):
    reference, fast = twins(name)
    error, message = raised(lambda: BAD_LAYER_CALLS[call](fast))
    torch_error, torch_message = raised(lambda: BAD_LAYER_CALLS[call](reference))
    assert error is torch_error
    if name == "LSTM" and call == "wrong packed input size":
        # torch's LSTM checks packed input only in its kernel ("mat1 and mat2 shapes cannot be
        # multiplied"); the adapter runs torch's Python check, which names the input size.
        assert message == "input.size(-1) must be equal to input_size. Expected 4, got 2"
    else:
        assert message == torch_message


BAD_CELL_CALLS = {
    "3-D input": lambda m: m(torch.randn(1, BATCH, INPUT)),
    "wrong input size": lambda m: m(torch.randn(BATCH, INPUT + 1)),
    "wrong hx batch": lambda m: m(torch.randn(BATCH, INPUT), bad_cell_state(m, (BATCH + 1, HIDDEN))),
    "wrong hidden size": lambda m: m(torch.randn(BATCH, INPUT), bad_cell_state(m, (BATCH, HIDDEN + 1))),
    "3-D hx": lambda m: m(torch.randn(BATCH, INPUT), bad_cell_state(m, (1, BATCH, HIDDEN))),
    "wrong dtype": lambda m: m(torch.randn(BATCH, INPUT, dtype=F64)),
}


def bad_cell_state(module: nn.Module, shape: tuple[int, ...]):
    state = torch.randn(shape)
    return (state, torch.randn(BATCH, HIDDEN)) if isinstance(module, nn.LSTMCell) else state


@pytest.mark.parametrize("call", list(BAD_CELL_CALLS), ids=list(BAD_CELL_CALLS))
@pytest.mark.parametrize("name", CELL_NAMES)
def test_bad_cell_input_raises_as_torch_does(name, call):
    reference, fast = twins(name)
    assert raised(lambda: BAD_CELL_CALLS[call](fast)) == raised(lambda: BAD_CELL_CALLS[call](reference))


def test_empty_batch_gives_torch_results():
    reference, fast = twins("LSTM")
    output, (h_n, c_n) = fast(torch.randn(STEPS, 0, INPUT))
    expected, _ = reference(torch.randn(STEPS, 0, INPUT))
    assert output.shape == expected.shape and h_n.shape == (1, 0, HIDDEN)


@pytest.mark.parametrize("name", ["LSTM", "GRU"])
def test_dropout_is_reproducible_from_torch_manual_seed(name):
    _, fast = twins(name, num_layers=3, dropout=0.5)
    x = torch.randn(STEPS, BATCH, INPUT)

    def run(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return fast(x)[0]

    first, again, other = run(11), run(11), run(12)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    fast.eval()  # no dropout in eval mode: torch's results, and nothing drawn from the generator
    reference, _ = twins(name, num_layers=3, dropout=0.5)
    reference.load_state_dict(fast.state_dict())
    reference.eval()
    state = torch.get_rng_state()
    torch.testing.assert_close(fast(x)[0], reference(x)[0])
    assert torch.equal(torch.get_rng_state(), state)


def test_dropout_gradients_differentiate_the_masked_forward():
    torch.manual_seed(9)
    lstm = ft.LSTM(2, 3, num_layers=2, dropout=0.3).double()
    x = torch.randn(4, 2, 2, dtype=F64, requires_grad=True)

    def run(x, *params):
        torch.manual_seed(13)  # the same masks for every evaluation
        return lstm(x)[0]

    assert torch.autograd.gradcheck(run, (x, *lstm.parameters()))


class DDPModel(nn.Module):
    """A fastrnn.torch LSTM and a linear head, for the distributed test."""

    def __init__(self):
        super().__init__()
        self.lstm = ft.LSTM(INPUT, HIDDEN, num_layers=2, batch_first=True)
        self.head = nn.Linear(HIDDEN, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output, _ = self.lstm(x)
        return self.head(output[:, -1])


def ddp_steps(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Two SGD steps; returns the last step's gradients and the final parameters."""
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    for x, y in batches:
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    named = getattr(model, "module", model).named_parameters()
    return {key: value for name, param in named for key, value in (("grad." + name, param.grad),
                                                                  ("param." + name, param.detach()))}


def ddp_worker(rank: int, world_size: int, init_file: str, result_file: str, state: dict, batches: list) -> None:
    """One process of the distributed run: its half of every batch, gradients averaged by DDP."""
    torch.set_num_threads(1)
    fastrnn.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=world_size)
    try:
        model = DDPModel()
        model.load_state_dict(state)
        ddp = nn.parallel.DistributedDataParallel(model)
        halves = [(x.chunk(world_size)[rank], y.chunk(world_size)[rank]) for x, y in batches]
        results = ddp_steps(ddp, halves)
        if rank == 0:
            torch.save(results, result_file)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch was built without distributed gloo support")
def test_distributed_data_parallel_matches_one_process(tmp_path):
    import torch.multiprocessing

    torch.manual_seed(10)
    model = DDPModel()
    state = copy.deepcopy(model.state_dict())
    batches = [(torch.randn(6, STEPS, INPUT), torch.randint(0, 2, (6,))) for _ in range(2)]
    # Each process's loss is the mean over its half; DDP averages the halves' gradients,
    # which is the gradient of the mean over the whole batch. (Run first, so that the
    # workers find the kernels in numba's cache rather than both compiling them.)
    expected = ddp_steps(model, batches)
    result_file = tmp_path / "rank0.pt"
    torch.multiprocessing.spawn(
        ddp_worker, args=(2, str(tmp_path / "init"), str(result_file), state, batches), nprocs=2, join=True,
    )
    actual = torch.load(result_file)
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN", "LSTMCell"])
def test_modules_use_no_more_threads_than_torch(name, parallel_engine):
    # Layers this small are pushed onto the threads by the fixture; with torch at one
    # thread (as torchrun leaves each of several processes) fastrnn.torch must stay on one.
    module = getattr(ft, name)(INPUT, HIDDEN)
    x = torch.randn(BATCH, INPUT) if name.endswith("Cell") else torch.randn(STEPS, BATCH, INPUT)
    original = torch.get_num_threads()

    def step():
        output = module(x)
        output = output[0] if isinstance(output, tuple) else output
        output.sum().backward()

    try:
        torch.set_num_threads(1)
        step()
        on_one_thread = len(parallel_engine)
        torch.set_num_threads(2)
        step()
    finally:
        torch.set_num_threads(original)
    assert on_one_thread == 0
    assert len(parallel_engine) > 0  # the same calls on torch's two threads run in pieces
    assert fastrnn.get_num_threads() == 2


def test_thread_limit_applies_to_the_calling_thread_only():
    import threading

    from fastrnn import _parallel

    original = fastrnn.get_num_threads()
    seen = []
    with _parallel.thread_limit(1):
        worker = threading.Thread(target=lambda: seen.append(fastrnn.get_num_threads()))
        worker.start()
        worker.join()
        with _parallel.thread_limit(3):
            inner = fastrnn.get_num_threads()
        assert fastrnn.get_num_threads() == 1
    assert (inner, seen, fastrnn.get_num_threads()) == (1, [original], original)


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **env}, timeout=600)


def test_fastrnn_never_imports_torch_and_the_adapter_explains_a_missing_torch():
    code = (
        "import sys\n"
        "import fastrnn\n"
        "assert 'torch' not in sys.modules, 'import fastrnn imported torch'\n"
        "sys.modules['torch'] = None  # as if torch were not installed\n"
        "try:\n"
        "    import fastrnn.torch\n"
        "except ImportError as error:\n"
        "    print(error)\n"
        "else:\n"
        "    raise SystemExit('fastrnn.torch imported without torch')\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "pip install torch" in result.stdout


def test_eager_use_does_not_import_the_compiler():
    # torch._dynamo takes seconds to import; eager fastrnn.torch must not pull it in.
    code = (
        "import sys, torch, fastrnn.torch\n"
        "lstm = fastrnn.torch.LSTM(2, 3)\n"
        "lstm(torch.randn(4, 1, 2))[0].sum().backward()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_digits_example_runs_quickly():
    pytest.importorskip("sklearn", reason="examples/digits.py needs scikit-learn (pip install scikit-learn)")
    result = subprocess.run([sys.executable, str(REPO / "examples" / "digits.py"), "--quick"], capture_output=True,
                            text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for backend in ("fastrnn.torch", "torch.nn"):
        assert any(line.startswith(backend) and "test accuracy" in line for line in lines), result.stdout


@pytest.mark.parametrize("name", ["GRU", "LSTMCell"])
def test_parameter_views_follow_every_change_to_the_parameters(name):
    # The modules check their parameters once and keep NumPy views of them: every way of
    # changing a parameter must reach the kernels on the next call.
    reference, fast = twins(name)
    hidden = getattr(fast, "weight_hh_l0" if name == "GRU" else "weight_hh")
    x = torch.randn((STEPS, BATCH, INPUT) if name == "GRU" else (BATCH, INPUT))

    def outputs_agree():
        with torch.no_grad():
            expected, actual = as_tuple(reference(x)), as_tuple(fast(x))
        for want, got in zip(expected, actual, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)

    outputs_agree()
    with torch.no_grad():  # in place, as an optimiser's step
        for module in (reference, fast):
            for param in module.parameters():
                param.mul_(0.5)
    outputs_agree()
    replacement = torch.randn_like(hidden)
    for module in (reference, fast):  # a new Parameter object
        setattr(module, "weight_hh_l0" if name == "GRU" else "weight_hh", nn.Parameter(replacement.clone()))
    outputs_agree()
    fresh = torch.randn_like(reference.weight_ih_l0 if name == "GRU" else reference.weight_ih)
    for module in (reference, fast):  # new memory behind the same Parameter
        (module.weight_ih_l0 if name == "GRU" else module.weight_ih).data = fresh.clone()
    outputs_agree()
    copied_reference, copied_fast = copy.deepcopy(reference), copy.deepcopy(fast)
    with torch.no_grad():
        for module in (copied_reference, copied_fast):
            for param in module.parameters():
                param.add_(1.0)
    outputs_agree()  # the originals are untouched by their copies' changes
    reference, fast = copied_reference, copied_fast
    outputs_agree()


def test_a_square_weight_given_transposed_data_is_read_transposed():
    # Same memory and shape, other strides: the views must be made again.
    reference, fast = twins("RNN")
    x = torch.randn(STEPS, BATCH, INPUT)
    with torch.no_grad():
        fast(x)
        for module in (reference, fast):
            module.weight_hh_l0.data = module.weight_hh_l0.data.t()
        torch.testing.assert_close(fast(x)[0], reference(x)[0], rtol=1e-5, atol=1e-6)
