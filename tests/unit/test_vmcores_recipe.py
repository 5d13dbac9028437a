"""The vmcores recipe's pieces that need no guest: busybox out of either
package layout, the model module that breaks the build <-> kernels import
cycle, and the removal runs' bookkeeping (scenario names, kernel support,
the outcome of an attempt, the kernel log since a point)."""

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

import vmcores
from vmcores import removal, scenarios
from vmcores.cache import RecipeError
from vmcores.initramfs import busybox_from_deb
from vmcores.model import KernelFiles

HERE = Path(vmcores.__file__).resolve().parent

needs_dpkg = pytest.mark.skipif(not shutil.which("dpkg-deb"), reason="dpkg-deb not installed")


def _deb(tmp_path: Path, name: str, files: dict[str, bytes], links: dict[str, str] = {}) -> Path:
    """A small busybox-static-like .deb built with dpkg-deb."""
    root = tmp_path / name
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: busybox-static\nVersion: 1:1.0-1\nArchitecture: arm64\nMaintainer: t <t@example.org>\n"
        "Description: test\n")
    for path, data in files.items():
        p = root / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    for path, target in links.items():
        p = root / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.symlink_to(target)
    deb = tmp_path / f"{name}.deb"
    subprocess.run(["dpkg-deb", "-Zgzip", "--root-owner-group", "--build", str(root), str(deb)], check=True,
                   capture_output=True)
    return deb


@needs_dpkg
@pytest.mark.parametrize("layout", ["bin/busybox", "usr/bin/busybox"])
def test_busybox_found_in_either_layout(tmp_path, layout):
    body = b"\x7fELF busybox from " + layout.encode()
    deb = _deb(tmp_path, layout.replace("/", "_"), {layout: body, "usr/share/doc/busybox-static/README": b"x"})
    out = tmp_path / "busybox"
    assert busybox_from_deb(deb, out) == out
    assert out.read_bytes() == body
    assert out.stat().st_mode & 0o111
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".busybox-")] == []


@needs_dpkg
def test_busybox_regular_file_wins_over_a_symlink(tmp_path):
    """A usr-merged package that also ships bin/busybox as a symlink: the
    regular file is taken, whichever comes first in the archive."""
    deb = _deb(tmp_path, "merged", {"usr/bin/busybox": b"real"}, {"bin/busybox": "../usr/bin/busybox"})
    out = tmp_path / "busybox"
    busybox_from_deb(deb, out)
    assert out.read_bytes() == b"real" and not out.is_symlink()


@needs_dpkg
def test_busybox_missing_is_one_recipe_error(tmp_path):
    deb = _deb(tmp_path, "empty", {"usr/sbin/busybox-not": b"no"})
    out = tmp_path / "busybox"
    with pytest.raises(RecipeError, match="busybox"):
        busybox_from_deb(deb, out)
    assert not out.exists()


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_build_does_not_import_kernels():
    """kernels imports build (lazily) for the built kernels; build takes the
    shared shapes from vmcores.model, never from kernels."""
    got = _imports(HERE / "build.py")
    assert not {".kernels", "vmcores.kernels"} & got, got
    assert {".model", "vmcores.model"} & got
    assert not {".build", "vmcores.build", ".kernels"} & _imports(HERE / "model.py")


def test_model_is_the_one_home():
    import vmcores.build as build
    import vmcores.kernels as kernels

    assert kernels.KernelFiles is vmcores.KernelFiles is build.KernelFiles is KernelFiles
    assert kernels.KernelSpec is vmcores.KernelSpec
    spec = kernels.get_spec("debian-6.1-cloud-arm64")
    assert spec.flavour == "cloud-arm64" and spec.cpu == kernels.DEFAULT_CPU


# -- removal runs ---------------------------------------------------------------


def test_scenario_names_are_unique_and_grouped():
    assert len(set(vmcores.ALL_SCENARIOS)) == len(vmcores.ALL_SCENARIOS)
    assert vmcores.ALL_SCENARIOS[: len(vmcores.SCENARIOS)] == vmcores.SCENARIOS
    for run in removal.RUNS.values():
        assert all(removal.RUN_OF[s] is run for s in run.scenarios)
    assert scenarios.expand_scenarios(["mom", "boot", "mom-eject1"]) == [
        "mom-hotadd1", "mom-eject1", "mom-hotadd8", "mom-eject8", "boot"]


def _kf(tmp_path, config: dict, numa=0) -> KernelFiles:
    cfg = tmp_path / "config"
    cfg.write_text("".join(f"CONFIG_{k}={v}\n" for k, v in config.items()))
    return KernelFiles("k", tmp_path / "Image", tmp_path / "vmlinux", {}, cfg, numa_nodes=numa)


