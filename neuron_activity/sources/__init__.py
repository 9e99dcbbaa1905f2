"""Reading shards: one reader module per on-disk format (``base`` says what a reader is), the
registry of readers (``registry``), finding shards (``discovery``), reading a tensor's axes
(``layout``), component names (``grouping``) and the plan of a scan (``planning``)."""

from .base import TensorEntry, TensorSlab
from .discovery import Shards, discover
from .layout import Layout, component_layout, layout_of
from .planning import ComponentGroup, ScanPlan, plan_scan, read_entries, why_not_counted
from .registry import INPUT_FORMATS, READERS, SPARSE_FORMATS, detect

__all__ = [
    "INPUT_FORMATS",
    "READERS",
    "SPARSE_FORMATS",
    "ComponentGroup",
    "Layout",
    "ScanPlan",
    "Shards",
    "TensorEntry",
    "TensorSlab",
    "component_layout",
    "detect",
    "discover",
    "layout_of",
    "plan_scan",
    "read_entries",
    "why_not_counted",
]
