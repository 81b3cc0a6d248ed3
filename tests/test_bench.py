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

from fastrnn import bench


def test_parse_shapes_fills_in_layers_and_direction():
    assert bench.parse_shapes("5,2,3,4; (6,1,2,3,2,bi)") == [(5, 2, 3, 4, 1, False), (6, 1, 2, 3, 2, True)]


@pytest.mark.parametrize("text", ["5,2,3", "5,2,3,4,1,sideways", "a,b,c,d"])
def test_parse_shapes_rejects_malformed_shapes(text):
    with pytest.raises(ValueError):
        bench.parse_shapes(text)


def test_forward_backward_flops_counts_every_layer_direction():
    # layer 0: 2 directions x 2*T*B*(I*H + H*H); layer 1 takes 2H inputs.
    steps, batch, inputs, hidden = 3, 2, 4, 5
    layer0 = 2 * 2 * steps * batch * (inputs * hidden + hidden * hidden)
    layer1 = 2 * 2 * steps * batch * (2 * hidden * hidden + hidden * hidden)
    assert bench.forward_backward_flops((steps, batch, inputs, hidden, 2, True)) == 3 * (layer0 + layer1)


def test_run_times_fastrnn_and_the_numpy_peer():
    shape = (4, 2, 3, 5, 2, True)
    results, gemm, notes = bench.run(
        [shape], ["numpy"], np.float32, "rnn_tanh", budget=0.001, progress=io.StringIO(), settle=0.0
    )
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


def test_command_writes_json(tmp_path):
    path = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, "-m", "fastrnn", "bench", "--shapes", "4,2,3,5", "--peers", "numpy",
         "--budget", "0.001", "--json", str(path)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "[1/1] (4,2,3,5,1,uni)" in completed.stderr
    data = json.loads(path.read_text())
    assert data["dtype"] == "float32" and data["cell"] == "rnn_tanh"
    assert [tuple(r["shape"]) for r in data["results"]] == [(4, 2, 3, 5, 1, False)]


def test_update_readme_replaces_only_the_marked_block(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(f"intro\n{bench.README_START}\nold table\n{bench.README_END}\noutro\n")
    bench.update_readme(str(path), "python -m fastrnn bench", "| new |")
    text = path.read_text()
    assert "old table" not in text
    assert text.startswith("intro\n") and text.endswith(f"{bench.README_END}\noutro\n")
    assert "Produced by `python -m fastrnn bench`:\n\n| new |\n" in text


def test_update_readme_without_markers_is_an_error(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("no markers here\n")
    with pytest.raises(ValueError, match="needs the markers"):
        bench.update_readme(str(path), "cmd", "table")
    assert path.read_text() == "no markers here\n"
