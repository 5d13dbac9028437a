"""The scenarios: one QEMU run per kernel gives up to five dumps.

* ``boot``: right after boot (the agent is up, nothing else runs);
* ``hotadd``: after hot-adding a 1 GiB pc-dimm (QMP object-add + device_add) and
  waiting until the guest has its memory blocks online (movable, through
  ``memhp_default_state=online_movable``);
* ``hotremove``: after device_del of that DIMM and waiting until its blocks are
  gone from the guest;
* ``hotadd2``: then, in the same run, two 512 MiB pc-dimms (``dimm0`` at the
  freed base, ``dimm1`` right above it) hot-added and online: on 4K kernels
  both lie under one linear-map PMD table and one vmemmap PMD table;
* ``hotremove1``: device_del of ``dimm1`` only: its tables go, the upper
  tables it shares with ``dimm0`` stay.

The removal scenarios (:mod:`vmcores.removal`: ``bootmem-*``, ``unmovable-*``,
``mom-*``, ``blockmap-*``) run in boots of their own, one per run, each with
its own kernel command line; they are made only when asked for by name (or by
their run's name).

The actions always run in this order up to the last scenario wanted (a
scenario not wanted is acted out, not captured), so a dump does not depend on
which others were asked for.

For each: ground truth is recorded inside the guest (``capture-truth``), then the
guest is paused (QMP stop), dumped as ELF (dump-guest-memory paging=false) and, in
the same pause, in every kdump format the QEMU offers (``vmcore.kdump-zlib`` ...),
and resumed; only then are the truth files copied out, so nothing happens in the
guest between truth and dump but the agent answering.

Layout: ``$MMINSPECT_CACHE/vmcores/<kernel-id>/<scenario>/{vmcore,vmcore.kdump-*,truth/,meta.json}``.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import removal
from .cache import RecipeError, dir_size, human_size, progress, read_json, vmcores_dir, write_json
from .kernels import KernelFiles, cached_kernel, ensure_kernel, get_spec
from .initramfs import EXACT_VMSTAT
from .qemu import GiB, Guest

SCENARIOS = ("boot", "hotadd", "hotremove", "hotadd2", "hotremove1")
HOTPLUG_SCENARIOS = ("hotadd", "hotremove", "hotadd2", "hotremove1")
DIMM_SIZE = GiB
#: hotadd2's two DIMMs (ids, size each) and the one hotremove1 removes.
TWO_DIMMS = ("dimm0", "dimm1")
TWO_DIMM_SIZE = GiB // 2
REMOVED_OF_TWO = "dimm1"
META_VERSION = 1
#: Every scenario: the default run's, then the removal runs' (vmcores.removal).
ALL_SCENARIOS = SCENARIOS + removal.SCENARIOS


@dataclass
class Dump:
    """One cached vmcore with its ground truth."""

    kernel_id: str
    scenario: str
    dir: Path
    vmcore: Path
    vmlinux: Path
    truth: Path
    meta: dict

    @property
    def compressed(self) -> dict[str, Path]:
        """The kdump-compressed dumps of the same pause as ``vmcore``, by QEMU
        format (``kdump-zlib`` ...); empty for dumps made with ``kdump=False``."""
        return {p.name.split(".", 1)[1]: p for p in sorted(self.dir.glob("vmcore.kdump-*"))}

    def truth_text(self, name: str) -> str:
        return (self.truth / name).read_text()

    def system_ram(self) -> list[tuple[int, int]]:
        """The guest's System RAM ranges ``[start, end)``, from its /proc/iomem."""
        return [(a, b) for a, b in _iomem_ram(self.truth_text("iomem"))]

    def program(self):
        """A drgn Program on this dump with the vmlinux loaded."""
        import drgn  # noqa: PLC0415

        prog = drgn.Program()
        prog.set_core_dump(str(self.vmcore))
        prog.load_debug_info([str(self.vmlinux)])
        return prog


def scenario_dir(kernel_id: str, scenario: str) -> Path:
    return vmcores_dir() / kernel_id / scenario


