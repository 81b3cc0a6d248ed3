"""fastrnn: fused Numba kernels for recurrent networks on the CPU."""

from . import functional, reference, testing
from ._files import load, save
from ._parallel import get_num_threads, set_num_threads
from .cells import GRUCell, LSTMCell, RNNCell
from .layers import GRU, LSTM, RNN

__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "RNN", "RNNCell", "functional", "get_num_threads", "load",
           "reference", "save", "set_num_threads", "testing"]
__version__ = "0.1.0"
