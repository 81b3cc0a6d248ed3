"""fastrnn.save / fastrnn.load and pickling: exact round trips for every layer and cell, the
file's header and names, saves that are interrupted, files that are damaged, edited or not
fastrnn's, and a layer sent to a spawned process and back."""

from __future__ import annotations

import copy
import io
import json
import multiprocessing
import os
import pickle
import zipfile

import numpy as np
import pytest

import fastrnn
from fastrnn import _files, reference

INPUT_SIZE = 4
HIDDEN_SIZE = 5
STEPS = 6
BATCH = 3

# (class, constructor arguments): every kind, with the arguments that change its parameters.
MODULES = [
    (fastrnn.RNN, {"num_layers": 2, "bidirectional": True, "nonlinearity": "relu"}),
    (fastrnn.RNN, {"bias": False, "batch_first": True}),
    (fastrnn.LSTM, {"num_layers": 2, "proj_size": 3, "dropout": 0.25}),
    (fastrnn.LSTM, {"bidirectional": True, "dtype": np.float64}),
    (fastrnn.GRU, {"num_layers": 3, "bias": False}),
    (fastrnn.RNNCell, {"nonlinearity": "relu", "dtype": np.float64}),
    (fastrnn.LSTMCell, {}),
    (fastrnn.GRUCell, {"bias": False}),
    (reference.LSTM, {"bidirectional": True}),
    (reference.GRUCell, {}),
]


def module_id(case) -> str:
    cls, args = case
    shown = ",".join(f"{name}={getattr(value, '__name__', value)}" for name, value in args.items())
    prefix = "reference." if cls.__module__.endswith("reference") else ""
    return f"{prefix}{cls.__name__}({shown})"


def build(case, seed: int = 0):
    cls, args = case
    return cls(INPUT_SIZE, HIDDEN_SIZE, **args, seed=seed)


def is_cell(module) -> bool:
    return isinstance(module, (fastrnn.RNNCell, fastrnn.LSTMCell, fastrnn.GRUCell))


def inference(module, seed: int = 1):
    """Every output of one eval-mode call, as a flat tuple of arrays."""
    rng = np.random.default_rng(seed)
    dtype = module.dtype
    if is_cell(module):
        x = rng.standard_normal((BATCH, INPUT_SIZE)).astype(dtype)
        result = module.eval()(x)
        return result if isinstance(result, tuple) else (result,)
    shape = (BATCH, STEPS, INPUT_SIZE) if module.batch_first else (STEPS, BATCH, INPUT_SIZE)
    output, finals = module.eval()(rng.standard_normal(shape).astype(dtype))
    return (output, *(finals if isinstance(finals, tuple) else (finals,)))


def assert_same_module(loaded, original) -> None:
    assert type(loaded) is type(original)
    assert repr(loaded) == repr(original)
    assert loaded.dtype == original.dtype
    expected = original.state_dict()
    actual = loaded.state_dict()
    assert list(actual) == list(expected)
    for name, array in expected.items():
        assert actual[name].dtype == array.dtype
        np.testing.assert_array_equal(actual[name], array, strict=True)


@pytest.fixture
def saved(tmp_path):
    """A saved two-layer LSTM and its path."""
    module = fastrnn.LSTM(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, seed=3)
    path = tmp_path / "lstm.npz"
    fastrnn.save(module, path)
    return module, path


# --- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("case", MODULES, ids=module_id)
def test_save_load_round_trip_is_exact(case, tmp_path):
    module = build(case)
    path = tmp_path / "module.npz"
    fastrnn.save(module, path)
    loaded = fastrnn.load(path)

    assert_same_module(loaded, module)
    assert loaded.training  # a loaded module is a new one
    for actual, expected in zip(inference(loaded), inference(module), strict=True):
        np.testing.assert_array_equal(actual, expected, strict=True)


def test_file_holds_torch_names_and_a_json_header(saved):
    module, path = saved
    with np.load(path, allow_pickle=False) as npz:
        assert set(npz.files) == {_files.HEADER_MEMBER, *module.state_dict()}
        raw = npz[_files.HEADER_MEMBER]
        assert raw.dtype == np.uint8
        header = json.loads(raw.tobytes().decode("utf-8"))
        for name, array in module.state_dict().items():
            np.testing.assert_array_equal(npz[name], array, strict=True)
    assert header["format"] == "fastrnn"
    assert header["format_version"] == _files.FORMAT_VERSION
    assert header["fastrnn_version"] == fastrnn.__version__
    assert header["kind"] == "LSTM"
    assert header["dtype"] == "float32"
    assert header["args"] == {"input_size": INPUT_SIZE, "hidden_size": HIDDEN_SIZE, "num_layers": 2, "bias": True,
                              "batch_first": False, "dropout": 0.0, "bidirectional": False, "proj_size": 0}
    assert set(header["sha256"]) == set(module.state_dict())


