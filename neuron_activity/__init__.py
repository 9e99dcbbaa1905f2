"""Exact per-neuron fire counts over saved activations, and the dead neurons they imply.

>>> import numpy as np
>>> from neuron_activity import Threshold, count_array
>>> activity = count_array(np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
>>> [(row.dead, row.alive) for row in activity.rows([Threshold.parse("0")])]
[(1, 2)]
"""

from ._version import __version__
from .activity import (
    DEFAULT_THRESHOLDS,
    ROW_COLUMNS,
    ActivityRow,
    ComponentActivity,
    NeuronActivity,
    Threshold,
)
from .decimals import parse_decimal
from .errors import (
    BadInput,
    BadOption,
    BadOutput,
    BadThreshold,
    Conflict,
    CountsMismatch,
    DeviceUnavailable,
    KeyNotFound,
    MixedFormats,
    NactError,
    NoVectors,
    NotTracked,
    ShapeMismatch,
    ShardChanged,
    StateLocked,
    StateMismatch,
)
from .options import CountOptions, Part, ReportOptions, ScanRequest
from .arrays import count_array
from .scan import ScanResult, scan  # eager: the function, not the submodule, is `scan`

# Imported when first used (PEP 562): a command that needs none of them does not pay for them.
_LAZY = {
    "Inspection": "inspection", "inspect": "inspection",
    "ScanOutcome": "pipeline", "run_scan": "pipeline",
    "Report": "report", "make_report": "report",
    "INPUT_FORMATS": "sources", "ScanPlan": "sources",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'neuron_activity' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_THRESHOLDS",
    "INPUT_FORMATS",
    "ROW_COLUMNS",
    "ActivityRow",
    "BadInput",
    "BadOption",
    "BadOutput",
    "BadThreshold",
    "ComponentActivity",
    "Conflict",
    "CountOptions",
    "CountsMismatch",
    "DeviceUnavailable",
    "Inspection",
    "KeyNotFound",
    "MixedFormats",
    "NactError",
    "NeuronActivity",
    "NoVectors",
    "NotTracked",
    "Part",
    "Report",
    "ReportOptions",
    "ScanOutcome",
    "ScanPlan",
    "ScanRequest",
    "ScanResult",
    "ShapeMismatch",
    "ShardChanged",
    "StateLocked",
    "StateMismatch",
    "Threshold",
    "__version__",
    "count_array",
    "inspect",
    "make_report",
    "parse_decimal",
    "run_scan",
    "scan",
]
