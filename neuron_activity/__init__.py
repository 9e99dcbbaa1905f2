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
from .arrays import count_array
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
    NotTracked,
    NoVectors,
    ShapeMismatch,
    ShardChanged,
    StateLocked,
    StateMismatch,
)
from .inspection import Inspection, inspect
from .options import CountOptions, Part, ReportOptions, ScanRequest
from .pipeline import ScanOutcome, run_scan
from .report import Report, make_report
from .scan import ScanResult, scan  # after .pipeline: the name `scan` is the function, not the submodule
from .sources import INPUT_FORMATS, ScanPlan

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
