"""Records: classes declared by their annotated fields, as with ``dataclasses.dataclass``,
without its cost at import.

A dataclass on CPython 3.11 compiles each class's ``__init__``, ``__repr__``, ``__eq__`` and, frozen,
``__setattr__``, ``__delattr__`` and ``__hash__`` from source text when its module is imported:
about 1 ms a class, a tenth of every ``nact`` run for the records a scan makes. A ``Record``
subclass gets the same behaviour from methods written once, here:

- ``__init__`` takes the fields in order, by position or by name, with their defaults (or
  ``field(default_factory=...)``), then calls ``__post_init__`` if the class has one;
- ``__repr__`` shows the fields (``field(repr=False)`` leaves one out), ``__eq__`` compares two
  records of one class field by field;
- frozen (the default; ``class X(Record, frozen=False)`` is not): assigning or deleting a field
  after ``__init__`` raises ``FrozenRecordError`` (``__post_init__`` sets fields with
  ``object.__setattr__``, as with a frozen dataclass), and records hash by their fields. A record
  that is not frozen is not hashable;
- ``inspect.signature`` and ``help`` show the fields as the parameters of ``__init__``.

``replace`` and ``asdict`` are ``dataclasses.replace`` and ``dataclasses.asdict`` (one level).
"""

from __future__ import annotations

from typing import Any, Callable

try:
    from typing import dataclass_transform
except ImportError:  # Python 3.10: type checkers learn it from typing_extensions; at run time nothing to do

    def dataclass_transform(**_: Any) -> Callable[[Any], Any]:  # type: ignore[no-redef]
        return lambda cls: cls


_MISSING: Any = object()


class _Field:
    __slots__ = ("default", "default_factory", "repr")

    def __init__(self, default: Any, default_factory: Any, repr: bool) -> None:
        self.default, self.default_factory, self.repr = default, default_factory, repr


def field(*, default: Any = _MISSING, default_factory: Callable[[], Any] = _MISSING, repr: bool = True) -> Any:
    """A field's default when it needs a factory (a fresh list per record) or is left out of repr."""
    if default is not _MISSING and default_factory is not _MISSING:
        raise ValueError("a field takes a default or a default_factory, not both")
    return _Field(default, default_factory, repr)


class FrozenRecordError(AttributeError):
    """A frozen record's field was assigned or deleted after ``__init__``."""


class _Factory:
    def __repr__(self) -> str:
        return "<factory>"  # as dataclasses shows a default_factory in a signature


class _Signature:
    """``Record.__signature__``: the fields as ``__init__``'s parameters, made when asked for
    (``inspect.signature``, ``help``), as a dataclass's generated ``__init__`` shows them."""

    def __get__(self, instance: object, owner: type) -> Any:
        import inspect

        annotations = owner.__record_annotations__  # type: ignore[attr-defined]
        parameters = []
        for name in owner.__record_fields__:  # type: ignore[attr-defined]
            default = owner.__record_defaults__.get(name, inspect.Parameter.empty)  # type: ignore[attr-defined]
            if name in owner.__record_factories__:  # type: ignore[attr-defined]
                default = _Factory()
            parameters.append(inspect.Parameter(
                name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
                annotation=annotations.get(name, inspect.Parameter.empty),
            ))
        return inspect.Signature(parameters, return_annotation=None)


