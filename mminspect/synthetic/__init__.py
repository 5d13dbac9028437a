"""Synthetic arm64 kernels as ELF vmcores (work in progress; see module docs)."""
from .regime import REGIMES, REGIMES_BY_NAME, Regime
from .encode import Prot, TableProt
from .builder import Builder, BuiltKernel, LeafKind, LeafRun, TableRecord, Translation, Status, Anomaly
from .vmcore import write_vmcore, vmcoreinfo_text
