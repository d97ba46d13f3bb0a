"""The allowed values of config settings, declared beside each field of :mod:`fedssl.config`.

A numeric field carries a :class:`Range` in its annotation (``batch_size: Count = 64``, with
``Count = Annotated[int, Range(lo=1)]``); a string field either has choices (the class's
``_choices``), or is :class:`Text` (names, paths) or :class:`Checked` (a name that another
part checks before anything starts, e.g. a backbone). :func:`domain_of` reads the declaration
back; :func:`fedssl.config.from_dict` checks every value against it while loading, so a value
outside its domain is refused by every launcher and by ``flwr run`` before a run directory is
claimed. ``tests/test_config_domains.py`` fails for a numeric or free string field declared
without one.
"""

from __future__ import annotations

import argparse
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

__all__ = [
    "Range",
    "Text",
    "Checked",
    "domain_of",
    "option",
    "Count",
    "Size",
    "Seed",
    "Rate",
    "NonNegative",
    "Probability",
    "Fraction",
    "Momentum",
    "Positive",
    "Port",
]


@dataclass(frozen=True)
class Range:
    """Numbers from ``lo`` to ``hi`` (None: unbounded), each end included unless ``*_open``."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def allows(self, value: float) -> bool:
        """Whether ``value`` (a finite number) lies in the range."""
        if not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        if self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi):
            return False
        return True

    def describe(self) -> str:
        """The range in words: ``>= 1``, ``> 0``, ``in [0, 1]``, ``in (0, 1]``."""
        if self.lo is not None and self.hi is not None:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            return f"in {left}{_num(self.lo)}, {_num(self.hi)}{right}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {_num(self.hi)}"
        return "any number"

    def outside(self) -> list[float]:
        """Values just outside the range (for tests generated from the declarations)."""
        out: list[float] = []
        if self.lo is not None:
            out.append(self.lo if self.lo_open else self.lo - 1)
        if self.hi is not None:
            out.append(self.hi if self.hi_open else self.hi + 1)
        return out


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class Text:
    """Free text (a name, a path); ``nonempty`` refuses an empty string."""

    nonempty: bool = False


@dataclass(frozen=True)
class Checked:
    """A name checked before anything starts by ``where`` (which names its allowed values)."""

    where: str


#: a count of things, at least one (clients, rounds, epochs, batch size, widths)
Count = Annotated[int, Range(lo=1)]
#: a size or cap where 0 means "all" or "off"
Size = Annotated[int, Range(lo=0)]
#: a random seed (numpy takes 0 to 2**32 - 1)
Seed = Annotated[int, Range(lo=0, hi=2**32 - 1)]
#: a learning rate or another strictly positive scale
Rate = Annotated[float, Range(lo=0, lo_open=True)]
Positive = Rate
#: a weight, decay or strength that may be 0 (off)
NonNegative = Annotated[float, Range(lo=0)]
#: a probability
Probability = Annotated[float, Range(lo=0, hi=1)]
#: a share of something, more than none
Fraction = Annotated[float, Range(lo=0, hi=1, lo_open=True)]
#: a momentum or an EMA factor (1 would never move)
Momentum = Annotated[float, Range(lo=0, hi=1, hi_open=True)]


def domain_of(annotation: Any) -> Range | Text | Checked | None:
    """The domain declared in a field's annotation (also inside ``X | None``), or None."""
    if typing.get_origin(annotation) is Annotated:
        for meta in annotation.__metadata__:
            if isinstance(meta, Range | Text | Checked):
                return meta
        return None
    for arg in typing.get_args(annotation):
        found = domain_of(arg)
        if found is not None:
            return found
    return None


#: a TCP port (0: any free port)
Port = Annotated[int, Range(0, 65535)]


def option(annotated: Any) -> Callable[[str], Any]:
    """An ``argparse`` ``type`` for a command-line option of the domain ``annotated`` (e.g.
    ``type=option(Count)``): a value outside it is refused by argparse (exit 2) with the
    option's name, the value and the domain. The callable keeps the domain as ``.domain``."""
    base = typing.get_args(annotated)[0]
    dom = domain_of(annotated)
    if base not in (int, float) or not isinstance(dom, Range):
        raise TypeError(f"option() takes a numeric domain such as Count, got {annotated!r}")

    def parse(text: str):
        try:
            value = base(text)
        except ValueError:
            kind = "an integer" if base is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        if not dom.allows(float(value)):
            raise argparse.ArgumentTypeError(f"{text} is not allowed; it must be {dom.describe()}")
        return value

    parse.domain = dom  # type: ignore[attr-defined]
    parse.__name__ = base.__name__
    return parse
