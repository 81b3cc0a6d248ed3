"""The bench command's plumbing: shapes, peers, the table and the JSON it writes.

Timings themselves are never asserted: they belong in the bench output.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest

from fastrnn import _cli, bench


def test_parse_shapes_fills_in_layers_and_direction():
    assert bench.parse_shapes("5,2,3,4; (6,1,2,3,2,bi)") == [(5, 2, 3, 4, 1, False), (6, 1, 2, 3, 2, True)]


@pytest.mark.parametrize("text", ["5,2,3", "5,2,3,4,1,sideways", "a,b,c,d"])
def test_parse_shapes_rejects_malformed_shapes(text):
    with pytest.raises(ValueError):
        bench.parse_shapes(text)


@pytest.mark.parametrize(("cell", "gates"), [("rnn_tanh", 1), ("rnn_relu", 1), ("lstm", 4), ("gru", 3)])
def test_flops_count_every_gate_of_every_layer_direction(cell, gates):
    # layer 0: 2 directions x gates x 2*T*B*(I*H + H*H); layer 1 takes 2H inputs.
    steps, batch, inputs, hidden = 3, 2, 4, 5
    layer0 = 2 * gates * 2 * steps * batch * (inputs * hidden + hidden * hidden)
    layer1 = 2 * gates * 2 * steps * batch * (2 * hidden * hidden + hidden * hidden)
    shape = (steps, batch, inputs, hidden, 2, True)
    assert bench.forward_flops(shape, cell) == layer0 + layer1
    assert bench.forward_backward_flops(shape, cell) == 3 * (layer0 + layer1)


def run_tiny(peers, cell="rnn_tanh", dtype=np.float32, shape=(4, 2, 3, 5, 2, True)):
    return bench.run([shape], peers, dtype, cell, budget=0.001, progress=io.StringIO(), settle=0.0)


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_run_times_fastrnn_and_the_numpy_peer(cell):
    shape = (4, 2, 3, 5, 2, True)
    results, gemm, notes = run_tiny(["numpy"], cell, shape=shape)
    (result,) = results
    assert result.shape == shape
    assert result.fastrnn_forward_ms > 0 and result.fastrnn_forward_backward_ms > 0
    assert set(result.peers) == {"numpy"}
    numpy_times = result.peers["numpy"]
    assert result.speedup_forward == pytest.approx(numpy_times["forward_ms"] / result.fastrnn_forward_ms)
    assert gemm > 0
    assert notes == []
    table = bench.format_table(results, ["numpy"], gemm)
    assert "(4,2,3,5,2,bi)" in table and "numpy f+b" in table


def test_forward_only_peer_has_no_forward_backward_time_or_speedup():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    (result,), gemm, notes = run_tiny(["numpy", "ort"])
    assert notes == []
    numpy_times, ort_times = result.peers["numpy"], result.peers["ort"]
    assert ort_times["forward_ms"] > 0 and ort_times["forward_backward_ms"] is None
    fastest_forward = min(numpy_times["forward_ms"], ort_times["forward_ms"])
    assert result.speedup_forward == pytest.approx(fastest_forward / result.fastrnn_forward_ms)
    assert result.speedup_forward_backward == pytest.approx(
        numpy_times["forward_backward_ms"] / result.fastrnn_forward_backward_ms
    )
    ort_columns = bench.format_table([result], ["numpy", "ort"], gemm).splitlines()[2].split("|")[6:8]
    assert [column.strip() for column in ort_columns] == [f"{ort_times['forward_ms']:.3f}", "-"]
    assert "Forward only, left out of the f+b speedup: ort." in bench.format_table([result], ["numpy", "ort"], gemm)


def test_peer_that_cannot_run_a_dtype_is_skipped_with_the_reason():
    pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    (result,), _, notes = run_tiny(["ort"], dtype=np.float64)
    if "ort" in result.peers:
        pytest.skip(f"onnxruntime {onnxruntime.__version__} runs float64 RNNs")
    assert len(notes) == 1 and notes[0].startswith("skipped peer ort: ") and "float64" in notes[0]
    assert result.speedup_forward is None and result.speedup_forward_backward is None


def test_unknown_peer_is_an_error():
    with pytest.raises(SystemExit, match="unknown peers \\['tensorflow'\\]"):
        _cli.main(["bench", "--peers", "numpy,tensorflow"])


def test_import_fastrnn_loads_no_peer():
    completed = subprocess.run(
        [sys.executable, "-c", "import sys, fastrnn, fastrnn.bench; "
         "print(sorted({'torch', 'jax', 'onnx', 'onnxruntime'} & set(sys.modules)))"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    assert completed.stdout.strip() == "[]"


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_command_writes_json(tmp_path, cell):
    path = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, "-m", "fastrnn", "bench", "--cell", cell, "--shapes", "4,2,3,5", "--peers", "numpy",
         "--budget", "0.001", "--json", str(path)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "[1/1] (4,2,3,5,1,uni)" in completed.stderr
    assert f"(--cell {cell})" in completed.stdout
    data = json.loads(path.read_text())
    assert data["dtype"] == "float32" and data["cell"] == cell
    assert [tuple(r["shape"]) for r in data["results"]] == [(4, 2, 3, 5, 1, False)]


def test_update_readme_replaces_only_the_marked_block(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(f"intro\n{bench.README_START}\nold table\n{bench.README_END}\noutro\n")
    bench.update_readme(str(path), "python -m fastrnn bench", "| new |")
    text = path.read_text()
    assert "old table" not in text
    assert text.startswith("intro\n") and text.endswith(f"{bench.README_END}\noutro\n")
    assert "Produced by `python -m fastrnn bench`:\n\n| new |\n" in text


def test_update_readme_puts_each_cell_between_its_own_markers(tmp_path):
    path = tmp_path / "README.md"
    lstm_start, lstm_end = bench.readme_markers("lstm")
    path.write_text(f"{bench.README_START}\nrnn\n{bench.README_END}\n{lstm_start}\nold lstm\n{lstm_end}\n")
    bench.update_readme(str(path), "cmd", "| lstm |", "lstm")
    text = path.read_text()
    assert "old lstm" not in text and "| lstm |" in text
    assert f"{bench.README_START}\nrnn\n{bench.README_END}" in text


def test_update_readme_without_markers_is_an_error(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("no markers here\n")
    with pytest.raises(ValueError, match="needs the markers"):
        bench.update_readme(str(path), "cmd", "table")
    assert path.read_text() == "no markers here\n"


def test_compile_command_builds_the_variants_it_names(capsys):
    from fastrnn._cli import main

    assert main(["compile", "--cell", "gru", "--dtype", "float64"]) == 0
    captured = capsys.readouterr()
    assert "compiled 2 variants" in captured.out
    assert "2/2 done" in captured.err
    assert "gru float64 threaded" in captured.err


def test_compile_command_refuses_an_unknown_cell():
    from fastrnn._cli import main

    with pytest.raises(SystemExit, match="unknown cell 'elman'; expected some of rnn_tanh, lstm, gru"):
        main(["compile", "--cell", "elman"])
