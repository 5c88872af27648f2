"""Model files of the trace detectors: pandas and wafer-model state as arrays plus JSON, no pickle.

:class:`TracePersistMixin` gives :class:`~greyanom.ShapeSignatureDetector` and
:class:`~greyanom.MultiwayPCADetector` ``save`` and the hook of the shared ``load`` on top of
:mod:`greyanom._persist` (one safetensors file, an integrity hash, nothing executed on load).
Their learned state is frames, series and indexes keyed by wafers, groups and lots, and a
frozen :class:`~greyanom.traces._wafer_model.WaferModel`. The codec here writes every numeric column
as an array and every label (index values, string columns, lot names) as JSON, with its dtype,
so a loaded detector scores exactly as the saved one.
"""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np
import pandas as pd

__all__ = ["TracePersistMixin"]


def _json_value(v):
    """A JSON value of a label (numpy scalars as Python ones)."""
    if isinstance(v, np.generic):
        return v.item()
    if v is None or isinstance(v, (str, bool, numbers.Integral, numbers.Real)):
        return v
    raise ValueError(f"cannot save the label {v!r} of type {type(v).__name__}: labels must be str, int, float or bool.")


def _dtype_name(dtype):
    if pd.api.types.is_string_dtype(dtype) and not pd.api.types.is_object_dtype(dtype):
        return "str"
    return str(dtype)


def _restore_dtype(values, dtype):
    if dtype in ("str", "object"):
        return pd.array(values, dtype="str") if dtype == "str" else np.array(values, dtype=object)
    return np.asarray(values, dtype=dtype)


def _pack_labels(values):
    values = pd.Index(values) if not isinstance(values, pd.Index) else values
    if isinstance(values.dtype, pd.CategoricalDtype):  # labels are saved as their values
        values = values.astype(values.dtype.categories.dtype)
    return {"dtype": _dtype_name(values.dtype), "values": [_json_value(v) for v in values.tolist()]}


def _unpack_labels(doc):
    return _restore_dtype(doc["values"], doc["dtype"])


def _pack_index(index):
    return {
        "names": [_json_value(n) for n in index.names],
        "levels": [_pack_labels(index.get_level_values(i)) for i in range(index.nlevels)],
    }


def _unpack_index(doc):
    levels = [_unpack_labels(level) for level in doc["levels"]]
    if len(levels) == 1:
        return pd.Index(levels[0], name=doc["names"][0])
    return pd.MultiIndex.from_arrays(levels, names=doc["names"])


def _pack_array(name, values, arrays):
    values = np.asarray(values)
    if values.dtype == bool:
        arrays[name] = values.astype(np.uint8)
        return {"array": name, "dtype": "bool"}
    if values.dtype.kind not in "iuf":
        raise ValueError(f"cannot save {name!r}: expected a numeric array, got dtype {values.dtype}.")
    arrays[name] = values
    return {"array": name, "dtype": str(values.dtype)}


def _unpack_array(doc, arrays):
    return np.asarray(arrays[doc["array"]]).astype(doc["dtype"], copy=False)


def _is_numeric(values):
    dtype = getattr(values, "dtype", np.asarray(values).dtype)
    return pd.api.types.is_bool_dtype(dtype) or (
        pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_object_dtype(dtype)
    )


def _pack_values(name, values, arrays):
    """A column or series: an array when numeric, JSON labels otherwise."""
    if _is_numeric(values):
        return _pack_array(name, np.asarray(values), arrays)
    return _pack_labels(pd.Index(values))


def _unpack_values(doc, arrays):
    return _unpack_array(doc, arrays) if "array" in doc else _unpack_labels(doc)


def pack(name, value, arrays):
    """The JSON description of one learned attribute; its arrays go into ``arrays``."""
    from greyanom.traces._wafer_model import WaferModel

    if value is None or isinstance(value, (str, bool, numbers.Integral, numbers.Real, np.generic)):
        return {"kind": "scalar", "value": _json_value(value)}
    if isinstance(value, np.ndarray):
        return {"kind": "ndarray", **_pack_values(name, value, arrays)}
    if isinstance(value, pd.DataFrame):
        return {
            "kind": "frame",
            "index": _pack_index(value.index),
            "columns": _pack_index(value.columns),
            "values": [_pack_values(f"{name}/{j}", value.iloc[:, j], arrays) for j in range(value.shape[1])],
        }
    if isinstance(value, pd.Series):
        return {
            "kind": "series",
            "name": _json_value(value.name),
            "index": _pack_index(value.index),
            "values": _pack_values(name, value, arrays),
        }
    if isinstance(value, pd.Index):
        return {"kind": "index", **_pack_index(value)}
    if isinstance(value, WaferModel):
        return {
            "kind": "wafer_model",
            "fields": {f.name: pack(f"{name}/{f.name}", getattr(value, f.name), arrays)
                       for f in dataclasses.fields(value)},
        }
    raise ValueError(f"cannot save the attribute {name!r} of type {type(value).__name__}.")


def unpack(doc, arrays):
    """The value of an attribute described by :func:`pack`."""
    from greyanom.traces._wafer_model import WaferModel

    kind = doc["kind"]
    if kind == "scalar":
        return doc["value"]
    if kind == "ndarray":
        return np.asarray(_unpack_values(doc, arrays))
    if kind == "frame":
        index = _unpack_index(doc["index"])
        data = {j: _unpack_values(v, arrays) for j, v in enumerate(doc["values"])}
        frame = pd.DataFrame(data, index=index)
        frame.columns = _unpack_index(doc["columns"])
        return frame
    if kind == "series":
        return pd.Series(_unpack_values(doc["values"], arrays), index=_unpack_index(doc["index"]), name=doc["name"])
    if kind == "index":
        return _unpack_index(doc)
    if kind == "wafer_model":
        return WaferModel(**{k: unpack(v, arrays) for k, v in doc["fields"].items()})
    raise ValueError(f"unknown kind {kind!r} of a saved attribute: the file is damaged or from another greyanom.")


class TracePersistMixin:
    """The ``save`` and ``load`` hooks for the trace detectors (arrays in safetensors, the rest in JSON).

    A subclass lists its learned attributes in ``_saved_attrs``; ``load`` (one for every
    detector, :meth:`greyanom.base.BaseDetector.load`) restores exactly those, so every method
    of the loaded detector gives what the saved one gave. The trace detectors run on the CPU:
    ``load(path, device=None)`` takes no other device.
    """

    #: learned attributes written by ``save`` (all of them must exist once fitted)
    _saved_attrs: tuple = ()

    def _save_payload(self):
        """``(arrays, config)`` as :meth:`save` writes them (also hashed by ``_persist.model_hash``)."""
        from sklearn.utils.validation import check_is_fitted

        from greyanom._persist import params_to_json

        check_is_fitted(self, self._saved_attrs[0])
        params = params_to_json(self)
        arrays = {}
        state = {name: pack(name, getattr(self, name), arrays) for name in self._saved_attrs}
        return arrays, {"class": type(self).__name__, "params": params, "state": state}

    def _set_saved_state(self, state, arrays, device=None):
        """Restore ``_saved_attrs`` from a model file (the hook of :meth:`BaseDetector.load <greyanom.base.BaseDetector.load>`)."""
        for name in self._saved_attrs:
            setattr(self, name, unpack(state[name], arrays))
