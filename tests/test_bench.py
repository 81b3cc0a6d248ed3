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

import fastrnn
from fastrnn import _bench_peers, _cli, bench


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


def run_tiny(peers, cell="rnn_tanh", dtype=np.float32, shape=(4, 2, 3, 5, 2, True), lengths="full"):
    return bench.run([shape], peers, dtype, cell, budget=0.001, progress=io.StringIO(), settle=0.0, lengths=lengths)


def installed_peers(*peers):
    """The peers among ``peers`` whose modules are installed, so a test runs without the others."""
    return [peer for peer in peers if not bench.missing_modules(peer)]


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


def test_percent_of_gemm_is_of_the_gemm_timed_in_the_shapes_own_rounds(monkeypatch):
    # A fake clock per function: the GEMM reference takes 10 ms in the forward's rounds and
    # 20 ms in the forward+backward's, as if the machine had slowed down in between; each
    # percentage must use the reference of its own rounds.
    timed = []
    real = bench.interleaved_medians

    def fake_medians(functions, budget, settle=bench.SETTLE_SECONDS):
        medians = real(functions, budget, settle)
        assert bench.GEMM_REFERENCE in functions
        timed.append(set(functions))
        medians[bench.GEMM_REFERENCE] = 0.010 if len(timed) == 1 else 0.020
        return medians

    monkeypatch.setattr(bench, "interleaved_medians", fake_medians)
    shape = (4, 2, 3, 5, 2, True)
    (result,), gemm, _ = run_tiny(["numpy"], shape=shape)
    flops = bench.forward_flops(shape, "rnn_tanh")
    assert result.gemm_gflops_forward == pytest.approx(2 * 1024**3 / 0.010 / 1e9)
    assert result.gemm_gflops_forward_backward == pytest.approx(2 * 1024**3 / 0.020 / 1e9)
    assert result.gflops_forward == pytest.approx(flops / (result.fastrnn_forward_ms / 1e3) / 1e9)
    assert result.percent_of_gemm_forward == pytest.approx(100 * result.gflops_forward / result.gemm_gflops_forward)
    assert result.percent_of_gemm == pytest.approx(
        100 * result.gflops_forward_backward / result.gemm_gflops_forward_backward
    )
    assert gemm == pytest.approx(result.gemm_gflops_forward)
    assert "numpy" in result.peers and bench.GEMM_REFERENCE not in result.peers
    table = bench.format_table([result], ["numpy"], gemm)
    assert "% of gemm fwd" in table and "% of gemm f+b" in table
    assert "107-215 GFLOP/s in this run" in table


def test_full_length_table_has_no_lengths_columns():
    results, gemm, _ = run_tiny(["numpy"])
    assert results[0].lengths is None and results[0].ratio_to_full_length_forward is None
    table = bench.format_table(results, ["numpy"], gemm)
    assert "full-length" not in table and "steps run" not in table


@pytest.mark.parametrize(("steps", "batch"), [(100, 64), (5, 3), (1, 4)])
def test_uniform_lengths_are_seeded_and_lie_in_one_to_t(steps, batch):
    lengths = bench.draw_lengths("uniform", steps, batch)
    assert lengths.shape == (batch,) and lengths.dtype == np.int64
    assert lengths.min() >= 1 and lengths.max() <= steps
    np.testing.assert_array_equal(lengths, bench.draw_lengths("uniform", steps, batch))
    assert bench.draw_lengths("full", steps, batch) is None


