"""Removal scenarios: real guests that try to take memory away, and what they said.

Each *run* boots the kernel once with its own command line and acts out its
scenarios in order; each scenario is a dump of the state at that point (see
``scenarios.capture``). A run is a pair of states, repeated: the state a user
would simulate a removal on (``*-hotadd``, ``*-before``), then the state after
the guest was asked to remove or offline memory (``*-eject``, ``*-offline``),
with the guest's own account of the attempt in ``truth/removal.json``.

Runs (kernel command line added to the recipe's usual one):

* ``bootmem``: ``echo offline`` to boot memory blocks through sysfs, lowest
  first, until the guest prints arm64's boot-memory refusal ("Boot memory [%lx
  %lx] offlining attempted", ``prevent_bootmem_remove_notifier``, v5.7,
  bbd6ec605c0f "arm64/mm: Enable memory hot remove"); a block whose isolation
  fails first (reserved or slab pages: ``has_unmovable_pages()``) is recorded
  as its own attempt.
* ``unmovable``: a 128 MiB pc-dimm onlined to ZONE_NORMAL
  (``auto_online_blocks=offline``, then ``online_kernel``), tmpfs inodes
  created so that slab lands in it, then ACPI eject (QMP device_del).
* ``mom`` (``memory_hotplug.memmap_on_memory=1``): a one-block DIMM (128 MiB)
  hot-added and ejected, then a multi-block one (1 GiB). 6.1 puts the memmap
  on the memory only when the added range is exactly one block (v5.15,
  a08a2ae34613 "mm,memory_hotplug: allocate memmap from the added memory
  range"); later kernels per block of a larger range (v6.6, 6b8f0798b85a
  "mm/memory_hotplug: split memmap_on_memory requests across memblocks").
* ``blockmap`` (``rodata=off kfence.sample_interval=100``): the linear map of
  hot-added memory in block (and contiguous) mappings, as ``arch_add_memory()``
  maps it when ``force_pte_mapping()`` is false (7.2: no BBML2, so rodata not
  full, KFENCE's pool set up at boot, no realm). ``rodata=off`` alone is not
  enough on Debian's sid kernels: they build KFENCE with
  CONFIG_KFENCE_SAMPLE_INTERVAL=0, so ``kfence_early_init`` is false,
  ``arm64_kfence_can_set_direct_map()`` true and the linear map stays page
  by page (seen: a block of such a guest offlined without a word); a non-zero
  ``kfence.sample_interval`` makes the pool early (arm64_kfence_map_pool()). A 1 GiB DIMM at a 1 GiB boundary is one PUD leaf: offlining one
  of its blocks through sysfs, then ejecting the DIMM, each cut the leaf, which
  a kernel with the 2025 check refuses ("[%lx %lx] splits a leaf entry in
  linear map", "arm64/mm: Reject memory removal that splits a kernel leaf
  mapping"); then a 128 MiB DIMM (contiguous PMD leaves, 32 MiB aligned) is
  added and ejected, which no leaf check refuses.

``truth/removal.json`` (the after-attempt dumps)::

    {"format": 1, "scenario", "before": the scenario of the state before,
     "method": "acpi-eject" | "sysfs-offline",
     "dimm": {id, memdev, addr, size, blocks, block_size, ...} or null,
     "attempts": [{"block": N or null, "command": "QMP device_del id=dimm0" |
                   "echo offline > /sys/devices/system/memory/memoryN/state",
                   "exit": shell status (sysfs), "stderr": the shell's words (sysfs),
                   "qemu_events": [QMP events seen during the attempt],
                   "device_deleted": bool (eject), "acpi_ost": [{"source", "status"}, ...] (eject),
                   "dmesg": [lines the guest printed during the attempt, as dmesg shows them],
                   "messages": [the same without the "[   12.345678] " stamp],
                   "seconds": float}],
     "outcome": "removed" | "offlined" | "refused" | "no answer",
     "blocks": {"N": {"before": {state, valid_zones, removable, phys_device},
                      "after": the same or null when the block is gone}}}

``truth/hotadd.json`` (the ``*-hotadd`` dumps): the DIMM, how its blocks were
onlined, MemTotal before and after (kB), the memmap_on_memory parameter as
the guest shows it, and the zone counters that change (``present``/``managed``
per zone, from /proc/zoneinfo): with the memmap on the memory, ``managed`` grows
by less than the DIMM's pages, by the memmap's size per block that has one.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable

from .cache import RecipeError, progress
from .qemu import GiB, Guest

MiB = 1 << 20
FORMAT = 1
MEMORY = "/sys/devices/system/memory"


@dataclass(frozen=True)
class Run:
    """A boot with its own command line and the scenarios it acts out, in order."""

    name: str
    append: str
    scenarios: tuple[str, ...]
    needs: tuple[str, ...]  # config options (=y) the kernel needs
    act: Callable[["Act"], None]


class _Done(Exception):
    """The last wanted scenario of the run was captured."""


class Act:
    """What a run's actions see: the guest, and ``point()`` to capture a
    scenario (if wanted) with its extra truth files."""

    def __init__(self, g: Guest, run: Run, wanted: list[str], capture: Callable[[str, dict, dict], None]):
        self.g, self.run, self.capture = g, run, capture
        self.wanted = set(wanted)
        self.last = max(run.scenarios.index(s) for s in wanted)

    def point(self, scenario: str, truth: dict, meta: dict | None = None) -> None:
        """Capture ``scenario`` with ``truth`` ({file name: JSON}) and ``meta``
        (added to meta.json); stop the run after the last one wanted."""
        assert scenario in self.run.scenarios, scenario
        if scenario in self.wanted:
            self.capture(scenario, truth, {"run": self.run.name, **(meta or {})})
        if self.run.scenarios.index(scenario) >= self.last:
            raise _Done


# --------------------------------------------------------------------------- guest facts


def block_facts(g: Guest) -> dict[int, dict]:
    """Every memory block's sysfs state: {N: {state, valid_zones, removable, phys_device}}."""
    out = g.sh(f"for d in {MEMORY}/memory*; do n=${{d##*memory}}; "
               "for f in state valid_zones removable phys_device; do "
               "v=; [ -r $d/$f ] && read -r v < $d/$f; echo \"$n $f $v\"; done; done")
    blocks: dict[int, dict] = {}
    for line in out.splitlines():
        n, f, *v = line.split(" ", 2)
        if n.isdigit():
            blocks.setdefault(int(n), {})[f] = v[0] if v else ""
    return blocks