def test_file_names_are_torchs():
    torch = pytest.importorskip("torch")
    module = fastrnn.LSTM(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, bidirectional=True, proj_size=2)
    buffer = io.BytesIO()
    _files._write_npz(buffer, module.state_dict())
    with np.load(io.BytesIO(buffer.getvalue()), allow_pickle=False) as npz:
        names = list(npz.files)
    twin = torch.nn.LSTM(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, bidirectional=True, proj_size=2)
    assert names == list(twin.state_dict())


def test_save_writes_exactly_the_path_given(tmp_path):
    path = tmp_path / "weights.fastrnn"
    fastrnn.save(fastrnn.GRUCell(INPUT_SIZE, HIDDEN_SIZE), str(path))
    assert os.listdir(tmp_path) == ["weights.fastrnn"]
    assert isinstance(fastrnn.load(str(path)), fastrnn.GRUCell)


def test_save_replaces_an_existing_file(saved):
    _, path = saved
    newer = fastrnn.LSTM(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, seed=4)
    fastrnn.save(newer, path)
    assert_same_module(fastrnn.load(path), newer)


# --- interrupted and impossible saves ----------------------------------------------------


class WriterStopped(Exception):
    pass


@pytest.fixture
def writer_stops_after_two_arrays(monkeypatch):
    written = []
    real_write_array = _files._write_array

    def stopping_write_array(file, array):
        if len(written) == 2:
            raise WriterStopped("the writer stopped midway")
        written.append(array.shape)
        real_write_array(file, array)

    monkeypatch.setattr(_files, "_write_array", stopping_write_array)
    return written


def test_interrupted_save_leaves_the_old_file_and_no_temporary(saved, writer_stops_after_two_arrays):
    _, path = saved
    before = path.read_bytes()
    with pytest.raises(WriterStopped):
        fastrnn.save(fastrnn.LSTM(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, seed=9), path)
    assert len(writer_stops_after_two_arrays) == 2  # it did stop midway, with members written
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]


def test_interrupted_first_save_leaves_nothing(tmp_path, writer_stops_after_two_arrays):
    with pytest.raises(WriterStopped):
        fastrnn.save(fastrnn.GRU(INPUT_SIZE, HIDDEN_SIZE), tmp_path / "gru.npz")
    assert os.listdir(tmp_path) == []


def test_save_into_a_missing_folder_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="folder .* does not exist"):
        fastrnn.save(fastrnn.RNN(INPUT_SIZE, HIDDEN_SIZE), tmp_path / "missing" / "rnn.npz")


def test_save_refuses_what_is_not_a_fastrnn_module(tmp_path):
    with pytest.raises(TypeError, match="expected a fastrnn layer or cell"):
        fastrnn.save({"weight_ih_l0": np.zeros((5, 4))}, tmp_path / "dict.npz")


# --- files that are not fastrnn's, damaged or edited -------------------------------------


def read_members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def write_members(path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def edit_header(path, change) -> None:
    members = read_members(path)
    name = f"{_files.HEADER_MEMBER}.npy"
    header = json.loads(np.load(io.BytesIO(members[name])).tobytes())
    change(header)
    members[name] = npy_bytes(np.frombuffer(json.dumps(header).encode(), dtype=np.uint8))
    write_members(path, members)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        fastrnn.load(tmp_path / "absent.npz")


def test_a_file_that_is_not_npz(tmp_path):
    path = tmp_path / "notes.npz"
    path.write_text("not an archive")
    with pytest.raises(ValueError, match="not an .npz file"):
        fastrnn.load(path)


def test_an_npy_file(tmp_path):
    path = tmp_path / "array.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(ValueError, match="not an .npz file"):
        fastrnn.load(path)


def test_another_programs_npz(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.ones((2, 2)), bias=np.zeros(2))
    with pytest.raises(ValueError, match="not one fastrnn wrote"):
        fastrnn.load(path)


@pytest.mark.parametrize("keep", [0.5, 0.99], ids=["half", "all-but-the-end"])
def test_truncated_file(saved, keep):
    _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        fastrnn.load(path)


def test_corrupted_parameter_bytes(saved):
    module, path = saved
    data = bytearray(path.read_bytes())
    start = bytes(data).find(module.weight_hh_l1.tobytes()[:32])
    assert start > 0
    data[start + 40] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="'weight_hh_l1.npy' is truncated or corrupted"):
        fastrnn.load(path)


