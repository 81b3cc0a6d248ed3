"""Per-thread buffers that live within one layer call (``fastrnn._scratch``): reused, kept
apart by slot and thread, bounded, and never leaking one call's values into the next."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import fastrnn
from fastrnn import _scratch


def test_a_slot_hands_its_thread_the_same_memory_again():
    first = _scratch.array(_scratch.INFERENCE_GATES, (10, 4), np.float32)
    again = _scratch.array(_scratch.INFERENCE_GATES, (3, 2), np.float64)
    assert np.shares_memory(first, again)
    assert again.shape == (3, 2) and again.dtype == np.float64


def test_slots_and_threads_get_buffers_of_their_own():
    mine = _scratch.array(_scratch.GRADIENT_GATES, 64, np.uint8)
    other_slot = _scratch.array(_scratch.GRADIENT_CANDIDATE, 64, np.uint8)
    assert not np.shares_memory(mine, other_slot)
    theirs = []
    thread = threading.Thread(target=lambda: theirs.append(_scratch.array(_scratch.GRADIENT_GATES, 64, np.uint8)))
    thread.start()
    thread.join()
    assert not np.shares_memory(mine, theirs[0])


def test_buffers_over_the_limit_are_not_kept():
    size = _scratch.LIMIT_BYTES + 1
    first = _scratch.array(_scratch.PACKED_INPUT, size, np.uint8)
    second = _scratch.array(_scratch.PACKED_INPUT, size, np.uint8)
    assert not np.shares_memory(first, second)


@pytest.mark.parametrize("layer_name", ["LSTM", "GRU"])
def test_inference_after_a_larger_call_gives_the_training_forwards_bits(layer_name):
    # The inference gates (and, in backward, the gate gradients) come from kept buffers
    # that the call before filled: every value must be written before it is read.
    layer = getattr(fastrnn, layer_name)(3, 5, seed=0)
    layer.eval()
    rng = np.random.default_rng(1)
    layer(rng.standard_normal((40, 6, 3), dtype=np.float32))
    for steps, batch in ((7, 2), (1, 1), (12, 3)):
        x = rng.standard_normal((steps, batch, 3), dtype=np.float32)
        output, _ = layer(x)
        kept_output, _ = layer(x, requires_grad=True)
        np.testing.assert_array_equal(output, kept_output)
        grad_x, _ = layer.backward(np.ones_like(kept_output))
        fresh = getattr(fastrnn, layer_name)(3, 5, seed=0)
        fresh_output, _ = fresh(x, requires_grad=True)
        np.testing.assert_array_equal(kept_output, fresh_output)
        np.testing.assert_array_equal(grad_x, fresh.backward(np.ones_like(fresh_output))[0])