_STAMP = re.compile(r"^\[\s*\d+\.\d+\] ")


class DmesgMark:
    """The guest's kernel log from a point on: the lines printed since."""

    def __init__(self, g: Guest):
        self.g = g
        self.before = g.sh("dmesg").splitlines()

    def since(self) -> list[str]:
        now = self.g.sh("dmesg").splitlines()
        n = len(self.before)
        if now[:n] == self.before:
            return now[n:]
        # The ring buffer wrapped: the lines after the last one seen before.
        last = self.before[-1] if self.before else None
        if last in now:
            return now[len(now) - now[::-1].index(last):]
        return now


def _messages(lines: list[str]) -> list[str]:
    return [_STAMP.sub("", l) for l in lines]


def _memtotal_kb(g: Guest) -> int:
    return int(re.search(r"MemTotal:\s+(\d+)", g.sh("cat /proc/meminfo")).group(1))


def _zone_counts(g: Guest) -> dict[str, dict[str, int]]:
    """/proc/zoneinfo's present/managed/spanned pages per zone."""
    out: dict[str, dict[str, int]] = {}
    zone = None
    for line in g.sh("cat /proc/zoneinfo").splitlines():
        m = re.match(r"Node (\d+), zone\s+(\S+)", line)
        if m:
            zone = f"node{m.group(1)}/{m.group(2)}"
            continue
        m = re.match(r"\s+(present|managed|spanned)\s+(\d+)", line)
        if m and zone:
            out.setdefault(zone, {})[m.group(1)] = int(m.group(2))
    return out


def _param(g: Guest, path: str) -> str | None:
    rc, out, _ = g.run(f"cat {path}", check=False)
    return out.decode(errors="replace").strip() if rc == 0 else None


# --------------------------------------------------------------------------- actions