def test_unknown_format_version(saved):
    _, path = saved
    edit_header(path, lambda header: header.update(format_version=2))
    with pytest.raises(ValueError, match="format version 2 .* reads version 1"):
        fastrnn.load(path)


def test_wrong_kind(saved):
    _, path = saved
    edit_header(path, lambda header: header.update(kind="Transformer"))
    with pytest.raises(ValueError, match="kind 'Transformer'"):
        fastrnn.load(path)


def test_kind_whose_parameters_differ(saved):
    _, path = saved
    # A GRU of the same sizes has other shapes (3 gates, not 4) and no proj_size argument.
    def to_gru(header):
        header["kind"] = "GRU"
        del header["args"]["proj_size"]

    edit_header(path, to_gru)
    with pytest.raises(ValueError, match="parameter 'weight_ih_l0' is float32 of shape \\(20, 4\\), but a GRU"):
        fastrnn.load(path)


def test_edited_hyper_parameters(saved):
    _, path = saved
    edit_header(path, lambda header: header["args"].update(num_layers=3))
    with pytest.raises(ValueError, match="missing \\['bias_hh_l2'"):
        fastrnn.load(path)


def test_edited_dtype(saved):
    _, path = saved
    edit_header(path, lambda header: header.update(dtype="float64"))
    with pytest.raises(ValueError, match="parameter 'weight_ih_l0' is float32 .* float64"):
        fastrnn.load(path)


def test_bad_constructor_arguments(saved):
    _, path = saved
    edit_header(path, lambda header: header["args"].update(hidden_size=-5))
    with pytest.raises(ValueError, match="do not build a LSTM: hidden_size must be a positive int"):
        fastrnn.load(path)


def test_unknown_constructor_argument(saved):
    _, path = saved
    edit_header(path, lambda header: header["args"].update(callback="os.system"))
    with pytest.raises(ValueError, match="constructor arguments for LSTM must be exactly"):
        fastrnn.load(path)


def test_sizes_larger_than_the_file_are_refused_before_building(saved):
    _, path = saved
    edit_header(path, lambda header: header["args"].update(hidden_size=10**7, input_size=10**6))
    with pytest.raises(ValueError, match="more than the whole file"):
        fastrnn.load(path)


def test_edited_parameter_values(saved):
    module, path = saved
    members = read_members(path)
    members["bias_ih_l0.npy"] = npy_bytes(module.bias_ih_l0 + 1)
    write_members(path, members)
    with pytest.raises(ValueError, match="'bias_ih_l0' does not match its checksum"):
        fastrnn.load(path)


def test_parameter_of_another_shape(saved):
    _, path = saved
    members = read_members(path)
    members["bias_ih_l0.npy"] = npy_bytes(np.zeros(7, dtype=np.float32))
    write_members(path, members)
    with pytest.raises(ValueError, match="'bias_ih_l0' is float32 of shape \\(7,\\), but a LSTM .* \\(20,\\)"):
        fastrnn.load(path)


def test_extra_member(saved):
    _, path = saved
    members = read_members(path)
    members["weight_ih_l9.npy"] = npy_bytes(np.zeros(3, dtype=np.float32))
    write_members(path, members)
    with pytest.raises(ValueError, match="unexpected \\['weight_ih_l9'\\]"):
        fastrnn.load(path)


def test_object_array_member_is_refused(saved):
    _, path = saved
    members = read_members(path)
    members["bias_ih_l0.npy"] = npy_bytes(np.array([object()] * 20, dtype=object), allow_pickle=True)
    write_members(path, members)
    with pytest.raises(ValueError, match="'bias_ih_l0.npy' holds Python objects"):
        fastrnn.load(path)


def test_pickled_member_is_refused(saved):
    _, path = saved
    members = read_members(path)
    members["bias_ih_l0.npy"] = pickle.dumps(np.zeros(20, dtype=np.float32))
    write_members(path, members)
    with pytest.raises(ValueError, match="'bias_ih_l0.npy' is not an array fastrnn reads"):
        fastrnn.load(path)


