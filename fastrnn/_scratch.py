"""Buffers that live only within one layer call, kept by each thread for its next call.

A fresh buffer costs a page fault per 4 KiB page the first time a kernel writes it,
whenever the allocator has handed the memory back to the system, and on a virtual
machine a fault costs about a microsecond or more:
- at (T, B, H) = (100, 16, 2x128), 800 faults took a 2-layer bidirectional forward from
  1.2-1.3 to 2.1-2.3 ms;
- on an AVX2 EPYC, an LSTM layer's inference call at (T, B, I, H) = (400, 1, 32, 64), whose
  input projections take 400 KiB, ran in 1117 µs with a fresh buffer and in 866 µs with a
  kept one (GRU: 884 and 644 µs; training steps: LSTM 2540 and 2280 µs). At T = 100,
  below the allocator's threshold for mapping fresh memory, both took the same time.
Buffers over ``LIMIT_BYTES`` are not kept, so that memory stays bounded; their compute
grows faster than their page count.

Each use has a slot of its own, so that buffers alive at the same time never share one.
"""

import math
import threading

import numpy as np

LIMIT_BYTES = 16 * 2**20

# The slots.
HIDDEN_EVEN_LAYER = 0  # an inference call's hidden states below the top, by layer parity
HIDDEN_ODD_LAYER = 1
PACKED_INPUT = 2  # an inference call's input, packed by length
INFERENCE_GATES = 3  # a gated layer's input projections in inference
GRADIENT_GATES = 4  # the gradient of a gated layer's gate pre-activations, in backward
GRADIENT_CANDIDATE = 5  # GRU's gradient of W_hn h + b_hn, in backward

_kept = threading.local()


def array(slot: int, shape: tuple[int, ...] | int, dtype) -> np.ndarray:
    """An uninitialised array that this thread reuses across calls (a fresh one when large)."""
    # math.prod, not np.prod: this runs on every gated layer call, and np.prod of a short
    # tuple took 6-7 µs on an AVX2 EPYC against 0.08 µs.
    count = math.prod(shape) if isinstance(shape, tuple) else int(shape)
    nbytes = count * np.dtype(dtype).itemsize
    if nbytes > LIMIT_BYTES:
        return np.empty(shape, dtype=dtype)
    buffers = getattr(_kept, "buffers", None)
    if buffers is None:
        buffers = _kept.buffers = {}
    buffer = buffers.get(slot)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = buffers[slot] = np.empty(nbytes, dtype=np.uint8)
    return buffer[:nbytes].view(dtype).reshape(shape)
