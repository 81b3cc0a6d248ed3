"""Analytic gradients against central differences, through fastrnn.testing.gradcheck."""

from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from fastrnn import reference
from fastrnn.testing import GradcheckError, GradcheckResult, gradcheck

from .conftest import Config, random_array

LAYER_CASES = [
    (Config(input_size=3, hidden_size=4), True, True),
    (Config(input_size=3, hidden_size=4, nonlinearity="relu"), True, True),
    (Config(input_size=3, hidden_size=4, bias=False), True, False),
    (Config(input_size=3, hidden_size=4, bidirectional=True), True, True),
    (Config(input_size=3, hidden_size=4, num_layers=2), True, False),
    (Config(input_size=3, hidden_size=4, num_layers=2, bidirectional=True), True, True),
    (Config(input_size=3, hidden_size=4, num_layers=2, bidirectional=True, nonlinearity="relu"), True, True),
    (Config(input_size=3, hidden_size=4, num_layers=2, batch_first=True, bias=False), True, True),
    (Config(input_size=3, hidden_size=4, num_layers=2, bidirectional=True), False, True),
    (Config(input_size=2, hidden_size=3, batch_first=True, nonlinearity="relu"), False, False),
]


@pytest.mark.parametrize("layer_class", [fastrnn.RNN, reference.RNN], ids=["fastrnn", "reference"])
@pytest.mark.parametrize("config,batched,with_hx", LAYER_CASES, ids=str)
def test_layer_gradients_match_central_differences(layer_class, config, batched, with_hx):
    layer = layer_class(**vars(config), dtype=np.float64, seed=1)
    x = random_array(config.input_shape(4, 2, batched), np.float64, 2)
    hx = random_array(config.state_shape(2, batched), np.float64, 3) if with_hx else None

    report = gradcheck(layer, x, hx)

    assert set(report) == {"input", "hx", *layer.state_dict()}
    assert all(result.passed for result in report.values())


@pytest.mark.parametrize("module", [fastrnn.functional, reference], ids=["fastrnn", "reference"])
def test_functional_gradients_match_central_differences(module):
    config = Config(input_size=3, hidden_size=4, num_layers=2, bidirectional=True, batch_first=True)
    params = reference.RNN(**vars(config), dtype=np.float64, seed=4).state_dict()
    x = random_array(config.input_shape(4, 2), np.float64, 5)

    report = gradcheck(module, x, params=params, nonlinearity="tanh", batch_first=True)

    assert set(report) == {"input", "hx", *params}
    assert all(result.passed for result in report.values())


class _SabotagedRNN(fastrnn.RNN):
    """A layer whose backward reports a wrong gradient for one recurrent weight."""

    def backward(self, grad_output, grad_h_n=None):
        grad_x, grad_hx = super().backward(grad_output, grad_h_n)
        self.grads["weight_hh_l0"] *= 1.01
        return grad_x, grad_hx


def test_wrong_gradient_raises_with_a_per_tensor_report():
    layer = _SabotagedRNN(3, 4, dtype=np.float64, seed=0)
    x = random_array((4, 2, 3), np.float64, 1)

    with pytest.raises(GradcheckError, match="gradient check failed") as caught:
        gradcheck(layer, x)

    lines = caught.value.args[0].splitlines()
    failing = [line for line in lines if "FAIL" in line]
    assert len(failing) == 1 and "weight_hh_l0" in failing[0]
    assert any(line.strip().startswith("ok") and "weight_ih_l0" in line for line in lines)
    assert "max abs error" in failing[0] and "max rel error" in failing[0]


def test_wrong_gradient_is_reported_without_raising_on_request():
    layer = _SabotagedRNN(3, 4, dtype=np.float64, seed=0)
    x = random_array((4, 2, 3), np.float64, 1)

    report = gradcheck(layer, x, raise_on_failure=False)

    assert not report["weight_hh_l0"].passed
    assert report["weight_hh_l0"].max_rel_error == pytest.approx(0.01, rel=1e-3)
    assert all(result.passed for name, result in report.items() if name != "weight_hh_l0")
    assert isinstance(report["input"], GradcheckResult)


class _InputGradientOffByScale:
    """A functional module whose backward returns a wrong input gradient."""

    @staticmethod
    def rnn_forward(*args, **kwargs):
        return fastrnn.functional.rnn_forward(*args, **kwargs)

    @staticmethod
    def rnn_backward(saved, grad_output, grad_h_n=None):
        grad_x, grad_hx, param_grads = fastrnn.functional.rnn_backward(saved, grad_output, grad_h_n)
        return 2 * grad_x, grad_hx, param_grads


def test_wrong_functional_gradient_raises():
    params = fastrnn.RNN(3, 4, dtype=np.float64, seed=0).state_dict()
    x = random_array((4, 2, 3), np.float64, 1)

    with pytest.raises(GradcheckError, match=r"FAIL input\s"):
        gradcheck(_InputGradientOffByScale, x, params=params)


def test_float32_layer_is_rejected():
    layer = fastrnn.RNN(3, 4, seed=0)
    with pytest.raises(TypeError, match="float64.*float32"):
        gradcheck(layer, random_array((4, 2, 3), np.float64, 1))


def test_functional_module_without_params_is_rejected():
    with pytest.raises(TypeError, match="params="):
        gradcheck(fastrnn.functional, random_array((4, 2, 3), np.float64, 1))


def test_unknown_target_is_rejected():
    with pytest.raises(TypeError, match="layer or a module.*got int"):
        gradcheck(42, random_array((4, 2, 3), np.float64, 1))