def hotadd(act: Act, size: int, ident: str, online: str = "movable") -> dict:
    """Hot-add a DIMM; its blocks come online Movable (the recipe's
    memhp_default_state), or with ``online="kernel"`` offline first and then
    ``online_kernel`` through sysfs. -> the hotadd.json record."""
    g = act.g
    mem0, zones0 = _memtotal_kb(g), _zone_counts(g)
    mark = DmesgMark(g)
    cmds = []
    if online == "kernel":
        cmds.append(f"echo offline > {MEMORY}/auto_online_blocks")
        g.sh(cmds[-1])
    progress(f"hot-adding a {size >> 20} MiB pc-dimm {ident}")
    dimm = g.hotadd(size, ident, online=(online != "kernel"))
    if online == "kernel":
        for b in dimm["blocks"]:
            cmds.append(f"echo online_kernel > {MEMORY}/memory{b}/state")
            g.sh(cmds[-1])
        g._settle(60)
    progress(f"{ident} at {dimm['addr']:#x}: blocks {dimm['blocks'][0]}..{dimm['blocks'][-1]} online "
             f"after {dimm['seconds']:.1f} s")
    mem1, zones1 = _memtotal_kb(g), _zone_counts(g)
    facts = block_facts(g)
    return {
        "format": FORMAT,
        "dimm": dimm,
        "online": online,
        "commands": cmds,
        "memmap_on_memory": _param(g, "/sys/module/memory_hotplug/parameters/memmap_on_memory"),
        "memtotal_kb": {"before": mem0, "after": mem1, "delta": mem1 - mem0, "dimm": dimm["size"] >> 10},
        "zones": {"before": zones0, "after": zones1},
        "blocks": {str(b): facts.get(b) for b in dimm["blocks"]},
        "dmesg": mark.since(),
    }


def offline_block(g: Guest, block: int) -> dict:
    """``echo offline`` to one block's sysfs state: one attempt record."""
    cmd = f"echo offline > {MEMORY}/memory{block}/state"
    mark = DmesgMark(g)
    t0 = time.monotonic()
    rc, out, err = g.run(cmd, timeout=120, check=False)
    seconds = time.monotonic() - t0
    lines = mark.since()
    return {"block": block, "command": cmd, "exit": rc, "stdout": out.decode(errors="replace"),
            "stderr": err.decode(errors="replace"), "dmesg": lines, "messages": _messages(lines),
            "seconds": seconds}


def _ost(events: list[dict], ident: str | None = None) -> list[dict]:
    """The _OST infos of ACPI_DEVICE_OST events (for device ``ident`` only, if given)."""
    return [e["data"]["info"] for e in events
            if e.get("event") == "ACPI_DEVICE_OST"
            and (ident is None or e.get("data", {}).get("info", {}).get("device") == ident)]


#: _OST status codes (include/linux/acpi.h): 0 success, 0x80 eject not
#: supported, 0x81 device in use, 0x82 device busy, 0x84 eject in progress.
OST_IN_PROGRESS = 0x84


def eject(g: Guest, ident: str, timeout: float = 90.0) -> dict:
    """QMP device_del of a DIMM: the guest offlines every block of it (two
    passes, drivers/acpi/scan.c acpi_scan_try_to_offline()), then removes the
    memory and ejects (_EJ0: QEMU's DEVICE_DELETED), or gives up with an _OST
    status (QEMU's ACPI_DEVICE_OST event). Waits for DEVICE_DELETED or a
    final _OST status of the DIMM (not 0, not 0x84 "in progress"), then up to
    2 s for the last _OST (after _EJ0 QEMU reports it with the slot only, the
    DIMM being gone). -> one attempt record."""
    assert g.qmp
    info = next(d for d in g.dimms if d["id"] == ident)
    mark = DmesgMark(g)
    cmd = f"QMP device_del id={ident}"
    g.qmp.collect_events(lambda evs: False, 0.2)  # drop what came before (the hot-add's _OST)
    t0 = time.monotonic()
    g.qmp.execute("device_del", id=ident)

    def deleted(evs):
        return any(e.get("event") == "DEVICE_DELETED" and e.get("data", {}).get("device") == ident for e in evs)

    def final(evs):
        # Success: _EJ0 (DEVICE_DELETED); the _OST after it names no device,
        # the slot being empty by then. Refusal: a final _OST status.
        return deleted(evs) or any(o.get("status") not in (0, OST_IN_PROGRESS) for o in _ost(evs, ident))

    events, answered = g.qmp.collect_events(final, timeout)
    if answered:  # the rest of the guest's answer (its last _OST), if it comes
        events += g.qmp.collect_events(lambda evs: any(e.get("event") == "ACPI_DEVICE_OST" for e in evs), 2.0)[0]
    gone = deleted(events)
    if gone:
        g._wait_blocks(info["blocks"], False, 60)
        g._settle(60)
        g.qmp.execute("object-del", id=info["memdev"])
        g.dimms.remove(info)
    else:
        g._settle(60)
    seconds = time.monotonic() - t0
    lines = mark.since()
    return {"block": None, "command": cmd, "qemu_events": events, "device_deleted": gone,
            "acpi_ost": _ost(events), "answered": answered, "dmesg": lines,
            "messages": _messages(lines), "seconds": seconds}


