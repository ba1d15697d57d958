"""Lazy reading of a Hugging Face checkpoint directory (config.json + *.safetensors).

Each rank opens the files and reads only the rows or columns of the tensors it holds: the
``safetensors`` package's ``get_slice`` for the dtypes NumPy has, and a read-only memory map of the
same file for bfloat16 (which NumPy lacks, so ``safetensors``' NumPy reader refuses it). Either
way, no byte outside the requested slice is copied.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Optional

import ml_dtypes
import numpy as np

from .config import ModelConfig

# safetensors dtype tag -> NumPy dtype.
_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
}

Slice = Optional[tuple[int, int]]


class Checkpoint:
    """A checkpoint directory: its ModelConfig and lazy, sliced access to its tensors."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)
        config_path = os.path.join(self.directory, "config.json")
        if not os.path.isfile(config_path):
            raise FileNotFoundError(
                f"{self.directory!r} is not a checkpoint directory: no config.json"
            )
        with open(config_path, encoding="utf-8") as f:
            self.hf_config = json.load(f)
        self.config = ModelConfig.from_hf_config(self.hf_config)
        self._index = self._build_index()
        self._mmaps: dict[str, np.memmap] = {}
        self._handles: dict[str, Any] = {}

    def _build_index(self) -> dict[str, tuple[str, str, tuple[int, ...], int, int]]:
        """name -> (file, dtype tag, shape, begin, end) from every *.safetensors header."""
        files = sorted(f for f in os.listdir(self.directory) if f.endswith(".safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors file in {self.directory!r}")
        index = {}
        for name in files:
            path = os.path.join(self.directory, name)
            with open(path, "rb") as f:
                (header_len,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(header_len))
            base = 8 + header_len
            for key, info in header.items():
                if key == "__metadata__":
                    continue
                begin, end = info["data_offsets"]
                index[key] = (path, info["dtype"], tuple(info["shape"]), base + begin, base + end)
        return index

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def shape(self, name: str) -> tuple[int, ...]:
        """The full shape of tensor ``name``."""
        return self._entry(name)[2]

    def _entry(self, name: str):
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"tensor {name!r} not found in checkpoint {self.directory!r}") from None

    def read(self, name: str, rows: Slice = None, cols: Slice = None) -> np.ndarray:
        """Rows [r0, r1) and columns [c0, c1) of tensor ``name`` (whole axes when None).

        The result is a fresh C-contiguous array in the checkpoint's dtype.
        """
        path, tag, shape, begin, end = self._entry(name)
        if tag not in _DTYPES:
            raise TypeError(f"tensor {name!r} has unsupported dtype {tag}")
        if cols is not None and len(shape) != 2:
            raise ValueError(f"column slice of {name!r}, which has shape {shape}")
        if rows is not None and len(shape) == 0:
            raise ValueError(f"row slice of scalar tensor {name!r}")
        for axis, bounds in ((0, rows), (1, cols)):
            if bounds is not None and not 0 <= bounds[0] <= bounds[1] <= shape[axis]:
                raise ValueError(
                    f"slice {bounds} out of range for axis {axis} of {name!r} with shape {shape}"
                )
        index = tuple(
            slice(*b) if b is not None else slice(None) for b in (rows, cols)[: len(shape)]
        )
        if tag == "BF16":
            mm = self._mmaps.get(path)
            if mm is None:
                mm = self._mmaps[path] = np.memmap(path, dtype=np.uint8, mode="r")
            full = mm[begin:end].view(_DTYPES[tag]).reshape(shape)
            return np.ascontiguousarray(full[index])
        handle = self._handles.get(path)
        if handle is None:
            from safetensors import safe_open  # the reader of every dtype NumPy has

            handle = self._handles[path] = safe_open(path, framework="np")
        view = handle.get_slice(name)
        out = view[index] if index else view[:]
        return np.ascontiguousarray(out, dtype=_DTYPES[tag])