def find(kernel_id: str, scenario: str) -> Dump | None:
    """The cached dump, or None if it is missing, incomplete, or was made with a
    vmlinux other than the one now cached for this kernel id."""
    if scenario not in ALL_SCENARIOS:
        raise RecipeError(f"unknown scenario {scenario!r}; known: {', '.join(ALL_SCENARIOS)}")
    d = scenario_dir(kernel_id, scenario)
    meta_path = d / "meta.json"
    if not (meta_path.exists() and (d / "vmcore").exists() and (d / "truth").is_dir()):
        return None
    meta = read_json(meta_path)
    vmlinux = Path(meta["kernel"]["vmlinux"])
    try:
        kf = cached_kernel(kernel_id)
    except RecipeError:
        kf = None
    if kf is not None:
        if meta["kernel"].get("vmlinux_sha256") not in (None, kf.info.get("sha256", {}).get(kf.vmlinux.name)):
            return None  # stale: the kernel was fetched anew since
        vmlinux = kf.vmlinux
    if not vmlinux.exists():
        return None
    return Dump(kernel_id, scenario, d, d / "vmcore", vmlinux, d / "truth", meta)


def supported_scenarios(kf: KernelFiles) -> dict[str, str | None]:
    """scenario -> None if this kernel can do it, else the reason why not."""
    why = None
    if kf.config_value("ACPI_HOTPLUG_MEMORY") != "y":
        why = "kernel config lacks CONFIG_ACPI_HOTPLUG_MEMORY=y (the guest cannot see a pc-dimm)"
    elif kf.config_value("MEMORY_HOTREMOVE") != "y":
        why = "kernel config lacks CONFIG_MEMORY_HOTREMOVE=y"
    elif kf.numa_nodes:
        why = "booted from a device tree for its NUMA nodes: no ACPI, so no pc-dimm hot-plug"
    out = {"boot": None, **{s: why for s in HOTPLUG_SCENARIOS}}
    for s, run in removal.RUN_OF.items():
        out[s] = removal.unsupported(run, kf.config_value, acpi=not kf.numa_nodes)
    return out


def expand_scenarios(names: list[str]) -> list[str]:
    """Scenario names, with a removal run's name standing for all its scenarios."""
    out: list[str] = []
    for n in names:
        for s in (removal.RUNS[n].scenarios if n in removal.RUNS else (n,)):
            if s not in out:
                out.append(s)
    return out


@contextmanager
def _kernel_lock(kernel_id: str):
    d = vmcores_dir() / kernel_id
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _config_facts(kf: KernelFiles) -> dict:
    names = ["ARM64_4K_PAGES", "ARM64_16K_PAGES", "ARM64_64K_PAGES", "ARM64_VA_BITS", "ARM64_PA_BITS",
             "PGTABLE_LEVELS", "ARM64_LPA2", "RODATA_FULL_DEFAULT_ENABLED", "RANDOMIZE_BASE",
             "UNMAP_KERNEL_AT_EL0", "KFENCE", "DEBUG_VM", "PTDUMP_DEBUGFS", "MEMORY_HOTPLUG",
             "MEMORY_HOTREMOVE", "ACPI_HOTPLUG_MEMORY", "SPARSEMEM_VMEMMAP", "NR_CPUS"]
    return {n: kf.config_value(n) for n in names}


def _iomem_ram(iomem: str) -> list[list[int]]:
    ram = []
    for line in iomem.splitlines():
        m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) : System RAM$", line)
        if m:
            ram.append([int(m.group(1), 16), int(m.group(2), 16) + 1])
    return ram


def make(kernel_id: str, scenarios: list[str] | None = None, *, cpu: str | None = None,
         force: bool = False, kdump: bool = True) -> list[Dump]:
    """Make the wanted dumps of a kernel in one QEMU run (missing ones only,
    unless ``force``), each also in QEMU's kdump formats unless not ``kdump``
    (about 5% of the ELF's size, 1 to 3 s more per scenario). Scenarios the kernel cannot do raise RecipeError when
    asked for explicitly and are skipped (with a progress line) otherwise."""
    get_spec(kernel_id)
    explicit = scenarios is not None
    wanted = expand_scenarios(list(scenarios)) if scenarios else list(SCENARIOS)
    for s in wanted:
        if s not in ALL_SCENARIOS:
            raise RecipeError(f"unknown scenario {s!r}; known: {', '.join(ALL_SCENARIOS)} "
                              f"(or a removal run: {', '.join(removal.RUNS)})")
    t_kernel = time.monotonic()
    kf = ensure_kernel(kernel_id)
    kernel_s = time.monotonic() - t_kernel
    support = supported_scenarios(kf)
    for s in list(wanted):
        if support[s]:
            if explicit:
                raise RecipeError(f"{kernel_id}: cannot make {s}: {support[s]}")
            progress(f"{kernel_id}: skipping {s}: {support[s]}")
            wanted.remove(s)
    with _kernel_lock(kernel_id):
        if not force:
            have = [s for s in wanted if find(kernel_id, s)]
            for s in have:
                progress(f"{kernel_id}/{s}: already cached in {scenario_dir(kernel_id, s)}")
            wanted = [s for s in wanted if s not in have]
        if not wanted:
            return [d for s in (expand_scenarios(list(scenarios)) if scenarios else SCENARIOS)
                    if (d := find(kernel_id, s))]
        default = [s for s in wanted if s in SCENARIOS]
        if default:
            _run(kf, default, cpu=cpu, kernel_s=kernel_s, kdump=kdump)
        for run in removal.RUNS.values():
            mine = [s for s in wanted if removal.RUN_OF.get(s) is run]
            if mine:
                _run_removal(kf, run, mine, cpu=cpu, kernel_s=kernel_s, kdump=kdump)
    return [d for s in wanted if (d := find(kernel_id, s))]


