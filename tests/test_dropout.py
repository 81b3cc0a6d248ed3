"""Inter-layer dropout: reproducible masks, exact gradients under a mask, none in eval mode."""

from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from fastrnn import reference
from fastrnn._dropout import dropout_mask
from fastrnn.testing import gradcheck

from .conftest import Config, assert_results_close, make_layers, make_problem, random_array, run_layer

DROPOUT_CONFIGS = [
    Config(input_size=3, hidden_size=4, num_layers=2, dropout=0.5),
    Config(input_size=3, hidden_size=4, num_layers=3, dropout=0.3, bidirectional=True, nonlinearity="relu"),
    Config(input_size=3, hidden_size=4, num_layers=2, dropout=0.4, batch_first=True, bias=False),
]


@pytest.mark.parametrize("layer_class", [fastrnn.RNN, reference.RNN], ids=["fastrnn", "reference"])
@pytest.mark.parametrize("config", DROPOUT_CONFIGS, ids=str)
def test_gradients_under_a_fixed_mask_match_central_differences(layer_class, config):
    layer = layer_class(**vars(config), dtype=np.float64, seed=7)
    x = random_array(config.input_shape(4, 2), np.float64, 8)

    report = gradcheck(layer, x, random_array(config.state_shape(2), np.float64, 9))

    assert all(result.passed for result in report.values())


@pytest.mark.parametrize("module", [fastrnn.functional, reference], ids=["fastrnn", "reference"])
def test_functional_gradients_under_a_fixed_mask_match_central_differences(module):
    config = DROPOUT_CONFIGS[1]
    params = reference.RNN(**vars(config), dtype=np.float64, seed=7).state_dict()
    x = random_array(config.input_shape(4, 2), np.float64, 8)

    report = gradcheck(
        module, x, params=params, nonlinearity=config.nonlinearity, dropout=config.dropout,
        training=True, generator=np.random.default_rng(10),
    )

    assert all(result.passed for result in report.values())


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("config", DROPOUT_CONFIGS, ids=str)
def test_fastrnn_and_reference_drop_the_same_units(config, dtype):
    fast, slow = make_layers(config, dtype, seed=11)
    problem = make_problem(config, dtype)

    assert_results_close(run_layer(fast, problem), run_layer(slow, problem), dtype)
    # The generators advanced identically, so the next masks match too.
    assert_results_close(run_layer(fast, problem), run_layer(slow, problem), dtype)


def test_same_seed_gives_same_outputs_and_next_call_a_new_mask():
    config = DROPOUT_CONFIGS[0]
    first, second = fastrnn.RNN(**vars(config), seed=12), fastrnn.RNN(**vars(config), seed=12)
    x = random_array(config.input_shape(5, 3), np.float32, 13)

    output, h_n = first(x)
    same_output, same_h_n = second(x)
    next_output, _ = first(x)

    np.testing.assert_array_equal(output, same_output)
    np.testing.assert_array_equal(h_n, same_h_n)
    assert not np.allclose(output, next_output)


def test_functional_generator_seed_fixes_the_mask():
    config = DROPOUT_CONFIGS[1]
    params = fastrnn.RNN(**vars(config), seed=14).state_dict()
    x = random_array(config.input_shape(5, 3), np.float32, 15)

    def run(seed):
        output, _, _ = fastrnn.functional.rnn_forward(
            x, None, params, nonlinearity="relu", dropout=config.dropout, training=True,
            generator=np.random.default_rng(seed),
        )
        return output

    np.testing.assert_array_equal(run(16), run(16))
    assert not np.allclose(run(16), run(17))


@pytest.mark.parametrize("config", DROPOUT_CONFIGS, ids=str)
def test_eval_mode_applies_no_dropout(config):
    fast = fastrnn.RNN(**vars(config), dtype=np.float64, seed=18)
    undropped = reference.RNN(**{**vars(config), "dropout": 0.0}, dtype=np.float64)
    undropped.load_state_dict(fast.state_dict())
    problem = make_problem(config, np.float64)

    training_output, _ = fast(problem.x, problem.hx)
    fast.eval()
    eval_results = run_layer(fast, problem)

    assert_results_close(eval_results, run_layer(undropped, problem), np.float64)
    assert not np.allclose(training_output, eval_results["output"])


def test_functional_dropout_needs_training():
    config = DROPOUT_CONFIGS[0]
    params = fastrnn.RNN(**vars(config), dtype=np.float64, seed=19).state_dict()
    x = random_array(config.input_shape(5, 3), np.float64, 20)

    dropped, _, _ = fastrnn.functional.rnn_forward(
        x, None, params, dropout=0.5, training=True, generator=np.random.default_rng(0)
    )
    not_training, _, _ = fastrnn.functional.rnn_forward(x, None, params, dropout=0.5, training=False)
    no_dropout, _, _ = reference.rnn_forward(x, None, params)

    np.testing.assert_allclose(not_training, no_dropout, rtol=1e-12, atol=1e-12)
    assert not np.allclose(dropped, no_dropout)


def test_dropout_one_cuts_the_input_off_from_upper_layers():
    layer = fastrnn.RNN(3, 4, num_layers=2, dropout=1.0, dtype=np.float64, seed=21)
    output, _ = layer(random_array((5, 2, 3), np.float64, 22))
    other_output, _ = layer(random_array((5, 2, 3), np.float64, 23))
    np.testing.assert_array_equal(output, other_output)


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_mask_drops_a_fraction_p_and_rescales_the_rest(p):
    mask = dropout_mask(np.random.default_rng(24), (200, 50), p, np.dtype(np.float32))

    assert mask.dtype == np.float32
    assert set(np.unique(mask)) == {np.float32(0), np.float32(1 / (1 - p))}
    assert np.mean(mask == 0) == pytest.approx(p, abs=0.02)


def test_float32_and_float64_layers_with_one_seed_drop_the_same_units():
    config = Config(input_size=3, hidden_size=4, num_layers=2, dropout=0.5)
    single = fastrnn.RNN(**vars(config), dtype=np.float32, seed=25)
    double = fastrnn.RNN(**vars(config), dtype=np.float64, seed=25)
    double.load_state_dict(single.state_dict())
    x = random_array(config.input_shape(5, 3), np.float64, 26)

    single_output, _ = single(x.astype(np.float32))
    double_output, _ = double(x)

    np.testing.assert_allclose(single_output, double_output, rtol=1e-4, atol=1e-5)
