"""Exact per-neuron fire counts over saved activations, and the dead neurons they imply."""

from .activity import (
    DEFAULT_THRESHOLDS,
    ROW_COLUMNS,
    ActivityRow,
    ComponentActivity,
    NeuronActivity,
    Threshold,
)
from .dtypes import parse_decimal
from .errors import BadInput, BadThreshold, DeviceUnavailable, NactError, NoVectors, ShapeMismatch
from .scan import ScanResult, count_array, scan
from .sources import ScanPlan

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_THRESHOLDS",
    "ROW_COLUMNS",
    "ActivityRow",
    "BadInput",
    "BadThreshold",
    "ComponentActivity",
    "DeviceUnavailable",
    "NactError",
    "NeuronActivity",
    "NoVectors",
    "ScanPlan",
    "ScanResult",
    "ShapeMismatch",
    "Threshold",
    "count_array",
    "parse_decimal",
    "scan",
]
