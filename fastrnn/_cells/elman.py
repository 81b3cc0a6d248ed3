"""The Elman cell: ``h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh)``, act tanh or ReLU."""

from __future__ import annotations

import numpy as np

from .kind import CellKind


def _tanh_step(weights, x, state):
    (h,) = state
    h_next = np.tanh(x @ weights["weight_ih"].T + weights["bias_ih"] + h @ weights["weight_hh"].T + weights["bias_hh"])
    return (h_next,), (x, h, h_next)


def _relu_step(weights, x, state):
    (h,) = state
    pre = x @ weights["weight_ih"].T + weights["bias_ih"] + h @ weights["weight_hh"].T + weights["bias_hh"]
    h_next = np.maximum(pre, 0)
    return (h_next,), (x, h, h_next)


def _backward(weights, cache, grad_next, slope):
    x, h, h_next = cache
    grad_pre = grad_next[0] * slope(h_next)
    grad_bias = grad_pre.sum(axis=0)
    grads = {
        "weight_ih": grad_pre.T @ x,
        "weight_hh": grad_pre.T @ h,
        "bias_ih": grad_bias,
        "bias_hh": grad_bias,
    }
    return grad_pre @ weights["weight_ih"], (grad_pre @ weights["weight_hh"],), grads


def _tanh_step_backward(weights, cache, grad_next):
    return _backward(weights, cache, grad_next, lambda h: 1 - h * h)


def _relu_step_backward(weights, cache, grad_next):
    return _backward(weights, cache, grad_next, lambda h: (h > 0).astype(h.dtype))


def _kind(name: str, activation: str, step, step_backward) -> CellKind:
    return CellKind(
        name=name, gates=1, states=("h",), activation=activation, separate_hidden_bias=False,
        takes_proj_size=False, kernel_module="fastrnn._kernels.elman", reference_step=step,
        reference_step_backward=step_backward,
    )


TANH = _kind("rnn_tanh", "tanh", _tanh_step, _tanh_step_backward)
RELU = _kind("rnn_relu", "relu", _relu_step, _relu_step_backward)