def _block_states(blocks: list[int], before: dict[int, dict], after: dict[int, dict]) -> dict:
    return {str(b): {"before": before.get(b), "after": after.get(b)} for b in blocks}


def removal_record(scenario: str, before_scenario: str, method: str, dimm: dict | None, attempts: list[dict],
                   blocks: list[int], facts_before: dict, facts_after: dict) -> dict:
    if method == "acpi-eject":
        a = attempts[-1]
        outcome = "removed" if a["device_deleted"] else ("refused" if a["answered"] else "no answer")
    else:
        outcome = "offlined" if any(a["exit"] == 0 for a in attempts) else "refused"
    return {"format": FORMAT, "scenario": scenario, "before": before_scenario, "method": method,
            "dimm": dimm, "attempts": attempts, "outcome": outcome,
            "blocks": _block_states(blocks, facts_before, facts_after)}


def _eject_point(act: Act, scenario: str, before: str, ident: str) -> dict:
    g = act.g
    dimm = dict(next(d for d in g.dimms if d["id"] == ident))
    f0 = block_facts(g)
    progress(f"ejecting pc-dimm {ident} (device_del)")
    a = eject(g, ident)
    f1 = block_facts(g)
    rec = removal_record(scenario, before, "acpi-eject", dimm, [a], dimm["blocks"], f0, f1)
    osts = ", ".join(f"{o.get('status'):#x}" for o in a["acpi_ost"])
    progress(f"{ident}: {rec['outcome']} after {a['seconds']:.1f} s (_OST {osts or 'none'}; "
             f"{len(a['dmesg'])} dmesg lines)")
    act.point(scenario, {"removal.json": rec},
              {"removal": {"outcome": rec["outcome"], "method": "acpi-eject", "dimm": ident},
               "dimm": None, "removed_dimm": dimm if a["device_deleted"] else None})
    return rec


def _offline_point(act: Act, scenario: str, before: str, blocks: list[int], dimm: dict | None,
                   stop: Callable[[dict], bool]) -> dict:
    """sysfs offline of ``blocks`` in order until ``stop(attempt)``."""
    g = act.g
    f0 = block_facts(g)
    attempts = []
    for b in blocks:
        progress(f"echo offline > memory{b}/state")
        a = offline_block(g, b)
        attempts.append(a)
        progress(f"memory{b}: exit {a['exit']} {a['stderr'].strip()!r}; "
                 f"{len(a['dmesg'])} dmesg lines{': ' + a['messages'][0] if a['messages'] else ''}")
        if stop(a):
            break
    g._settle(30)
    f1 = block_facts(g)
    rec = removal_record(scenario, before, "sysfs-offline", dimm, attempts, [a["block"] for a in attempts], f0, f1)
    act.point(scenario, {"removal.json": rec},
              {"removal": {"outcome": rec["outcome"], "method": "sysfs-offline",
                           "blocks": [a["block"] for a in attempts]}, "dimm": None, "removed_dimm": None})
    return rec


def _hotadd_point(act: Act, scenario: str, size: int, ident: str, online: str = "movable",
                  after: Callable[[Guest], dict] | None = None) -> dict:
    rec = hotadd(act, size, ident, online)
    if after is not None:
        rec["after_hotadd"] = after(act.g)
    act.point(scenario, {"hotadd.json": rec}, {"dimm": rec["dimm"], "removed_dimm": None})
    return rec


# --------------------------------------------------------------------------- the runs


def _act_bootmem(act: Act) -> None:
    g = act.g
    act.point("bootmem-before", {})
    boot = sorted(n for n, f in block_facts(g).items() if f.get("state") == "online")
    _offline_point(act, "bootmem-offline", "bootmem-before", boot, None,
                   lambda a: any("offlining attempted" in m for m in a["messages"]) or a["exit"] == 0)


#: tmpfs files the unmovable run creates after onlining its DIMM to
#: ZONE_NORMAL: their inodes and dentries are slab, allocated with GFP_KERNEL
#: from the highest zone first, which is the new Normal zone (boot memory is
#: ZONE_DMA on these guests).
FILL_FILES = 4000
FILL = (f"mkdir -p /tmp/fill && i=0 && while [ $i -lt {FILL_FILES} ]; do : > /tmp/fill/f$i; i=$((i+1)); done; "
        "grep -E 'Slab|MemFree' /proc/meminfo")