def _run(kf: KernelFiles, wanted: list[str], *, cpu: str | None, kernel_s: float, kdump: bool) -> None:
    kernel_id = kf.kernel_id
    base = vmcores_dir() / kernel_id
    rundir = base / f".run-{os.getpid()}"
    shutil.rmtree(rundir, ignore_errors=True)
    rundir.mkdir(parents=True)
    t_run = time.monotonic()
    try:
        with Guest(kf, workdir=rundir, cpu=cpu) as g:
            boot_s = g.boot_seconds
            last = max(SCENARIOS.index(s) for s in wanted)
            for sc in SCENARIOS[:last + 1]:
                action: dict = {}
                if sc == "hotadd":
                    progress(f"hot-adding a {DIMM_SIZE >> 30} GiB pc-dimm")
                    dimm = g.hotadd(DIMM_SIZE)
                    action = {"hotadd": dimm}
                    progress(f"blocks {dimm['blocks'][0]}..{dimm['blocks'][-1]} online after {dimm['seconds']:.1f} s")
                elif sc == "hotremove":
                    progress("removing the pc-dimm (device_del)")
                    action = {"hotremove": g.hotremove(dimm["id"])}
                    progress(f"blocks gone after {action['hotremove']['seconds']:.1f} s")
                elif sc == "hotadd2":
                    added = []
                    for ident in TWO_DIMMS:
                        progress(f"hot-adding a {TWO_DIMM_SIZE >> 20} MiB pc-dimm {ident}")
                        d = g.hotadd(TWO_DIMM_SIZE, ident)
                        added.append(d)
                        progress(f"{ident} at {d['addr']:#x}: blocks {d['blocks'][0]}..{d['blocks'][-1]} "
                                 f"online after {d['seconds']:.1f} s")
                    action = {"hotadd2": added}
                elif sc == "hotremove1":
                    progress(f"removing pc-dimm {REMOVED_OF_TWO} only (device_del)")
                    action = {"hotremove1": g.hotremove(REMOVED_OF_TWO)}
                    progress(f"blocks gone after {action['hotremove1']['seconds']:.1f} s")
                if sc in wanted:
                    _capture(g, kf, sc, rundir, {"boot_s": boot_s, "kernel_s": kernel_s, **action}, action, kdump)
            progress(f"{kernel_id}: QEMU run took {time.monotonic() - t_run:.1f} s")
    finally:
        shutil.rmtree(rundir, ignore_errors=True)


def _run_removal(kf: KernelFiles, run: "removal.Run", wanted: list[str], *, cpu: str | None, kernel_s: float,
                 kdump: bool) -> None:
    """One boot with the run's command line, acting out its scenarios up to
    the last wanted (vmcores.removal)."""
    rundir = vmcores_dir() / kf.kernel_id / f".run-{os.getpid()}-{run.name}"
    shutil.rmtree(rundir, ignore_errors=True)
    rundir.mkdir(parents=True)
    t_run = time.monotonic()
    try:
        with Guest(kf, workdir=rundir, cpu=cpu, append=run.append) as g:
            boot_s = g.boot_seconds

            def point(sc: str, truth: dict, meta: dict) -> None:
                times = {"boot_s": boot_s, "kernel_s": kernel_s, "run_s": time.monotonic() - t_run}
                _capture(g, kf, sc, rundir, times, {"hotadd": meta.pop("dimm", None),
                                                    "hotremove": meta.pop("removed_dimm", None)},
                         kdump, truth_files=truth, extra=meta)

            removal.act(g, run, wanted, point)
            progress(f"{kf.kernel_id}: QEMU run {run.name!r} ({g.append}) took {time.monotonic() - t_run:.1f} s")
    finally:
        shutil.rmtree(rundir, ignore_errors=True)


