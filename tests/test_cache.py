"""numba's on-disk cache: where the compiled kernels go when the package cannot hold them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import fastrnn

# numba keeps its cache next to the sources when it can write there: it checks by making
# a temporary file in the folder. The suite runs as any user (root included, who can
# write anywhere), so the child makes that check fail inside the copied package, as a
# read-only install would, and runs a layer.
READ_ONLY_SCRIPT = """
import sys
import tempfile

package = sys.argv[1]
real_temporary_file = tempfile.TemporaryFile


def temporary_file(*args, dir=None, **kwargs):
    if dir is not None and str(dir).startswith(package):
        raise PermissionError(13, "Read-only file system", dir)
    return real_temporary_file(*args, dir=dir, **kwargs)


tempfile.TemporaryFile = temporary_file
import numpy as np
import fastrnn

gru = fastrnn.GRU(3, 4, seed=0)
output, _ = gru(np.ones((2, 1, 3), dtype=np.float32))
gru.backward(np.ones_like(output))
print(float(output.sum()))
"""


def test_a_read_only_package_caches_its_kernels_in_the_users_cache_folder(tmp_path):
    installed = tmp_path / "site"
    shutil.copytree(Path(fastrnn.__file__).parent, installed / "fastrnn",
                    ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    home = tmp_path / "home"
    home.mkdir()
    environment = {key: value for key, value in os.environ.items() if key not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    environment.update(PYTHONPATH=str(installed), HOME=str(home))
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", READ_ONLY_SCRIPT, str(installed / "fastrnn")], env=environment,
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.split()[-1]) != 0.0
    in_package = list((installed / "fastrnn").rglob("*.nbi"))
    in_user_cache = list((home / ".cache" / "numba").rglob("*.nbi"))
    assert not in_package
    assert in_user_cache, f"no cache index under {home / '.cache' / 'numba'}"
