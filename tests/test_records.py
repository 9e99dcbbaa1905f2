"""``records.Record`` behaves as ``dataclasses.dataclass`` does, for what nact's records use:
each case is run on a record and on the same class as a dataclass, and the two must agree."""

from __future__ import annotations

import dataclasses
import math
import pickle
from typing import Any, ClassVar

import pytest

from neuron_activity import records
from neuron_activity.records import FrozenRecordError, Record


class Point(Record):
    x: int
    y: int = 0
    tags: list = records.field(default_factory=list)
    note: str = records.field(default="", repr=False)
    kind: ClassVar[str] = "point"

    def norm(self) -> int:
        return self.x + self.y


@dataclasses.dataclass(frozen=True)
class PointDC:
    x: int
    y: int = 0
    tags: list = dataclasses.field(default_factory=list)
    note: str = dataclasses.field(default="", repr=False)
    kind: ClassVar[str] = "point"


class Loose(Record, frozen=False):
    items: list = records.field(default_factory=list)
    count: int = 0


@dataclasses.dataclass
class LooseDC:
    items: list = dataclasses.field(default_factory=list)
    count: int = 0


class Checked(Record):
    value: Any

    def __post_init__(self) -> None:
        if self.value < 0:
            raise ValueError("negative")
        object.__setattr__(self, "value", float(self.value))


def outcome(make: Any) -> tuple[str, str]:
    """What a call gives: its repr, or its exception's type."""
    try:
        return "ok", repr(make())
    except Exception as e:  # noqa: BLE001 - the type is what is compared
        return "error", type(e).__name__


CALLS = [
    ((3,), {}),
    ((3, 4), {}),
    ((), {"x": 1, "y": 2}),
    ((1,), {"tags": ["a"], "note": "hidden"}),
    ((), {}),  # missing x
    ((1, 2, [], "", 5), {}),  # too many
    ((1,), {"x": 2}),  # twice
    ((1,), {"z": 2}),  # unknown
    ((1,), {"kind": "no"}),  # a ClassVar is not a field
]


@pytest.mark.parametrize(("args", "kwargs"), CALLS)
def test_construction_and_repr_agree_with_dataclasses(args: tuple, kwargs: dict) -> None:
    mine = outcome(lambda: Point(*args, **kwargs))
    theirs = outcome(lambda: PointDC(*args, **kwargs))
    assert mine == (theirs[0], theirs[1].replace("PointDC", "Point"))


def test_fields_defaults_and_class_attributes() -> None:
    assert Point.__record_fields__ == tuple(f.name for f in dataclasses.fields(PointDC))
    assert (Point.y, Point.note, Point.kind) == (PointDC.y, PointDC.note, PointDC.kind)
    assert not hasattr(Point, "tags") and not hasattr(PointDC, "tags")
    a, b = Point(1), Point(1)
    assert a.tags is not b.tags  # a fresh list per record
    assert Point(1).norm() == 1


def test_equality_and_hash_agree_with_dataclasses() -> None:
    nan = math.nan  # one object: equal to itself as a tuple's item; float("nan") twice: two objects, unequal
    pairs = [((1, 2), (1, 2)), ((1, 2), (1, 3)), ((nan,), (nan,)), ((float("nan"),), (float("nan"),))]
    for left, right in pairs:
        assert (Point(*left) == Point(*right)) == (PointDC(*left) == PointDC(*right))
    assert [Point(*left) == Point(*right) for left, right in pairs] == [True, False, True, False]
    assert Point(1) != PointDC(1) and Point(1) != (1, 0, [], "")
    assert hash(Point(1, 2, tags=None)) == hash(PointDC(1, 2, tags=None)) == hash((1, 2, None, ""))  # type: ignore[arg-type]
    for unhashable in (Point(1), PointDC(1), Loose(), LooseDC()):  # a list field; a record that is not frozen
        with pytest.raises(TypeError):
            hash(unhashable)


def test_frozen_and_not() -> None:
    acts = [lambda p: setattr(p, "x", 2), lambda p: delattr(p, "x"), lambda p: setattr(p, "new", 1)]
    for act in acts:
        with pytest.raises(FrozenRecordError):
            act(Point(1))
        with pytest.raises(dataclasses.FrozenInstanceError):
            act(PointDC(1))
    assert issubclass(FrozenRecordError, AttributeError) and issubclass(dataclasses.FrozenInstanceError, AttributeError)
    loose, loose_dc = Loose(), LooseDC()
    for record in (loose, loose_dc):
        record.count = 3
        record.items.append(1)
    assert loose == Loose([1], 3) and repr(loose) == repr(loose_dc).replace("LooseDC", "Loose")


def test_post_init_runs_and_may_set_fields() -> None:
    assert Checked(2).value == 2.0 and isinstance(Checked(2).value, float)
    with pytest.raises(ValueError, match="negative"):
        Checked(-1)
    assert records.replace(Checked(2), value=5).value == 5.0  # replace runs __post_init__ again
    with pytest.raises(ValueError):
        records.replace(Checked(2), value=-5)


def test_replace_and_asdict_agree_with_dataclasses() -> None:
    mine, theirs = Point(1, 2, ["t"], "n"), PointDC(1, 2, ["t"], "n")
    assert repr(records.replace(mine, y=7)) == repr(dataclasses.replace(theirs, y=7)).replace("PointDC", "Point")
    assert records.asdict(mine) == dataclasses.asdict(theirs)
    with pytest.raises(TypeError):
        records.replace(mine, z=1)
    with pytest.raises(TypeError):
        dataclasses.replace(theirs, z=1)  # type: ignore[call-arg]


def test_signature_and_help_show_the_fields_as_a_dataclass_does() -> None:
    import inspect
    import pydoc

    for mine, theirs in ((Point, PointDC), (Loose, LooseDC)):
        assert str(inspect.signature(mine)) == str(inspect.signature(theirs))
    assert "Point(x: 'int', y: 'int' = 0, tags: 'list' = <factory>, note: 'str' = '')" in pydoc.render_doc(Point)


def test_a_field_without_a_default_cannot_follow_one_with_a_default() -> None:
    with pytest.raises(TypeError, match="'b' without a default follows 'a'"):

        class Bad(Record):
            a: int = 1
            b: int

    with pytest.raises(TypeError):

        @dataclasses.dataclass
        class BadDC:
            a: int = 1
            b: int


def test_records_pickle_and_copy() -> None:
    import copy

    point = Point(1, 2, ["a"], "n")
    for clone in (pickle.loads(pickle.dumps(point)), copy.copy(point), copy.deepcopy(point)):
        assert clone == point and clone is not point and clone.note == "n"


def test_no_module_of_the_package_uses_dataclasses() -> None:
    """Every record class is a Record: a dataclass would bring back its compile at import."""
    from pathlib import Path

    import neuron_activity

    root = Path(neuron_activity.__file__).parent
    users = [p.relative_to(root).as_posix() for p in root.rglob("*.py")
             if p.name != "records.py" and "dataclass" in p.read_text()]
    assert users == []