def _fill(g: Guest) -> dict:
    zones0 = _zone_counts(g)
    t0 = time.monotonic()
    out = g.sh(FILL, timeout=300)
    return {"command": FILL, "files": FILL_FILES, "seconds": time.monotonic() - t0, "meminfo": out.splitlines(),
            "zones_before": zones0, "zones_after": _zone_counts(g),
            "zoneinfo_normal_free": re.findall(r"zone\s+Normal\n\s+pages free\s+(\d+)", g.sh("cat /proc/zoneinfo"))}


def _act_unmovable(act: Act) -> None:
    _hotadd_point(act, "unmovable-hotadd", 128 * MiB, "dimm0", online="kernel", after=_fill)
    _eject_point(act, "unmovable-eject", "unmovable-hotadd", "dimm0")


def _act_mom(act: Act) -> None:
    _hotadd_point(act, "mom-hotadd1", 128 * MiB, "dimm0")
    _eject_point(act, "mom-eject1", "mom-hotadd1", "dimm0")
    _hotadd_point(act, "mom-hotadd8", GiB, "dimm1")
    _eject_point(act, "mom-eject8", "mom-hotadd8", "dimm1")


def _act_blockmap(act: Act) -> None:
    d = _hotadd_point(act, "blockmap-hotadd", GiB, "dimm0")["dimm"]
    first = d["blocks"][0]
    before = "blockmap-offline"
    if _offline_point(act, before, "blockmap-hotadd", [first], d, lambda a: True)["outcome"] == "offlined":
        # Offlined after all (no leaf check in this kernel): online it again, so
        # that the eject below starts from the DIMM as it was hot-added (the
        # linear map and vmemmap of an offline block stay until removal), and
        # name that state as the one before the eject.
        act.g.sh(f"echo online_movable > {MEMORY}/memory{first}/state")
        before = "blockmap-hotadd"
    _eject_point(act, "blockmap-eject", before, "dimm0")
    _hotadd_point(act, "blockmap-hotadd1", 128 * MiB, "dimm1")
    _eject_point(act, "blockmap-eject1", "blockmap-hotadd1", "dimm1")


RUNS: dict[str, Run] = {r.name: r for r in (
    Run("bootmem", "", ("bootmem-before", "bootmem-offline"), ("MEMORY_HOTREMOVE",), _act_bootmem),
    Run("unmovable", "", ("unmovable-hotadd", "unmovable-eject"),
        ("MEMORY_HOTREMOVE", "ACPI_HOTPLUG_MEMORY"), _act_unmovable),
    Run("mom", "memory_hotplug.memmap_on_memory=1", ("mom-hotadd1", "mom-eject1", "mom-hotadd8", "mom-eject8"),
        ("MEMORY_HOTREMOVE", "ACPI_HOTPLUG_MEMORY", "MHP_MEMMAP_ON_MEMORY"), _act_mom),
    Run("blockmap", "rodata=off kfence.sample_interval=100",
        ("blockmap-hotadd", "blockmap-offline", "blockmap-eject", "blockmap-hotadd1", "blockmap-eject1"),
        ("MEMORY_HOTREMOVE", "ACPI_HOTPLUG_MEMORY"), _act_blockmap),
)}

SCENARIOS: tuple[str, ...] = tuple(s for r in RUNS.values() for s in r.scenarios)
RUN_OF: dict[str, Run] = {s: r for r in RUNS.values() for s in r.scenarios}


def unsupported(run: Run, config_value: Callable[[str], str | None], acpi: bool) -> str | None:
    """Why a kernel cannot act out ``run`` (None: it can)."""
    for opt in run.needs:
        if config_value(opt) != "y":
            return f"kernel config lacks CONFIG_{opt}=y"
    if "ACPI_HOTPLUG_MEMORY" in run.needs and not acpi:
        return "booted from a device tree: no ACPI, so no pc-dimm hot-plug"
    return None


def act(g: Guest, run: Run, wanted: list[str], capture: Callable[[str, dict, dict], None]) -> None:
    """Act out ``run`` on a booted guest up to its last ``wanted`` scenario,
    calling ``capture(scenario, truth files, meta)`` at each wanted one."""
    for s in wanted:
        if RUN_OF.get(s) is not run:
            raise RecipeError(f"scenario {s!r} is not part of run {run.name!r}")
    try:
        run.act(Act(g, run, wanted, capture))
    except _Done:
        pass