def test_unknown_lengths_mode_is_an_error():
    with pytest.raises(ValueError, match="unknown lengths mode 'sorted'"):
        bench.draw_lengths("sorted", 5, 3)


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_run_with_uniform_lengths_times_fastrnn_at_both_lengths_and_the_peers(cell):
    shape = (5, 3, 3, 4, 2, True)
    peers = installed_peers("numpy", "torch", "ort", "jax")
    (result,), gemm, notes = run_tiny(peers, cell, shape=shape, lengths="uniform")
    assert result.lengths == bench.draw_lengths("uniform", 5, 3).tolist()
    assert result.steps_run == pytest.approx(sum(result.lengths) / (5 * 3))
    assert result.fastrnn_full_length_forward_ms > 0 and result.fastrnn_full_length_forward_backward_ms > 0
    assert result.ratio_to_full_length_forward == pytest.approx(
        result.fastrnn_forward_ms / result.fastrnn_full_length_forward_ms
    )
    assert result.ratio_to_full_length_forward_backward == pytest.approx(
        result.fastrnn_forward_backward_ms / result.fastrnn_full_length_forward_backward_ms
    )
    # fastrnn at full length is a column of its own, never a peer of the speedup.
    timed_peers = [peer for peer in peers if peer != "jax"]
    assert set(result.peers) == set(timed_peers)
    fastest_forward = min(result.peers[peer]["forward_ms"] for peer in timed_peers)
    assert result.speedup_forward == pytest.approx(fastest_forward / result.fastrnn_forward_ms)
    # jax cannot honour lengths for less than the full-length cost: it is left out, with a note.
    assert ("jax" in peers) == any(note.startswith("skipped peer jax: ") for note in notes)
    assert all(note.startswith("skipped peer jax: ") for note in notes)
    table = bench.format_table([result], timed_peers, gemm)
    header = [column.strip() for column in table.splitlines()[0].split("|")[1:-1]]
    assert header[:8] == ["shape (T,B,I,H,L,dir)", "fastrnn fwd", "fastrnn f+b", "steps run", "full-length fwd",
                          "full-length f+b", "lengths/full fwd", "lengths/full f+b"]
    row = [column.strip() for column in table.splitlines()[2].split("|")[1:-1]]
    assert row[3] == f"{100 * result.steps_run:.0f}%"
    assert row[6] == f"{result.ratio_to_full_length_forward:.2f}x"
    assert "pack_padded_sequence" in table


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


@pytest.mark.parametrize(("option", "value", "choices"), [
    ("--lengths", "sorted", ("full", "uniform")),
    ("--api", "jax", ("numpy", "torch")),
], ids=["lengths", "api"])
def test_unknown_choice_is_an_argparse_error(capsys, option, value, choices):
    with pytest.raises(SystemExit) as exit_info:
        _cli.main(["bench", option, value])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {option}: invalid choice: '{value}'" in error
    assert all(choice in error for choice in choices)


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


def test_projection_flops_count_the_smaller_recurrent_product_and_the_projection():
    # layer 0: 2 directions x (4 x 2*T*B*(I*H + P*H) + 2*T*B*H*P); layer 1 takes 2P inputs.
    steps, batch, inputs, hidden, proj = 3, 2, 4, 5, 2
    layer0 = 2 * 2 * steps * batch * (4 * (inputs * hidden + proj * hidden) + hidden * proj)
    layer1 = 2 * 2 * steps * batch * (4 * (2 * proj * hidden + proj * hidden) + hidden * proj)
    shape = (steps, batch, inputs, hidden, 2, True)
    assert bench.forward_flops(shape, "lstm", proj) == layer0 + layer1
    assert bench.forward_backward_flops(shape, "lstm", proj) == 3 * (layer0 + layer1)


def test_run_with_a_projection_times_the_projected_lstm_and_skips_peers_without_one():
    peers = installed_peers("numpy", "torch", "jax", "ort")
    shape = (4, 2, 3, 5, 2, True)
    results, _, notes = bench.run([shape], peers, np.float32, "lstm", budget=0.001, progress=io.StringIO(),
                                  settle=0.0, proj_size=2)
    (result,) = results
    assert set(result.peers) == {peer for peer in peers if peer in ("numpy", "torch")}
    for peer in {"jax", "ort"} & set(peers):
        assert f"skipped peer {peer}: {_bench_peers.PROJECTION_REASON}" in notes
    case = _bench_peers.Case.from_shape("lstm", shape, np.float32, proj_size=2)
    layer = _bench_peers.build_case_layer(fastrnn, case)
    output, (h_n, c_n) = layer(np.ones((4, 2, 3), dtype=np.float32))
    assert output.shape == (4, 2, 2 * 2) and h_n.shape == (4, 2, 2) and c_n.shape == (4, 2, 5)


