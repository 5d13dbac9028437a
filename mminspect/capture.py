"""
Capture an evidence bundle
--------------------------

``capture()`` runs mminspect's analyses on a full target through a
:class:`~mminspect.target.recording.RecordingTarget` and writes the pages and
layout answers they used into a bundle (:mod:`mminspect.target.bundle`).
Opening the bundle later gives the same output as the full dump for the
captured roots, with no vmlinux and a few MB instead of GBs.
"""

from typing import Dict, List, Sequence

from mminspect.bits import U64
from mminspect.classify import capture_hook
from mminspect.errors import MMInspectError
from mminspect.files import atomic_output, check_output, target_files
from mminspect.hotremove.snapshot import capture_snapshot
from mminspect.kernel import Kernel
from mminspect.report.ptdump import check_wx, ptdump_lines
from mminspect.target.bundle import write_bundle
from mminspect.target.recording import RecordingTarget
from mminspect.walk import walk

__all__ = ("capture",)

DEFAULT_ROOTS = ("init_mm", "efi_mm")


def _analyses(k: Kernel, root_name: str) -> None:
    """Everything mminspect does with one root, so that the bundle holds
    every page and answer each of them needs."""
    w = walk(k, k.root(root_name), keep_entries=root_name == "init_mm")
    list(ptdump_lines(w))
    check_wx(w)
    capture_hook(k, w)
    if root_name == "init_mm":
        capture_snapshot(k, w)  # sections, blocks, era code: what simulate-remove reads


def capture(target, path: str, roots: Sequence[str] = DEFAULT_ROOTS, force: bool = False,
            inputs: Sequence[str] = ()) -> Dict[str, object]:
    """
    Write a bundle of ``roots`` from ``target`` to ``path``, whole or not at
    all (:func:`mminspect.files.atomic_output`).

    :param inputs: the files the target was opened from (dump, vmlinux ...),
        which ``path`` must not be; the target's own dump is added
    :return: what was captured (roots, skipped roots with reasons, pages, size)
    :raises MMInspectError: if ``path`` is an input, exists (without
        ``force``) or is not a regular file, or no root could be captured
    """
    source = getattr(target, "name", "")
    inputs = [*inputs, *target_files(target)]
    check_output(path, inputs, force)
    page_size = int(target.vmcoreinfo()["PAGESIZE"])
    rec = RecordingTarget(target, page_size)
    k = Kernel(rec)
    done: List[str] = []
    skipped: Dict[str, str] = {}
    for name in roots:
        try:
            _analyses(k, name)
            done.append(name)
        except MMInspectError as e:
            skipped[name] = str(e)
    if not done:
        raise MMInspectError("nothing captured: " + "; ".join(f"{r}: {e}" for r, e in skipped.items()))
    # A bundle reader translates kernel-virtual reads (efi_mm.pgd, struct
    # pages ...) through swapper_pg_dir itself: keep the tables on each path.
    init = k.root("init_mm")
    for va, size in sorted(rec.virt_reads):
        if init.start <= va:
            walk(k, k.root("init_mm", va, min(va + max(size, 1), U64)))
    runs = rec.page_runs()
    answers = {
        "debug_info": target.has_debug_info,
        "source": source,
        "roots": done,
        **rec.answers,
    }
    with atomic_output(path, inputs, force) as f:
        size = write_bundle(f, target.vmcoreinfo(), answers,
                            ((pa, target.read_phys(pa, n)) for pa, n in runs), k.phys_to_virt)
    return {"roots": done, "skipped": skipped, "pages": len(rec.pages), "bytes": size}
