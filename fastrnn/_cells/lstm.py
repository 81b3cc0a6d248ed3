"""The LSTM cell, with torch's gate order (i, f, g, o) and optional projection.

``i, f, o = sigmoid(...)``, ``g = tanh(...)`` of ``x W_ih^T + b_ih + h W_hh^T + b_hh``;
``c' = f c + i g``; ``h' = (o tanh(c')) W_hr^T``, or ``o tanh(c')`` without projection.
"""

from __future__ import annotations

import numpy as np

from .kind import CellKind


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _step(weights, x, state):
    h, c = state
    gates = x @ weights["weight_ih"].T + weights["bias_ih"] + h @ weights["weight_hh"].T + weights["bias_hh"]
    i, f, g, o = np.split(gates, 4, axis=1)
    i, f, g, o = _sigmoid(i), _sigmoid(f), np.tanh(g), _sigmoid(o)
    c_next = f * c + i * g
    unprojected = o * np.tanh(c_next)
    weight_hr = weights.get("weight_hr")
    h_next = unprojected if weight_hr is None else unprojected @ weight_hr.T
    return (h_next, c_next), (x, h, c, i, f, g, o, c_next, unprojected)


def _step_backward(weights, cache, grad_next):
    x, h, c, i, f, g, o, c_next, unprojected = cache
    grad_h_next, grad_c_next = grad_next
    grads = {}
    weight_hr = weights.get("weight_hr")
    if weight_hr is None:
        grad_unprojected = grad_h_next
    else:
        grad_unprojected = grad_h_next @ weight_hr
        grads["weight_hr"] = grad_h_next.T @ unprojected
    tanh_c = np.tanh(c_next)
    grad_o = grad_unprojected * tanh_c
    grad_c = grad_c_next + grad_unprojected * o * (1 - tanh_c * tanh_c)
    grad_gates = np.concatenate(
        [grad_c * g * i * (1 - i), grad_c * c * f * (1 - f), grad_c * i * (1 - g * g), grad_o * o * (1 - o)], axis=1
    )
    grad_bias = grad_gates.sum(axis=0)
    grads.update(
        weight_ih=grad_gates.T @ x, weight_hh=grad_gates.T @ h, bias_ih=grad_bias, bias_hh=grad_bias,
    )
    grad_state = (grad_gates @ weights["weight_hh"], grad_c * f)
    return grad_gates @ weights["weight_ih"], grad_state, grads


KIND = CellKind(
    name="lstm", gates=4, states=("h", "c"), activation="sigmoid and tanh", separate_hidden_bias=False,
    takes_proj_size=True, kernel_module="fastrnn._kernels.lstm", reference_step=_step,
    reference_step_backward=_step_backward,
)
