"""A character-level LSTM language model of Python's standard library, on fastrnn.torch and on torch.nn.

The text is the source of the running interpreter's own standard library: the ``.py``
files directly in ``os.path.dirname(os.__file__)``, in sorted order, whole files until
about 2 MB, so nothing is downloaded and a given Python always reads the same text. The
last tenth is held out for validation.

The model embeds each character, runs a one-layer LSTM (hidden 256) over sequences of
128 characters, and predicts the next character with a linear layer over the text's
characters; Adam trains it on batches of 32 sequences. One model is built, and two copies
of its initial weights are trained on the same batches for the same steps, one with
torch.nn's LSTM and one after ``fastrnn.torch.swap``. The script prints each one's
validation bits per character and training wall time, how far apart their losses are,
and a Markdown table.

    python examples/char_lm.py               # 300 steps (the default)
    python examples/char_lm.py --steps 1000  # longer
    python examples/char_lm.py --quick       # 5 steps and a small validation, to check that it runs
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import fastrnn.torch

SEQUENCE_LENGTH = 128
BATCH_SIZE = 32
HIDDEN_SIZE = 256
EMBEDDING_SIZE = 64
# Enough text for a few hundred steps of 32 x 128 characters without reading the same
# window often, and small enough to read in a blink.
CORPUS_BYTES = 2_000_000
VALIDATION_SHARE = 0.1
LEARNING_RATE = 3e-3
# Clipping keeps an LSTM's occasional gradient spike from undoing Adam's progress.
MAX_GRAD_NORM = 1.0


@dataclass(frozen=True)
class Corpus:
    """The text as character ids, split in two, and the characters the ids stand for."""

    train: np.ndarray  # int64 ids
    validation: np.ndarray
    alphabet: str
    files: int


def standard_library_source(limit: int = CORPUS_BYTES) -> tuple[str, int]:
    """The running interpreter's top-level standard library ``.py`` files, sorted by name and
    joined whole until ``limit`` bytes are reached; returns the text and the number of files.

    Only the top level: the folders below it include site-packages, which differs from one
    environment to the next.
    """
    folder = os.path.dirname(os.__file__)
    names = sorted(name for name in os.listdir(folder) if name.endswith(".py"))
    parts, size = [], 0
    for name in names:
        with open(os.path.join(folder, name), "rb") as handle:
            data = handle.read()
        parts.append(data.decode("utf-8", errors="replace"))
        size += len(data)
        if size >= limit:
            break
    if not parts:
        raise SystemExit(f"no .py files found in {folder}, the standard library of this Python")
    return "".join(parts), len(parts)


def load_corpus(limit: int = CORPUS_BYTES) -> Corpus:
    """:func:`standard_library_source` as ids into the sorted set of its characters."""
    text, files = standard_library_source(limit)
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    # np.unique sorts, so a character's id depends on the text alone.
    alphabet_codes, ids = np.unique(codes, return_inverse=True)
    ids = ids.astype(np.int64)
    split = int(len(ids) * (1 - VALIDATION_SHARE))
    return Corpus(ids[:split], ids[split:], "".join(map(chr, alphabet_codes)), files)


class CharLanguageModel(nn.Module):
    """Embedding, a one-layer LSTM and a linear layer giving the next character's logits."""

    def __init__(self, vocabulary: int, embedding_size: int = EMBEDDING_SIZE, hidden_size: int = HIDDEN_SIZE) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, embedding_size)
        self.lstm = nn.LSTM(embedding_size, hidden_size)
        self.head = nn.Linear(hidden_size, vocabulary)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids`` (T, B) -> logits (T, B, vocabulary); each sequence starts from zero states."""
        output, _ = self.lstm(self.embedding(ids))
        return self.head(output)


def training_batches(ids: np.ndarray, steps: int, seed: int) -> list[torch.Tensor]:
    """``steps`` batches of (T + 1, B) windows at seeded random offsets: inputs and, one
    character on, targets. Drawn once, so both backends get exactly the same batches."""
    rng = np.random.default_rng(seed)
    window = np.arange(SEQUENCE_LENGTH + 1)
    batches = []
    for _ in range(steps):
        starts = rng.integers(0, len(ids) - SEQUENCE_LENGTH - 1, size=BATCH_SIZE)
        batches.append(torch.from_numpy(ids[starts[None, :] + window[:, None]]))
    return batches


def validation_batches(ids: np.ndarray, characters: int) -> list[torch.Tensor]:
    """The first ``characters`` of the held-out text as consecutive (T + 1, B) windows."""
    count = max(1, min(characters, len(ids) - 1) // SEQUENCE_LENGTH)
    starts = np.arange(count) * SEQUENCE_LENGTH
    windows = ids[starts[None, :] + np.arange(SEQUENCE_LENGTH + 1)[:, None]]
    return [torch.from_numpy(windows[:, first:first + 256]) for first in range(0, count, 256)]


def loss_of(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """The mean cross-entropy (nats) of predicting each character of ``batch[1:]`` from the ones before it."""
    logits = model(batch[:-1])
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[1:].reshape(-1))


def train(model: nn.Module, batches: list[torch.Tensor]) -> tuple[list[float], float]:
    """Adam over the batches in order; returns each step's training loss and the wall time in seconds."""
    optimiser = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    model.train()
    losses = []
    start = time.perf_counter()
    for batch in batches:
        optimiser.zero_grad()
        loss = loss_of(model, batch)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimiser.step()
        losses.append(loss.item())
    return losses, time.perf_counter() - start