@dataclass_transform(field_specifiers=(field,), frozen_default=True)
class Record:
    """The base of a record class; see the module's docstring."""

    __record_fields__: tuple[str, ...] = ()  # the fields, in order
    __record_defaults__: dict[str, Any] = {}
    __record_factories__: dict[str, Callable[[], Any]] = {}
    __record_shown__: tuple[str, ...] = ()  # the fields repr shows
    __record_annotations__: dict[str, Any] = {}  # each field's annotation, as written
    __signature__ = _Signature()

    def __init_subclass__(cls, *, frozen: bool = True, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        names: list[str] = []
        defaults: dict[str, Any] = {}
        factories: dict[str, Callable[[], Any]] = {}
        hidden: set[str] = set()
        annotations: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):  # a base record's fields first, as dataclasses order them
            if klass is Record or not issubclass(klass, Record):
                continue
            for name, annotation in klass.__dict__.get("__annotations__", {}).items():
                if "ClassVar" in str(annotation):
                    continue
                if name not in names:
                    names.append(name)
                annotations[name] = annotation
                value = klass.__dict__.get(name, _MISSING)
                if isinstance(value, _Field):
                    spec, value = value, value.default
                    if not spec.repr:
                        hidden.add(name)
                    if spec.default_factory is not _MISSING:
                        factories[name] = spec.default_factory
                    if value is _MISSING:
                        delattr(klass, name)  # as a dataclass leaves it: no class attribute
                    else:
                        setattr(klass, name, value)
                if value is not _MISSING:
                    defaults[name] = value
        for before, name in zip(names, names[1:]):
            if (before in defaults or before in factories) and not (name in defaults or name in factories):
                raise TypeError(f"{cls.__name__}: field {name!r} without a default follows {before!r} with one")
        cls.__record_fields__ = tuple(names)
        cls.__record_defaults__ = defaults
        cls.__record_factories__ = factories
        cls.__record_shown__ = tuple(n for n in names if n not in hidden)
        cls.__record_annotations__ = annotations
        if frozen:
            cls.__setattr__ = _refuse_assignment  # type: ignore[method-assign, assignment]
            cls.__delattr__ = _refuse_deletion  # type: ignore[method-assign, assignment]
            cls.__hash__ = _hash_fields  # type: ignore[method-assign, assignment]
        else:
            cls.__hash__ = None  # type: ignore[method-assign, assignment]  # equal by value, so not hashable

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cls = type(self)
        names = cls.__record_fields__
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__}() takes {len(names)} positional arguments but {len(args)} were given")
        values = dict(zip(names, args))
        for name, value in kwargs.items():
            if name in values:
                raise TypeError(f"{cls.__name__}() got multiple values for argument {name!r}")
            if name not in names:
                raise TypeError(f"{cls.__name__}() got an unexpected keyword argument {name!r}")
            values[name] = value
        setter = object.__setattr__
        for name in names:
            value = values.get(name, _MISSING)
            if value is _MISSING:
                value = cls.__record_defaults__.get(name, _MISSING)
                if value is _MISSING:
                    factory = cls.__record_factories__.get(name)
                    if factory is None:
                        raise TypeError(f"{cls.__name__}() missing required argument: {name!r}")
                    value = factory()
            setter(self, name, value)
        post_init = getattr(self, "__post_init__", None)
        if post_init is not None:
            post_init()

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in type(self).__record_shown__)
        return f"{type(self).__qualname__}({shown})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        names = self.__record_fields__  # as tuples, as a dataclass compares: a field identical to itself (NaN) is equal
        return tuple(getattr(self, n) for n in names) == tuple(getattr(other, n) for n in names)


def _refuse_assignment(self: Record, name: str, value: object) -> None:
    raise FrozenRecordError(f"cannot assign to field {name!r}")


def _refuse_deletion(self: Record, name: str) -> None:
    raise FrozenRecordError(f"cannot delete field {name!r}")


def _hash_fields(self: Record) -> int:
    return hash(tuple(getattr(self, n) for n in self.__record_fields__))


def replace(record: Any, **changes: Any) -> Any:
    """A new record like ``record`` with ``changes`` (its ``__post_init__`` runs again)."""
    unknown = set(changes) - set(record.__record_fields__)
    if unknown:
        raise TypeError(f"{type(record).__name__} has no field {sorted(unknown)[0]!r}")
    return type(record)(**{n: changes.get(n, getattr(record, n)) for n in record.__record_fields__})


def asdict(record: Any) -> dict[str, Any]:
    """The fields of ``record`` and their values (values as they are: records inside stay records)."""
    return {n: getattr(record, n) for n in record.__record_fields__}
