"""Property tests: over random shapes, down to one step, one sequence and one unit, fastrnn
agrees with the NumPy reference."""

from __future__ import annotations

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st

import fastrnn
from fastrnn import reference

from .conftest import VALUE_TOLERANCES, Config, assert_results_close, make_layers, make_problem, run_layer


def configs(**overrides):
    arguments = {
        "input_size": st.integers(1, 5),
        "hidden_size": st.integers(1, 6),
        "num_layers": st.integers(1, 3),
        "nonlinearity": st.sampled_from(["tanh", "relu"]),
        "bias": st.booleans(),
        "batch_first": st.booleans(),
        "bidirectional": st.booleans(),
    }
    return st.builds(Config, **{**arguments, **overrides})


steps_counts = st.integers(1, 8)
batch_sizes = st.integers(1, 4)
seeds = st.integers(0, 2**32 - 1)
SMALLEST = Config(input_size=1, hidden_size=1)


@given(
    config=configs(), steps=steps_counts, batch=batch_sizes, batched=st.booleans(), with_hx=st.booleans(),
    seed=seeds,
)
@example(config=SMALLEST, steps=1, batch=1, batched=True, with_hx=True, seed=0)
@example(config=SMALLEST, steps=1, batch=1, batched=False, with_hx=False, seed=0)
@example(config=Config(input_size=1, hidden_size=1, num_layers=3, bidirectional=True), steps=1, batch=1,
         batched=True, with_hx=True, seed=0)
def test_forward_and_backward_match_reference_in_float64(config, steps, batch, batched, with_hx, seed):
    fast, slow = make_layers(config, np.float64, seed=seed)
    problem = make_problem(config, np.float64, steps=steps, batch=batch, batched=batched, with_hx=with_hx, seed=seed)

    assert_results_close(run_layer(fast, problem), run_layer(slow, problem), np.float64)


@given(config=configs(), steps=steps_counts, batch=batch_sizes, seed=seeds)
@example(config=SMALLEST, steps=1, batch=1, seed=0)
def test_forward_and_backward_match_reference_in_float32(config, steps, batch, seed):
    fast, slow = make_layers(config, np.float32, seed=seed)
    problem = make_problem(config, np.float32, steps=steps, batch=batch, seed=seed)

    assert_results_close(run_layer(fast, problem), run_layer(slow, problem), np.float32)


@given(config=configs(), steps=steps_counts, batch=batch_sizes, seed=seeds)
@example(config=SMALLEST, steps=1, batch=1, seed=0)
def test_functional_matches_reference_functional_in_float64(config, steps, batch, seed):
    params = reference.RNN(**vars(config), dtype=np.float64, seed=seed).state_dict()
    problem = make_problem(config, np.float64, steps=steps, batch=batch, seed=seed)
    options = {"nonlinearity": config.nonlinearity, "batch_first": config.batch_first}

    fast_output, fast_h_n, fast_saved = fastrnn.functional.rnn_forward(problem.x, problem.hx, params, **options)
    slow_output, slow_h_n, slow_saved = reference.rnn_forward(problem.x, problem.hx, params, **options)
    fast_grads = fastrnn.functional.rnn_backward(fast_saved, problem.grad_output, problem.grad_h_n)
    slow_grads = reference.rnn_backward(slow_saved, problem.grad_output, problem.grad_h_n)

    def collect(output, h_n, grads):
        grad_x, grad_hx, param_grads = grads
        return {"output": output, "h_n": h_n, "grad_x": grad_x, "grad_hx": grad_hx, **param_grads}

    assert_results_close(
        collect(fast_output, fast_h_n, fast_grads), collect(slow_output, slow_h_n, slow_grads), np.float64
    )


@given(config=configs(), steps=st.integers(1, 200), batch=batch_sizes, seed=seeds)
@example(config=Config(num_layers=2), steps=128, batch=1, seed=0)
@example(config=Config(num_layers=3), steps=129, batch=2, seed=0)
def test_inference_matches_reference_over_any_length(config, steps, batch, seed):
    fast, slow = make_layers(config, np.float64, seed=seed)
    fast.eval()
    problem = make_problem(config, np.float64, steps=steps, batch=batch, seed=seed)

    output, h_n = fast(problem.x, problem.hx)
    expected_output, expected_h_n = slow(problem.x, problem.hx, requires_grad=False)

    np.testing.assert_allclose(output, expected_output, **VALUE_TOLERANCES["float64"])
    np.testing.assert_allclose(h_n, expected_h_n, **VALUE_TOLERANCES["float64"])


@given(
    config=configs(num_layers=st.integers(2, 3), dropout=st.floats(0.0, 1.0)),
    steps=steps_counts,
    batch=batch_sizes,
    seed=seeds,
)
def test_training_with_dropout_matches_reference(config, steps, batch, seed):
    fast, slow = make_layers(config, np.float64, seed=seed)
    problem = make_problem(config, np.float64, steps=steps, batch=batch, seed=seed)

    assert_results_close(run_layer(fast, problem), run_layer(slow, problem), np.float64)
