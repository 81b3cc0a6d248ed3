"""Read scikit-learn's handwritten digits row by row with an LSTM, on fastrnn.torch and on torch.nn.

Each 8x8 image is a sequence of 8 steps of 8 pixels; an LSTM reads it and a linear
head classifies its last hidden state. One model is built, and two copies of its
initial weights are trained the same way, one with torch.nn's LSTM and one after
``fastrnn.torch.swap``; the script prints each one's test accuracy and training time.

    python examples/digits.py            # the full run: both reach 95% or more
    python examples/digits.py --quick    # a few epochs, to check that everything runs

The data set ships with scikit-learn (``pip install scikit-learn``): nothing is downloaded.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import fastrnn.torch


class DigitReader(nn.Module):
    """An LSTM over the image's rows and a linear head on its final hidden state."""

    def __init__(self, hidden_size: int = 64) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _, (h_n, _) = self.lstm(images)  # images: (B, 8 rows, 8 pixels)
        return self.head(h_n[-1])


def load(seed: int) -> tuple[torch.Tensor, ...]:
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)  # pixels are 0..16
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.25, random_state=seed, stratify=digits.target
    )
    return (torch.from_numpy(x_train), torch.from_numpy(y_train).long(),
            torch.from_numpy(x_test), torch.from_numpy(y_test).long())


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int) -> float:
    """Adam on shuffled mini-batches; returns the wall time in seconds. The shuffling has
    its own generator, so both backends see the same batches in the same order."""
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    order = torch.Generator().manual_seed(seed)
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in torch.randperm(len(images), generator=order).split(32):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimiser.step()
    return time.perf_counter() - start


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(images).argmax(dim=1) == labels).float().mean().item()


def warm_up(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
    """One training step on a throwaway copy: a first fastrnn call may compile (or load)
    its kernels, which is not training time."""
    scratch = copy.deepcopy(model)
    nn.functional.cross_entropy(scratch(images[:32]), labels[:32]).backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="train for 2 epochs only, to check that it runs")
    parser.add_argument("--epochs", type=int, default=None, help="epochs to train (default 25, or 2 with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    epochs = args.epochs or (2 if args.quick else 25)

    x_train, y_train, x_test, y_test = load(args.seed)
    torch.manual_seed(args.seed)
    initial = DigitReader()
    models = {
        "fastrnn.torch": fastrnn.torch.swap(copy.deepcopy(initial)),
        "torch.nn": copy.deepcopy(initial),
    }
    print(f"{len(x_train)} training and {len(x_test)} test images, {epochs} epochs")
    for name, model in models.items():
        warm_up(model, x_train, y_train)
        seconds = train(model, x_train, y_train, epochs, args.seed)
        print(f"{name}: test accuracy {accuracy(model, x_test, y_test):.1%}, training wall time {seconds:.2f} s")


if __name__ == "__main__":
    main()
