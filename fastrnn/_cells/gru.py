"""The GRU cell, with torch's gate order (r, z, n) and formula.

``r, z = sigmoid(x W_i^T + b_i + h W_h^T + b_h)`` for their blocks,
``n = tanh(x W_in^T + b_in + r (h W_hn^T + b_hn))``, ``h' = (1 - z) n + z h``:
``b_hn`` stays inside the product with ``r``, so its gradient differs from ``b_in``'s.
"""

from __future__ import annotations

import numpy as np

from .kind import CellKind


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _step(weights, x, state):
    (h,) = state
    from_input = x @ weights["weight_ih"].T + weights["bias_ih"]
    from_hidden = h @ weights["weight_hh"].T + weights["bias_hh"]
    input_r, input_z, input_n = np.split(from_input, 3, axis=1)
    hidden_r, hidden_z, hidden_n = np.split(from_hidden, 3, axis=1)
    r = _sigmoid(input_r + hidden_r)
    z = _sigmoid(input_z + hidden_z)
    n = np.tanh(input_n + r * hidden_n)
    h_next = (1 - z) * n + z * h
    return (h_next,), (x, h, r, z, n, hidden_n)


def _step_backward(weights, cache, grad_next):
    x, h, r, z, n, hidden_n = cache
    (grad_h_next,) = grad_next
    grad_n_pre = grad_h_next * (1 - z) * (1 - n * n)
    grad_r_pre = grad_n_pre * hidden_n * r * (1 - r)
    grad_z_pre = grad_h_next * (h - n) * z * (1 - z)
    grad_from_input = np.concatenate([grad_r_pre, grad_z_pre, grad_n_pre], axis=1)
    grad_from_hidden = np.concatenate([grad_r_pre, grad_z_pre, grad_n_pre * r], axis=1)
    grads = {
        "weight_ih": grad_from_input.T @ x,
        "weight_hh": grad_from_hidden.T @ h,
        "bias_ih": grad_from_input.sum(axis=0),
        "bias_hh": grad_from_hidden.sum(axis=0),
    }
    grad_h = grad_h_next * z + grad_from_hidden @ weights["weight_hh"]
    return grad_from_input @ weights["weight_ih"], (grad_h,), grads


KIND = CellKind(
    name="gru", gates=3, states=("h",), activation="sigmoid and tanh", separate_hidden_bias=True,
    takes_proj_size=False, kernel_module="fastrnn._kernels.gru", reference_step=_step,
    reference_step_backward=_step_backward,
)
