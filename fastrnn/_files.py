"""``fastrnn.save`` and ``fastrnn.load``: a layer or cell in one ``.npz`` file, nothing pickled.

The file is a zip of ``.npy`` members: one per parameter, under torch's name, and a JSON
header stored as a uint8 array (``HEADER_MEMBER``) that says what to build: the kind, its
constructor arguments, the dtype, the format version, the fastrnn version that wrote it
and a SHA-256 of each parameter's bytes.

Loading reads with ``allow_pickle=False`` and trusts nothing: the header is parsed as JSON
and checked, the module is rebuilt from the header's arguments through its constructor,
and every member's name, shape and dtype (read from its ``.npy`` header before its data)
and checksum must match that module's ``state_dict``. Nothing from the file is executed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import secrets
import zipfile
import zlib
from typing import IO, Any

import numpy as np

from . import _rebuild

FORMAT_NAME = "fastrnn"
FORMAT_VERSION = 1
HEADER_MEMBER = "__fastrnn_header__"
_HEADER_KEYS = {"format", "format_version", "fastrnn_version", "kind", "args", "dtype", "sha256"}
_ZIP_MAGIC = b"PK\x03\x04"


def _fastrnn_version() -> str:
    import fastrnn

    version = getattr(fastrnn, "__version__", None)
    return version if version is not None else importlib.metadata.version("fastrnn")


def _checksum(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def _write_array(file: IO[bytes], array: np.ndarray) -> None:
    np.lib.format.write_array(file, array, allow_pickle=False)


def _write_npz(file: IO[bytes], arrays: dict[str, np.ndarray]) -> None:
    """What ``np.savez`` writes, member by member, refusing to pickle anything."""
    with zipfile.ZipFile(file, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", mode="w", force_zip64=True) as member:
                _write_array(member, array)


def save(module: Any, path: str | os.PathLike[str]) -> None:
    """Write a layer or cell's parameters and constructor arguments to the ``.npz`` file ``path``.

    Covers ``RNN``, ``LSTM``, ``GRU``, ``RNNCell``, ``LSTMCell``, ``GRUCell`` and their
    ``fastrnn.reference`` twins. The file is written exactly at ``path`` (no suffix is added).
    Gradients, the training flag and the dropout generator are not saved: pickle the module
    to keep those.

    The data goes to a temporary file in the same folder that is renamed onto ``path`` once
    complete, so an interrupted save leaves ``path`` as it was and no partial file behind.
    """
    kind = _rebuild.kind_of(module)
    parameters = module.state_dict()
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "fastrnn_version": _fastrnn_version(),
        "kind": kind,
        "args": _rebuild.constructor_args(module),
        "dtype": _rebuild.dtype_name(module),
        "sha256": {name: _checksum(array) for name, array in parameters.items()},
    }
    header_bytes = np.frombuffer(json.dumps(header, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    arrays = {HEADER_MEMBER: header_bytes, **parameters}

    target = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot save to {os.fspath(path)!r}: the folder {folder!r} does not exist")
    if os.path.isdir(target):
        raise IsADirectoryError(f"cannot save to {os.fspath(path)!r}: it is a folder; give a file name")
    # A name of our own in the target's folder, so that the rename stays on one file system;
    # os.open with mode 0o666 gives it the permissions the umask gives any new file.
    temporary = os.path.join(folder, f".{os.path.basename(target)}.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            _write_npz(file, arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        # KeyboardInterrupt included: whatever stopped the save, take the partial file away.
        try:
            os.remove(temporary)
        except FileNotFoundError:
            pass
        raise


def _fail(path: str, problem: str) -> ValueError:
    return ValueError(f"cannot load {path!r}: {problem}")


# What a damaged member raises as it is read: zipfile checks each member's CRC-32 when it
# reaches the member's end, and a short member ends before the data its .npy header announces.
_DAMAGE_ERRORS = (zipfile.BadZipFile, EOFError, zlib.error)


def _damaged(path: str, member: str, error: Exception) -> ValueError:
    return _fail(path, f"member {member!r} is truncated or corrupted ({type(error).__name__}: {error})")


def _member_layout(archive: zipfile.ZipFile, member: str, path: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype a member's ``.npy`` header declares, read before any of its data."""
    try:
        with archive.open(member) as file:
            version = np.lib.format.read_magic(file)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(file)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(file)
            else:
                raise ValueError(f"npy format version {version}, where fastrnn writes 1.0 or 2.0")
    except _DAMAGE_ERRORS as error:
        raise _damaged(path, member, error) from error
    except ValueError as error:
        raise _fail(path, f"member {member!r} is not an array fastrnn reads ({error})") from error
    if dtype.hasobject:
        raise _fail(path, f"member {member!r} holds Python objects (pickled data), which fastrnn never loads")
    return shape, dtype


def _read_member(npz: Any, name: str, path: str) -> np.ndarray:
    try:
        return npz[name]
    except (*_DAMAGE_ERRORS, ValueError) as error:
        raise _damaged(path, f"{name}.npy", error) from error


