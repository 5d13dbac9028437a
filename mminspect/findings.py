"""
Findings
--------

Something a reviewer should see, with how bad it is. :data:`SEVERITIES`
orders the severities from least to most severe.
"""

from dataclasses import dataclass
from typing import Dict

__all__ = ("Finding", "SEVERITIES")

#: Severities, least severe first.
SEVERITIES = ("info", "warning", "error", "critical")


@dataclass(frozen=True)
class Finding:
    """Something about a table page a reviewer should see (the classifier's
    findings: ``kind`` names the check, ``sentence`` says it in words)."""

    severity: str  #: info, warning, error, critical
    kind: str  #: origin mismatch, table in altmap, table page free, ptlock ...
    phys: int
    level: str
    root: str
    region: str
    sentence: str

    def as_dict(self) -> Dict[str, object]:
        return dict(self.__dict__)

    def __str__(self) -> str:
        return f"{self.severity}: {self.kind}: {self.sentence}"
