# The C extension's interface (see _kernels.c), for type checkers.
from typing_extensions import Buffer

SOURCE_SHA256: str

def count(
    data: Buffer,
    rows: int,
    width: int,
    itemsize: int,
    ranges: list[tuple[int, int]],
    nan_mask: int,
    nan_above: int,
    fire_counts: Buffer,
    nan_counts: Buffer,
    last_fired: Buffer | None,
    first_vector: int,
    kind: str = ...,
    value_counts: Buffer | None = ...,
    value_means: Buffer | None = ...,
    value_m2: Buffer | None = ...,
    /,
) -> None: ...
def count_sparse(
    locations: Buffer,
    loc_code: str,
    entries: int,
    values: Buffer,
    itemsize: int,
    ranges: list[tuple[int, int]],
    nan_mask: int,
    nan_above: int,
    low: int,
    span: int,
    batches: int,
    positions: int,
    fire_counts: Buffer,
    nan_counts: Buffer,
    /,
) -> int: ...
