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
from .inspection import Inspection, inspect
from .scan import ScanResult, count_array, scan
from .sources import INPUT_FORMATS, ScanPlan

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_THRESHOLDS",
    "ROW_COLUMNS",
    "ActivityRow",
    "BadInput",
    "BadThreshold",
    "ComponentActivity",
    "DeviceUnavailable",
    "INPUT_FORMATS",
    "Inspection",
    "NactError",
    "NeuronActivity",
    "NoVectors",
    "ScanPlan",
    "ScanResult",
    "ShapeMismatch",
    "Threshold",
    "count_array",
    "inspect",
    "parse_decimal",
    "scan",
]