@pytest.mark.parametrize("arguments", [
    ["--cell", "gru", "--proj-size", "2"],
    ["--cell", "lstm", "--proj-size", "5", "--shapes", "4,2,3,5"],
    ["--cell", "lstm", "--proj-size", "2", "--api", "torch"],
    ["--cell", "lstm", "--proj-size", "2", "--readme", "README.md"],
])
def test_projection_outside_what_it_applies_to_is_refused_before_timing(arguments, capsys):
    with pytest.raises(SystemExit, match="--proj-size|--readme"):
        _cli.main(["bench", *arguments])
    assert "[1/" not in capsys.readouterr().err


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_command_with_uniform_lengths(tmp_path, cell):
    path = tmp_path / "bench.json"
    peers = ",".join(installed_peers("numpy", "torch", "ort"))
    completed = subprocess.run(
        [sys.executable, "-m", "fastrnn", "bench", "--cell", cell, "--lengths", "uniform", "--shapes", "5,3,3,4",
         "--peers", peers, "--budget", "0.001", "--json", str(path)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "lengths uniform in [1, T] (--lengths uniform, seed 0)" in completed.stdout
    assert "lengths/full f+b" in completed.stdout
    data = json.loads(path.read_text())
    assert data["lengths"] == "uniform"
    (result,) = data["results"]
    assert result["lengths"] == bench.draw_lengths("uniform", 5, 3).tolist()
    assert set(result["peers"]) == set(peers.split(","))
    assert result["ratio_to_full_length_forward_backward"] > 0


class _FakeClock:
    """A clock that moves only when a timed function says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_paired_difference_is_the_candidates_extra_time_whichever_runs_first(monkeypatch):
    clock = _FakeClock()
    monkeypatch.setattr(bench.time, "perf_counter", clock)
    calls = {"baseline": 0, "candidate": 0}

    def baseline():
        calls["baseline"] += 1
        clock.now += 5.0

    def candidate():
        calls["candidate"] += 1
        clock.now += 7.0 if calls["candidate"] % 10 else 1000.0  # one call in ten is an outlier

    assert bench.paired_difference_seconds(baseline, candidate, budget=0.0, settle=0.0) == 2.0
    assert calls["baseline"] == calls["candidate"] >= 200
    assert bench.paired_difference_seconds(candidate, baseline, budget=0.0, settle=0.0) == -2.0


def without_settling(monkeypatch):
    """Drop the settling pause of every timed block: it is there for honest timings, which
    these tests do not read."""
    timed = bench.interleaved_medians
    monkeypatch.setattr(bench, "interleaved_medians",
                        lambda functions, budget, settle=0.0: timed(functions, budget, settle=0.0))


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_api_torch_command_writes_json(tmp_path, capsys, monkeypatch, cell):
    pytest.importorskip("torch")
    without_settling(monkeypatch)
    path = tmp_path / "bench.json"
    assert _cli.main(["bench", "--api", "torch", "--cell", cell, "--shapes", "4,2,3,5,2,bi", "--budget", "0.001",
                      "--json", str(path)]) == 0
    captured = capsys.readouterr()
    assert "[1/1] (4,2,3,5,2,bi)" in captured.err
    assert f"--api torch: {bench.CELL_TITLES[cell]} (--cell {cell})" in captured.out
    assert "| fastrnn.torch inference | fastrnn.torch train step | torch.nn inference | torch.nn train step |" in (
        captured.out
    )
    assert "fastrnn.torch overhead per call at (100,1,32,64,1,uni): " in captured.out
    data = json.loads(path.read_text())
    assert (data["api"], data["cell"], data["dtype"], data["lengths"]) == ("torch", cell, "float32", "full")
    assert data["overhead_shape"] == [100, 1, 32, 64, 1, False]
    assert isinstance(data["adapter_overhead_us"], float)
    (result,) = data["results"]
    assert result["shape"] == [4, 2, 3, 5, 2, True] and result["lengths"] is None
    times = ("fastrnn_torch_inference_ms", "fastrnn_torch_training_step_ms", "torch_nn_inference_ms",
             "torch_nn_training_step_ms")
    assert all(result[name] > 0 for name in times)
    assert result["speedup_inference"] == pytest.approx(result["torch_nn_inference_ms"]
                                                        / result["fastrnn_torch_inference_ms"])
    assert result["speedup_training_step"] == pytest.approx(result["torch_nn_training_step_ms"]
                                                            / result["fastrnn_torch_training_step_ms"])
    assert result["gflops_training_step"] > 0


def test_api_torch_with_uniform_lengths_runs_packed_sequences():
    pytest.importorskip("torch")
    (result,), gemm = bench.run_torch_api([(5, 3, 3, 4, 2, True)], np.float32, "lstm", budget=0.001,
                                          progress=io.StringIO(), settle=0.0, lengths="uniform")
    assert result.lengths == bench.draw_lengths("uniform", 5, 3).tolist()
    assert result.steps_run == pytest.approx(sum(result.lengths) / (5 * 3))
    table = bench.format_torch_api_table([result], gemm)
    header = [column.strip() for column in table.splitlines()[0].split("|")[1:-1]]
    assert header[:2] == ["shape (T,B,I,H,L,dir)", "steps run"]
    assert "pack_padded_sequence(x, lengths, enforce_sorted=False)" in table


def test_peers_with_api_torch_are_refused_before_timing(capsys):
    with pytest.raises(SystemExit, match="--peers does not apply with --api torch"):
        _cli.main(["bench", "--api", "torch", "--peers", "numpy"])
    assert "[1/" not in capsys.readouterr().err


def test_update_readme_puts_an_api_torch_table_between_its_own_markers(tmp_path):
    path = tmp_path / "README.md"
    lstm_start, lstm_end = bench.readme_markers("lstm")
    torch_start, torch_end = bench.readme_markers("lstm", api="torch")
    assert torch_start == "<!-- bench-table:lstm:api-torch:start -->"
    lengths_start, _ = bench.readme_markers("gru", "uniform", "torch")
    assert lengths_start == "<!-- bench-table:gru:api-torch:lengths-uniform:start -->"
    path.write_text(f"{lstm_start}\nnumpy lstm\n{lstm_end}\n{torch_start}\nold\n{torch_end}\n")
    bench.update_readme(str(path), "cmd", "| torch lstm |", "lstm", api="torch")
    text = path.read_text()
    assert "old" not in text and "| torch lstm |" in text
    assert f"{lstm_start}\nnumpy lstm\n{lstm_end}" in text


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


def test_update_readme_puts_a_lengths_table_between_its_own_markers(tmp_path):
    path = tmp_path / "README.md"
    gru_start, gru_end = bench.readme_markers("gru")
    lengths_start, lengths_end = bench.readme_markers("gru", "uniform")
    assert lengths_start == "<!-- bench-table:gru:lengths-uniform:start -->"
    path.write_text(f"{gru_start}\nfull gru\n{gru_end}\n{lengths_start}\nold\n{lengths_end}\n")
    bench.update_readme(str(path), "cmd", "| gru lengths |", "gru", "uniform")
    text = path.read_text()
    assert "old" not in text and "| gru lengths |" in text
    assert f"{gru_start}\nfull gru\n{gru_end}" in text


def test_readme_without_the_lengths_markers_is_refused_before_timing(tmp_path, capsys):
    path = tmp_path / "README.md"
    path.write_text(f"{bench.README_START}\nfull-length table\n{bench.README_END}\n")
    with pytest.raises(SystemExit, match="needs the markers '<!-- bench-table:rnn_tanh:lengths-uniform:start -->'"):
        _cli.main(["bench", "--lengths", "uniform", "--peers", "numpy", "--readme", str(path)])
    assert "[1/" not in capsys.readouterr().err  # no shape was timed


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
