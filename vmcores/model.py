"""The shapes the recipe hands around: a kernel's description (KernelSpec) and
its files (KernelFiles). Their own module so that both kernel sources,
:mod:`vmcores.kernels` (Debian packages) and :mod:`vmcores.build` (built
from source), use them without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CPU = "cortex-a57"
# FEAT_LPA2 (52-bit VA with 4K/16K pages) and a 16K granule need "max";
# pauth-impdef makes TCG's pointer authentication cheaper (boot 12 s -> 9 s).
CPU_MAX = "max,pauth-impdef=on"


@dataclass
class KernelFiles:
    """The files needed to boot a kernel and to read its dumps."""

    kernel_id: str
    image: Path  # arm64 Image (EFI stub) or gzip'ed vmlinuz; QEMU -kernel takes both
    vmlinux: Path  # with DWARF
    modules: dict[str, Path]  # module name -> .ko path (empty when built in)
    config: Path  # the full .config
    cpu: str = DEFAULT_CPU
    append: str = ""  # extra kernel command-line words for this kernel
    #: NUMA nodes the guest gets (0: one). With nodes it boots from a device tree
    #: without UEFI: EDK2 reports its flash as RAM that no ACPI SRAT node covers,
    #: and the kernel then fakes one node.
    numa_nodes: int = 0
    release: str | None = None  # uname -r, when known
    info: dict = field(default_factory=dict)  # packages, versions, checksums

    def config_value(self, name: str) -> str | None:
        """``CONFIG_<name>``'s value from the config ("y", "m", "48", ...), or None."""
        key = name if name.startswith("CONFIG_") else "CONFIG_" + name
        for line in self.config.read_text(errors="replace").splitlines():
            if line.startswith(key + "="):
                return line.split("=", 1)[1].strip('"')
        return None


@dataclass(frozen=True)
class KernelSpec:
    kernel_id: str
    kind: str  # "debian" or "built"
    description: str
    cpu: str = DEFAULT_CPU
    # Debian only:
    flavour: str | None = None  # "arm64", "cloud-arm64", "arm64-16k"
    layout: str = "bookworm"  # "bookworm": linux-image-*-unsigned; "sid": linux-binary-*
    series: str = "6.1"  # upstream series, the first part of the package ABI name
    append: str = ""
    numa_nodes: int = 0  # see KernelFiles.numa_nodes
    # Modules to put into the initramfs (name -> loaded in this order).
    modules: tuple[str, ...] = ("qemu_fw_cfg",)