def bits_per_character(model: nn.Module, batches: list[torch.Tensor]) -> float:
    """The validation cross-entropy in bits per character, over every predicted character."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            characters = batch[1:].numel()
            total += loss_of(model, batch).item() * characters
            count += characters
    return total / count / math.log(2)


def warm_up(model: nn.Module, batch: torch.Tensor) -> None:
    """One training step's forward and backward on a throwaway copy: a first fastrnn call may
    compile (or load) its kernels, which is not training time."""
    loss_of(copy.deepcopy(model), batch).backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 300, or 5 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="5 steps and 4096 validation characters, to check that everything runs")
    parser.add_argument("--validation-chars", type=int, default=None,
                        help="held-out characters scored (default 65536, or 4096 with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    steps = args.steps or (5 if args.quick else 300)
    validation_chars = args.validation_chars or (4096 if args.quick else 65536)

    corpus = load_corpus()
    torch.manual_seed(args.seed)
    initial = CharLanguageModel(len(corpus.alphabet))
    models = {
        "fastrnn.torch": fastrnn.torch.swap(copy.deepcopy(initial)),
        "torch.nn": copy.deepcopy(initial),
    }
    batches = training_batches(corpus.train, steps, args.seed)
    held_out = validation_batches(corpus.validation, validation_chars)
    scored = sum(batch[1:].numel() for batch in held_out)
    print(f"{len(corpus.train) + len(corpus.validation):,} characters from {corpus.files} standard library files "
          f"({len(corpus.alphabet)} distinct), {scored:,} held-out characters scored; {steps} steps of "
          f"{BATCH_SIZE} x {SEQUENCE_LENGTH} characters, LSTM hidden {HIDDEN_SIZE}, float32")
    print(f"before training: val bits/char {bits_per_character(initial, held_out):.3f}")

    runs = {}
    for name, model in models.items():
        warm_up(model, batches[0])
        losses, seconds = train(model, batches)
        bits = bits_per_character(model, held_out)
        runs[name] = (losses, bits, seconds)
        print(f"{name}: val bits/char {bits:.4f}, final train loss {losses[-1]:.4f} nats, "
              f"train wall time {seconds:.2f} s ({steps / seconds:.2f} steps/s)")

    (fast_losses, fast_bits, _), (torch_losses, torch_bits, _) = runs["fastrnn.torch"], runs["torch.nn"]
    loss_difference = max(abs(a - b) for a, b in zip(fast_losses, torch_losses, strict=True))
    print(f"max |train loss difference| over the {steps} steps: {loss_difference:.3e} nats; "
          f"val bits/char difference: {abs(fast_bits - torch_bits):.3e}")

    print("\n| backend | steps | val bits/char | train seconds | steps/s |")
    print("|---|---|---|---|---|")
    for name, (_, bits, seconds) in runs.items():
        print(f"| {name} | {steps} | {bits:.3f} | {seconds:.2f} | {steps / seconds:.2f} |")


if __name__ == "__main__":
    main()
