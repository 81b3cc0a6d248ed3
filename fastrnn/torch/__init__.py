"""fastrnn's kernels behind torch.nn's recurrent modules, autograd included.

``RNN``, ``LSTM``, ``GRU``, ``RNNCell``, ``LSTMCell`` and ``GRUCell`` subclass the torch.nn
classes of the same names and replace ``forward`` only, so they are built, saved, loaded
and moved exactly as torch's are. ``swap(model)`` turns the torch.nn ones inside a model
into these, in place, keeping their parameters::

    import fastrnn.torch
    model = fastrnn.torch.swap(model)

Calls that fastrnn cannot run (tensors off the CPU, dtypes other than float32 and
float64, CPU autocast, tensor subclasses, torch.func transforms) run torch's own forward,
with a :class:`FallbackWarning` the first time for each module. Double backward is not
supported and raises ``RuntimeError``.

``import fastrnn`` never imports torch; this subpackage needs it.
"""

from __future__ import annotations

try:
    import torch as _torch  # noqa: F401 -- fail here, with the fix, when torch is missing
except ImportError as error:
    raise ImportError(
        "fastrnn.torch needs PyTorch, which is not installed: pip install torch "
        "(or pip install 'fastrnn[torch]'); the rest of fastrnn runs without it"
    ) from error

from ._modules import GRU, LSTM, RNN, FallbackWarning, GRUCell, LSTMCell, RNNCell, swap

__all__ = ["GRU", "LSTM", "RNN", "FallbackWarning", "GRUCell", "LSTMCell", "RNNCell", "swap"]

# Pickles of models (torch.save(model)) name the classes by this public path, not the
# private module they are defined in.
for _public in (GRU, LSTM, RNN, FallbackWarning, GRUCell, LSTMCell, RNNCell, swap):
    _public.__module__ = __name__
del _public