def test_pickled_header_is_refused(saved):
    _, path = saved
    members = read_members(path)
    members[f"{_files.HEADER_MEMBER}.npy"] = npy_bytes(np.array([{"kind": "LSTM"}], dtype=object), allow_pickle=True)
    write_members(path, members)
    with pytest.raises(ValueError, match="holds Python objects"):
        fastrnn.load(path)


def test_header_that_is_not_json(saved):
    _, path = saved
    members = read_members(path)
    members[f"{_files.HEADER_MEMBER}.npy"] = npy_bytes(np.frombuffer(b"{kind: LSTM", dtype=np.uint8))
    write_members(path, members)
    with pytest.raises(ValueError, match="header is not valid JSON"):
        fastrnn.load(path)


# --- pickling ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", MODULES, ids=module_id)
def test_pickle_round_trip(case):
    module = build(case).eval()
    module.generator.standard_normal(3)  # the generator's state is its own, not the seed's
    restored = pickle.loads(pickle.dumps(module))

    assert_same_module(restored, module)
    assert not restored.training
    assert restored.generator.bit_generator.state == module.generator.bit_generator.state
    for actual, expected in zip(inference(restored), inference(module), strict=True):
        np.testing.assert_array_equal(actual, expected, strict=True)


def test_pickle_leaves_out_gradients_and_what_forward_kept():
    layer = fastrnn.LSTM(INPUT_SIZE, HIDDEN_SIZE, num_layers=2)
    output, _ = layer(np.ones((STEPS, BATCH, INPUT_SIZE), dtype=np.float32))
    layer.backward(np.ones_like(output))
    layer(np.ones((STEPS, BATCH, INPUT_SIZE), dtype=np.float32))  # kept for a backward not yet run
    assert layer._saved is not None

    assert set(layer.__getstate__()) == {"version", "args", "dtype", "parameters", "training", "generator"}
    restored = pickle.loads(pickle.dumps(layer))
    assert restored._saved is None
    assert all(not grad.any() for grad in restored.grads.values())
    with pytest.raises(ValueError, match="backward needs a forward"):
        restored.backward(np.ones_like(output))


def test_pickled_cell_has_no_records():
    cell = fastrnn.GRUCell(INPUT_SIZE, HIDDEN_SIZE)
    cell(np.ones((BATCH, INPUT_SIZE), dtype=np.float32))
    assert len(cell._records) == 1
    assert pickle.loads(pickle.dumps(cell))._records == []


def test_pickled_training_layer_draws_the_same_dropout():
    layer = fastrnn.GRU(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, dropout=0.5, seed=5)
    restored = pickle.loads(pickle.dumps(layer))
    x = np.random.default_rng(0).standard_normal((STEPS, BATCH, INPUT_SIZE)).astype(np.float32)
    assert restored.training
    np.testing.assert_array_equal(restored(x)[0], layer(x)[0], strict=True)


def test_deepcopy_is_independent():
    layer = fastrnn.RNN(INPUT_SIZE, HIDDEN_SIZE)
    twin = copy.deepcopy(layer)
    twin.weight_hh_l0[:] = 0
    assert layer.weight_hh_l0.any()


def test_unpickling_another_format_version_says_so():
    layer = fastrnn.RNN(INPUT_SIZE, HIDDEN_SIZE)
    state = layer.__getstate__()
    state["version"] = 99
    blank = fastrnn.RNN.__new__(fastrnn.RNN)
    with pytest.raises(ValueError, match="pickled in format 99"):
        blank.__setstate__(state)


def forward_in_spawned_process(layer, x):
    """Runs in a spawned worker: the forward of the layer it was sent, and the layer after it."""
    output, finals = layer(x)
    return output, finals, layer


def test_layer_sent_to_a_spawned_process_gives_identical_results():
    layer = fastrnn.LSTM(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, dropout=0.5, seed=2)  # training: dropout draws
    x = np.random.default_rng(0).standard_normal((STEPS, BATCH, INPUT_SIZE)).astype(np.float32)
    local = pickle.loads(pickle.dumps(layer))
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        output, (h_n, c_n), returned = pool.apply(forward_in_spawned_process, (layer, x))

    expected_output, (expected_h, expected_c) = local(x)
    np.testing.assert_array_equal(output, expected_output, strict=True)
    np.testing.assert_array_equal(h_n, expected_h, strict=True)
    np.testing.assert_array_equal(c_n, expected_c, strict=True)
    # The layer comes back with its generator advanced by the worker's dropout draws.
    assert returned.generator.bit_generator.state == local.generator.bit_generator.state
    assert_same_module(returned, layer)
