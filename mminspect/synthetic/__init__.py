"""Synthetic arm64 kernels as ELF vmcores (placeholder docstring, rewritten below)."""
from .regime import REGIMES, REGIMES_BY_NAME, Regime
from .encode import Prot, TableProt
from .builder import (AUTO, Anomaly, Builder, BuiltKernel, Leaf, LeafKind, LeafRun, RootRecord,
                      Status, TableRecord, Translation)
from .vmcore import VmcoreFile, vmcoreinfo_text, write_vmcore
from .sample import Region, default_ram, make_sample