def _read_header(npz: Any, members: dict[str, str], path: str) -> dict[str, Any]:
    shape, dtype = _member_layout(npz.zip, members[HEADER_MEMBER], path)
    if dtype != np.uint8 or len(shape) != 1:
        raise _fail(path, f"its header must be a 1-D uint8 array, got {dtype} of shape {shape}")
    raw = _read_member(npz, HEADER_MEMBER, path)
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _fail(path, f"its header is not valid JSON ({error})") from error
    if not isinstance(header, dict):
        raise _fail(path, f"its header must be a JSON object, got {type(header).__name__}")
    if header.get("format") != FORMAT_NAME:
        raise _fail(path, f"its header names format {header.get('format')!r}, not {FORMAT_NAME!r}")
    if header.get("format_version") != FORMAT_VERSION:
        raise _fail(
            path,
            f"it is in fastrnn file format version {header.get('format_version')!r} (written by fastrnn "
            f"{header.get('fastrnn_version')!r}); this fastrnn ({_fastrnn_version()}) reads version {FORMAT_VERSION}",
        )
    if header.keys() != _HEADER_KEYS:
        missing, extra = sorted(_HEADER_KEYS - header.keys()), sorted(header.keys() - _HEADER_KEYS)
        raise _fail(path, f"its header has missing keys {missing} and unexpected keys {extra}")
    if header["kind"] not in _rebuild.KINDS:
        raise _fail(path, f"its header names kind {header['kind']!r}; fastrnn has {list(_rebuild.KINDS)}")
    if header["dtype"] not in ("float32", "float64"):
        raise _fail(path, f"its header names dtype {header['dtype']!r}; expected 'float32' or 'float64'")
    args, expected_args = header["args"], _rebuild.CONSTRUCTOR_ARGS[header["kind"].removeprefix("reference.")]
    if not isinstance(args, dict) or set(args) != set(expected_args):
        raise _fail(path, f"its header's constructor arguments for {header['kind']} must be exactly "
                          f"{list(expected_args)}, got {args!r}")
    if not isinstance(header["sha256"], dict):
        raise _fail(path, "its header's sha256 must map parameter names to checksums")
    return header


def _check_size_fits(header: dict[str, Any], file_size: int, path: str) -> None:
    """Refuse, before building anything, arguments whose parameters could not fit in the file.

    weight_ih_l0 alone holds at least hidden_size * input_size values, and every further
    layer at least hidden_size; a header edited to huge sizes would otherwise have the
    constructor allocate (and randomly initialise) all of them first.
    """
    args = header["args"]
    sizes = [args.get(name, 1) for name in ("input_size", "hidden_size", "num_layers")]
    if not all(isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in sizes):
        return  # the constructor names the bad argument
    input_size, hidden_size, num_layers = sizes
    least_bytes = (hidden_size * input_size + (num_layers - 1) * hidden_size) * np.dtype(header["dtype"]).itemsize
    if least_bytes > file_size:
        raise _fail(path, f"its header's constructor arguments {args} need at least {least_bytes} bytes of "
                          f"parameters, more than the whole file ({file_size} bytes)")


def load(path: str | os.PathLike[str]) -> Any:
    """The layer or cell ``fastrnn.save`` wrote to ``path``, rebuilt with its parameters.

    The module is new: in training mode, with zero gradients and a fresh generator.
    Raises ``FileNotFoundError`` for a missing file, and ``ValueError`` naming the problem
    for anything that is not a complete, unmodified fastrnn file: another kind of file,
    another program's ``.npz``, a truncated or corrupted file, an unknown format version,
    a header that does not parse, or arrays whose names, shapes, dtypes or contents differ
    from what the header describes. Pickled data is never loaded.
    """
    shown = os.fspath(path)
    if not os.path.exists(shown):
        raise FileNotFoundError(f"cannot load {shown!r}: no such file")
    if os.path.isdir(shown):
        raise IsADirectoryError(f"cannot load {shown!r}: it is a folder, not a file")
    with open(shown, "rb") as file:
        if file.read(len(_ZIP_MAGIC)) != _ZIP_MAGIC:
            raise _fail(shown, "it is not an .npz file (no zip signature at its start)")
    try:
        npz = np.load(shown, allow_pickle=False)
    except zipfile.BadZipFile as error:
        # The zip's directory is at its end, so a truncated file fails here.
        raise _fail(shown, f"the file is truncated or corrupted ({error})") from error
    with npz:
        return _load_npz(npz, shown)


def _load_npz(npz: Any, path: str) -> Any:
    names = npz.zip.namelist()
    # Member names as np.load gives them (without .npy), to the names inside the zip.
    members = {name.removesuffix(".npy"): name for name in names}
    if len(members) != len(names):
        raise _fail(path, "it holds several members of the same name")
    if HEADER_MEMBER not in members:
        raise _fail(path, f"it is an .npz file but not one fastrnn wrote (no {HEADER_MEMBER!r} member; "
                          f"members: {sorted(members)[:10]})")
    header = _read_header(npz, members, path)
    _check_size_fits(header, os.path.getsize(path), path)
    try:
        module = _rebuild.build_kind(header["kind"], header["args"], header["dtype"])
    except (TypeError, ValueError, MemoryError) as error:
        raise _fail(path, f"its header's constructor arguments do not build a {header['kind']}: {error}") from error
    expected = module.state_dict()
    stored = members.keys() - {HEADER_MEMBER}
    if stored != expected.keys() or header["sha256"].keys() != expected.keys():
        missing = sorted(expected.keys() - stored)
        extra = sorted(stored - expected.keys())
        unlisted = sorted(expected.keys() ^ header["sha256"].keys())
        raise _fail(path, f"its parameters do not match a {header['kind']} with arguments {header['args']}: "
                          f"missing {missing}, unexpected {extra}, checksums missing or extra for {unlisted}")
    for name, parameter in expected.items():
        shape, dtype = _member_layout(npz.zip, members[name], path)
        if shape != parameter.shape or dtype != parameter.dtype:
            raise _fail(path, f"parameter {name!r} is {dtype} of shape {shape}, but a {header['kind']} with "
                              f"arguments {header['args']} and dtype {header['dtype']} has "
                              f"{parameter.dtype} of shape {parameter.shape}")
        array = _read_member(npz, name, path)
        if _checksum(array) != header["sha256"][name]:
            raise _fail(path, f"parameter {name!r} does not match its checksum in the header: "
                              "the file was modified or damaged")
        np.copyto(parameter, array)
    return module
