"""The Open Inference Protocol's tensor datatypes and the numpy types they travel as: one table for the client SDK
and the server (which depends on this distribution, never the other way round)."""

from __future__ import annotations

from typing import Any

import numpy as np

DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
"""Every OIP datatype and its numpy type (BYTES: Python ``bytes`` objects)."""
DATATYPE_OF: dict[np.dtype[Any], str] = {dtype: name for name, dtype in DATATYPES.items()}
"""The OIP datatype of a numpy type (the inverse of ``DATATYPES``)."""
