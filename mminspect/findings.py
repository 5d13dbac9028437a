"""
Findings
--------

Something a reviewer should see, with how bad it is: the classifier's
findings about table pages (an origin the kernel's allocation sites never
give, a table on a free page, a ptlock that is missing ...) and the
simulated removal's (a dtor without a ctor, a memblock page freed to the
buddy allocator ...) are one :class:`Finding`, on one :class:`Severity`
scale.
"""

import enum
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Tuple

__all__ = ("Finding", "SEVERITIES", "Severity", "worst")


class Severity(str, enum.Enum):
    """How bad a finding is, least severe first."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return SEVERITIES.index(self.value)


#: The severities' names, least severe first.
SEVERITIES: Tuple[str, ...] = tuple(s.value for s in Severity)


def worst(severities: Iterable[str]) -> Optional[str]:
    """The most severe of ``severities`` (None for none)."""
    return max(severities, key=SEVERITIES.index, default=None)


@dataclass(frozen=True)
class Finding:
    """
    Something about a table page a reviewer should see: how bad
    (``severity``, one of :data:`SEVERITIES`), which check (``rule``), the
    table page (``phys``, ``level``), in words (``sentence``), and where it
    was met: by the classifier under a root and in a VA region (``root``,
    ``region``), or by a simulated removal with the page's origin and
    ptlock and the kernel routine that met it (``origin``, ``ptlock``,
    ``routine``), with what the kernel would print (``messages``).
    """

    severity: str
    rule: str
    phys: int
    level: str
    sentence: str
    root: Optional[str] = None
    region: Optional[str] = None
    origin: Optional[str] = None
    ptlock: Optional[str] = None
    routine: Optional[str] = None
    messages: tuple = ()

    @property
    def kind(self) -> str:
        """The classifier's name for :attr:`rule`."""
        return self.rule

    def as_dict(self) -> Dict[str, object]:
        """The classifier's JSON of a finding (``mminspect.classify/1``)."""
        return {"severity": self.severity, "kind": self.rule, "phys": self.phys, "level": self.level,
                "root": self.root, "region": self.region, "sentence": self.sentence}

    def removal_dict(self) -> Dict[str, object]:
        """The simulation's JSON of a finding (``mminspect.simulate/1``)."""
        return {"severity": self.severity, "rule": self.rule, "phys": self.phys, "level": self.level,
                "origin": self.origin, "ptlock": self.ptlock, "routine": self.routine,
                "sentence": self.sentence, "messages": list(self.messages)}

    def __str__(self) -> str:
        return f"{self.severity}: {self.rule}: {self.sentence}"