def test_removal_support_follows_the_config(tmp_path):
    full = {"MEMORY_HOTREMOVE": "y", "ACPI_HOTPLUG_MEMORY": "y", "MHP_MEMMAP_ON_MEMORY": "y"}
    sup = scenarios.supported_scenarios(_kf(tmp_path, full))
    assert all(sup[s] is None for s in removal.SCENARIOS)
    # The generic flavours: no ACPI memory hot-plug, but boot memory can still be offlined.
    sup = scenarios.supported_scenarios(_kf(tmp_path, {"MEMORY_HOTREMOVE": "y"}))
    assert sup["bootmem-offline"] is None
    assert "ACPI_HOTPLUG_MEMORY" in sup["unmovable-eject"] and "ACPI_HOTPLUG_MEMORY" in sup["blockmap-eject"]
    sup = scenarios.supported_scenarios(_kf(tmp_path, {**full, "MHP_MEMMAP_ON_MEMORY": "n"}))
    assert "MHP_MEMMAP_ON_MEMORY" in sup["mom-hotadd1"] and sup["blockmap-hotadd"] is None
    sup = scenarios.supported_scenarios(_kf(tmp_path, full, numa=2))
    assert "device tree" in sup["mom-eject8"] and sup["bootmem-before"] is None


def _ost(status, source=3, device="dimm0"):
    return {"event": "ACPI_DEVICE_OST",
            "data": {"info": {"device": device, "slot": "0", "slot-type": "DIMM", "source": source, "status": status}}}


def _attempt(events, answered=True):
    deleted = any(e["event"] == "DEVICE_DELETED" for e in events)
    return {"block": None, "qemu_events": events, "device_deleted": deleted, "acpi_ost": removal._ost(events),
            "answered": answered}


def test_eject_outcome():
    busy = _attempt([_ost(0x84), _ost(0x82)])
    assert [o["status"] for o in busy["acpi_ost"]] == [0x84, 0x82]
    rec = removal.removal_record("x-eject", "x-hotadd", "acpi-eject", {"id": "dimm0"}, [busy], [16],
                                 {16: {"state": "online"}}, {16: {"state": "online"}})
    assert rec["outcome"] == "refused"
    assert rec["blocks"] == {"16": {"before": {"state": "online"}, "after": {"state": "online"}}}
    gone = _attempt([_ost(0x84), {"event": "DEVICE_DELETED", "data": {"device": "dimm0"}}])
    rec = removal.removal_record("x", "y", "acpi-eject", None, [gone], [16], {16: {"state": "online"}}, {})
    assert rec["outcome"] == "removed" and rec["blocks"]["16"]["after"] is None
    silent = _attempt([_ost(0x84)], answered=False)
    assert removal.removal_record("x", "y", "acpi-eject", None, [silent], [], {}, {})["outcome"] == "no answer"
    assert removal._ost([_ost(0, device="dimm1"), _ost(0x82)], "dimm0") == [_ost(0x82)["data"]["info"]]


def test_offline_outcome():
    refused = [{"block": 8, "exit": 1}, {"block": 9, "exit": 1}]
    assert removal.removal_record("a", "b", "sysfs-offline", None, refused, [8, 9], {}, {})["outcome"] == "refused"
    done = refused + [{"block": 10, "exit": 0}]
    assert removal.removal_record("a", "b", "sysfs-offline", None, done, [8, 9, 10], {}, {})["outcome"] == "offlined"


class _FakeGuest:
    def __init__(self, logs):
        self.logs = list(logs)

    def sh(self, script, timeout=60.0):
        assert script == "dmesg"
        return "\n".join(self.logs.pop(0)) + "\n"


def test_dmesg_since_a_mark():
    a = ["[    1.000000] one", "[    2.000000] two"]
    new = ["[    3.000000] Boot memory [48000000 50000000] offlining attempted"]
    g = _FakeGuest([a, a + new])
    assert removal.DmesgMark(g).since() == new
    # The ring buffer dropped its first line meanwhile: still only the new lines.
    g = _FakeGuest([a, a[1:] + new])
    assert removal.DmesgMark(g).since() == new
    assert removal._messages(new) == ["Boot memory [48000000 50000000] offlining attempted"]


def test_removal_runs_are_made_only_when_named(monkeypatch):
    monkeypatch.setenv("MMINSPECT_MAKE_VMCORES", "debian-6.1-cloud-arm64")
    monkeypatch.delenv("MMINSPECT_MAKE_REMOVAL", raising=False)
    assert scenarios.may_make("debian-6.1-cloud-arm64", "hotadd")
    assert not scenarios.may_make("debian-6.1-cloud-arm64", "bootmem-offline")
    monkeypatch.setenv("MMINSPECT_MAKE_REMOVAL", "debian-6.1-cloud-arm64:bootmem, debian-sid-cloud-arm64:mom")
    assert scenarios.may_make("debian-6.1-cloud-arm64", "bootmem-before")
    assert not scenarios.may_make("debian-6.1-cloud-arm64", "mom-eject1")
    assert scenarios.may_make("debian-sid-cloud-arm64", "mom-eject1")
    assert not scenarios.may_make("debian-sid-cloud-arm64", "hotadd")
    monkeypatch.setenv("MMINSPECT_MAKE_REMOVAL", "all")
    assert scenarios.may_make("debian-6.1-cloud-arm64", "blockmap-eject1")
    assert not scenarios.may_make("debian-sid-cloud-arm64", "blockmap-eject1")
