"""The examples run end to end in their short form, and say what they promise to."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ("fastrnn.torch", "torch.nn")


def test_char_lm_quick_trains_both_backends_to_the_same_losses():
    pytest.importorskip("torch")
    result = subprocess.run([sys.executable, str(REPO / "examples" / "char_lm.py"), "--quick"], capture_output=True,
                            text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for backend in BACKENDS:
        assert any(line.startswith(f"{backend}: val bits/char ") and "train wall time" in line for line in lines), (
            result.stdout
        )
        assert any(line.startswith(f"| {backend} | 5 | ") for line in lines), result.stdout
    differences = re.search(r"max \|train loss difference\| over the 5 steps: (\S+) nats; "
                            r"val bits/char difference: (\S+)$", result.stdout, re.MULTILINE)
    assert differences is not None, result.stdout
    # float32, the same weights and batches: the two backends differ by rounding only.
    train_loss_difference, bits_difference = (float(value) for value in differences.groups())
    assert train_loss_difference < 1e-4 and bits_difference < 1e-4, result.stdout