def capture(g: Guest, kf: KernelFiles, label: str, out: Path, *, times: dict | None = None,
            dimm: dict | None = None, removed_dimm: dict | None = None, kdump: bool = False,
            truth_files: dict | None = None, extra: dict | None = None) -> dict:
    """Record the truth in the guest, pause, dump (also in every kdump format
    the QEMU has, if ``kdump``), resume, then fetch the truth: writes
    ``out/{vmcore,vmcore.kdump-*,truth/,meta.json}`` and returns the meta.
    meta's ``memory.dimms`` lists every DIMM plugged at the pause (id, addr,
    size, blocks), ``dimm`` the one just added (hotadd), ``removed_dimm`` the
    one just removed. ``truth_files`` ({name: JSON}) are written into truth/
    beside what the guest recorded, ``extra`` is added to meta.json."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    g.run(f"capture-truth {label}", timeout=120)
    g.run(f"SC={label}\n{EXACT_VMSTAT}", timeout=60, in_agent=True)
    t1 = time.monotonic()
    dump = g.dump(out / "vmcore", g.kdump_formats() if kdump else ())
    t2 = time.monotonic()
    dump["sparse_s"] = _dig_holes(out / "vmcore")
    t2 = time.monotonic()
    truth = out / "truth"
    if truth.exists():
        shutil.rmtree(truth)
    g.fetch_dir(f"/truth/{label}", truth)
    for name, obj in (truth_files or {}).items():
        write_json(truth / name, obj)
    t3 = time.monotonic()
    qmp_mem = {
        "memory_size_summary": g.qmp.execute("query-memory-size-summary"),
        "memory_devices": g.qmp.execute("query-memory-devices"),
    }
    sha = kf.info.get("sha256", {})
    meta = {
        "meta_version": META_VERSION,
        "kernel_id": kf.kernel_id,
        "scenario": label,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "kernel": {
            "release": g.release,
            "vmlinux": str(kf.vmlinux),
            "vmlinux_sha256": sha.get(kf.vmlinux.name),
            "image": str(kf.image),
            "config": str(kf.config),
            "modules": {k: str(v) for k, v in kf.modules.items()},
            "packages": kf.info.get("packages"),
            "config_facts": _config_facts(kf),
        },
        "qemu": g.describe(),
        "kernel_cmdline": g.append,
        "memory": {
            "system_ram": _iomem_ram((truth / "iomem").read_text()) if (truth / "iomem").exists() else None,
            "block_size": int((truth / "memory" / "block_size_bytes").read_text().strip(), 16),
            "dimm": dimm,
            "dimms": [dict(d) for d in g.dimms],
            "removed_dimm": removed_dimm,
            **qmp_mem,
        },
        "guest_uptime": (truth / "uptime").read_text().split()[0],
        "times": {**(times or {}), "capture_s": t1 - t0,
                  "dump": {k: v for k, v in dump.items() if k != "sizes"}, "fetch_truth_s": t3 - t2},
        "sizes": {"vmcore": dump["sizes"]["elf"], "vmcore_allocated": (out / "vmcore").stat().st_blocks * 512,
                  "truth": dir_size(truth),
                  **{f"vmcore.{fmt}": n for fmt, n in dump["sizes"].items() if fmt != "elf"}},
        "format": "ELF (QMP dump-guest-memory paging=false)",
        "compressed": {f"vmcore.{fmt}": f"QMP dump-guest-memory paging=false format={fmt}, same pause"
                       for fmt in dump["sizes"] if fmt != "elf"},
        **(extra or {}),
    }
    write_json(out / "meta.json", meta)
    return meta


def _dig_holes(path: Path) -> float | None:
    """Make the ELF vmcore sparse where it is zero (``fallocate --dig-holes``):
    the same bytes when read, but a 1 GiB guest's dump then takes about a
    tenth of the disk (most guest memory is zero). Seconds taken, or None
    when there is no fallocate or the file system cannot punch holes."""
    exe = shutil.which("fallocate")
    if not exe:
        return None
    import subprocess  # noqa: PLC0415

    t = time.monotonic()
    r = subprocess.run([exe, "--dig-holes", str(path)], capture_output=True)
    return time.monotonic() - t if r.returncode == 0 else None


def _capture(g: Guest, kf: KernelFiles, sc: str, rundir: Path, times: dict, action: dict,
             kdump: bool, truth_files: dict | None = None, extra: dict | None = None) -> None:
    out = rundir / sc
    meta = capture(g, kf, sc, out, times=times, dimm=action.get("hotadd"),
                   removed_dimm=action.get("hotremove") or action.get("hotremove1"), kdump=kdump,
                   truth_files=truth_files, extra=extra)
    final = scenario_dir(kf.kernel_id, sc)
    if final.exists():
        shutil.rmtree(final)
    out.rename(final)
    dt = meta["times"]["dump"]
    more = "".join(f", {name} {human_size(n)} in {dt[name[7:] + '_s']:.1f} s"
                   for name, n in meta["sizes"].items() if name.startswith("vmcore."))
    sparse = (f", sparse: {human_size(meta['sizes']['vmcore_allocated'])} on disk"
              if dt.get("sparse_s") is not None else "")
    progress(f"{kf.kernel_id}/{sc}: vmcore {human_size(meta['sizes']['vmcore'])} dumped in {dt['dump_s']:.1f} s{more} "
             f"(paused {dt['paused_s']:.1f} s), truth {human_size(meta['sizes']['truth'])}{sparse} -> {final}")


DEFAULT_MAKE = ("debian-6.1-cloud-arm64",)


def env_make_kernels() -> set[str]:
    """Kernel ids whose dumps a test session may make, from MMINSPECT_MAKE_VMCORES:
    unset/"0": none; "1": debian-6.1-cloud-arm64; "all": every registered kernel;
    otherwise a comma-separated list of kernel ids."""
    from .kernels import kernel_ids  # noqa: PLC0415

    v = os.environ.get("MMINSPECT_MAKE_VMCORES", "").strip()
    if not v or v == "0":
        return set()
    if v == "1":
        return set(DEFAULT_MAKE)
    if v == "all":
        return set(kernel_ids())
    return {x.strip() for x in v.split(",") if x.strip()}


def env_make_removal() -> set[tuple[str, str]]:
    """(kernel id, removal run) pairs whose dumps a test session may make, from
    MMINSPECT_MAKE_REMOVAL: unset/"0": none; "all": every removal run of every
    kernel MMINSPECT_MAKE_VMCORES names; otherwise a comma-separated list of
    ``KERNEL:RUN`` (a removal run is a boot of its own, 20 to 90 s each, so
    they are not made with the default scenarios)."""
    v = os.environ.get("MMINSPECT_MAKE_REMOVAL", "").strip()
    if not v or v == "0":
        return set()
    if v == "all":
        return {(k, r) for k in env_make_kernels() for r in removal.RUNS}
    out = set()
    for item in (x.strip() for x in v.split(",") if x.strip()):
        k, _, r = item.rpartition(":")
        out.add((k, r))
    return out


def may_make(kernel_id: str, scenario: str) -> bool:
    """Whether a test session may make this dump (MMINSPECT_MAKE_VMCORES for
    the default scenarios, MMINSPECT_MAKE_REMOVAL for the removal runs')."""
    run = removal.RUN_OF.get(scenario)
    if run is None:
        return kernel_id in env_make_kernels()
    return (kernel_id, run.name) in env_make_removal()


def ensure(kernel_id: str, scenario: str) -> Dump:
    """The cached dump, made (with every other missing scenario of the kernel, in
    the same QEMU run) if it is not there."""
    d = find(kernel_id, scenario)
    if d:
        return d
    kf = ensure_kernel(kernel_id)
    support = supported_scenarios(kf)
    if support[scenario]:
        raise RecipeError(f"{kernel_id}: cannot make {scenario}: {support[scenario]}")
    if scenario in removal.RUN_OF:
        # ELF only: no test reads a removal dump's kdump copy, and writing one
        # costs 1 to 15 s of each pause (python -m vmcores make writes them).
        make(kernel_id, list(removal.RUN_OF[scenario].scenarios), kdump=False)
    else:
        make(kernel_id, [s for s in SCENARIOS if not support[s]])
    d = find(kernel_id, scenario)
    if d is None:
        raise RecipeError(f"{kernel_id}/{scenario}: made, but not found in the cache")
    return d
