"""python -m vmcores make|list|path ... (see vmcores/README.md)."""

from __future__ import annotations

import argparse
import sys

from .cache import RecipeError, cache_dir, dir_size, human_size, progress
from .kernels import cached_kernel, kernel_ids, registry
from .removal import RUNS
from .scenarios import ALL_SCENARIOS, SCENARIOS, find, make


def _cmd_make(args) -> int:
    explicit = bool(args.kernel)
    ids = args.kernel or kernel_ids()
    failed = made = 0
    for kid in ids:
        try:
            dumps = make(kid, args.scenario or None, cpu=args.cpu, force=args.force, kdump=not args.no_kdump)
            made += 1
            for d in dumps:
                print(d.dir)
        except RecipeError as e:
            failed += 1
            print(f"vmcores: {kid}: {e}" if not str(e).startswith(kid) else f"vmcores: {e}", file=sys.stderr)
    if explicit:
        return 1 if failed else 0
    return 0 if made else 1


def _cmd_list(args) -> int:
    print(f"cache: {cache_dir()}")
    for kid, spec in registry().items():
        try:
            kf = cached_kernel(kid)
        except RecipeError:
            kf = None
        if kf is None:
            print(f"{kid}: not cached ({spec.kind}: {spec.description})")
            continue
        ksize = sum(p.stat().st_size for p in (kf.image, kf.vmlinux, kf.config, *kf.modules.values()))
        print(f"{kid}: {kf.release or '?'}, kernel files {human_size(ksize)}")
        for sc in ALL_SCENARIOS:
            d = find(kid, sc)
            if d is None and sc not in SCENARIOS:
                continue  # removal scenarios: listed when made
            if d is None:
                print(f"  {sc:16} -")
            else:
                print(f"  {sc:16} {human_size(dir_size(d.dir)):>10}  {d.meta.get('created', '')}  {d.dir}")
    return 0


def _cmd_path(args) -> int:
    d = find(args.kernel, args.scenario)
    if d is None:
        print(f"vmcores: no cached {args.kernel}/{args.scenario}", file=sys.stderr)
        return 1
    print(d.dir)
    return 0


def _cmd_userspace(args) -> int:
    from . import userspace  # noqa: PLC0415

    path = userspace.ensure_rootfs(force=args.force)
    info = userspace.userspace_info()
    sz = info["sizes"]
    print(path)
    print(f"{len(info['packages'])} packages ({', '.join(userspace.PACKAGES)} and their Depends), "
          f"{sz['files']} files: {human_size(sz['unpacked'])} unpacked, {human_size(sz['cpio_gz'])} gzip'ed, "
          f"{human_size(sz['left_out_bytes'])} left out; .debs {human_size(sz['debs'])}")
    return 0


LIVE_HELP = """commands: sh <shell command> | hotadd | hotremove | dump <dir> | pause | cont | quit"""


def _cmd_live(args) -> int:
    from pathlib import Path  # noqa: PLC0415

    from .live import live_guest  # noqa: PLC0415

    with live_guest(args.kernel, cpu=args.cpu, userspace=args.userspace,
                    memory="2G" if args.userspace else "1G") as lg:
        print(f"qmp={lg.qmp_socket} gdb=127.0.0.1:{lg.gdb_port} pid={lg.pid} vmlinux={lg.kernel.vmlinux}")
        print(f"  drgn --qemu {lg.qmp_socket} -s {lg.kernel.vmlinux}")
        print(f"  gdb-multiarch {lg.kernel.vmlinux} -ex 'target remote 127.0.0.1:{lg.gdb_port}'")
        print(LIVE_HELP, flush=True)
        for line in sys.stdin:
            cmd, _, rest = line.strip().partition(" ")
            try:
                if cmd == "sh":
                    rc, out, err = lg.run(rest, check=False)
                    sys.stdout.write(out.decode(errors="replace") + err.decode(errors="replace") + f"[exit {rc}]\n")
                elif cmd == "hotadd":
                    print(lg.hotadd())
                elif cmd == "hotremove":
                    print(lg.hotremove())
                elif cmd == "dump":
                    print(lg.dump(Path(rest or "live-dump")).dir)
                elif cmd == "pause":
                    lg.guest.stop()
                elif cmd == "cont":
                    lg.guest.cont()
                elif cmd in ("quit", "exit"):
                    break
                elif cmd:
                    print(LIVE_HELP)
            except RecipeError as e:
                print(f"vmcores: {e}")
            sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vmcores", description="real arm64 vmcores for mminspect")
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="make (missing) dumps")
    m.add_argument("--kernel", action="append", metavar="ID",
                   help="kernel id (repeatable; default: every registered kernel that can be obtained)")
    m.add_argument("--scenario", action="append", choices=ALL_SCENARIOS + tuple(RUNS), metavar="SCENARIO",
                   help=f"repeatable; default: {', '.join(SCENARIOS)}; also a removal scenario "
                   f"({', '.join(ALL_SCENARIOS[len(SCENARIOS):])}) or a removal run, all its scenarios "
                   f"({', '.join(RUNS)})")
    m.add_argument("--cpu", help="QEMU -cpu (default: the kernel's, e.g. cortex-a57)")
    m.add_argument("--force", action="store_true", help="remake dumps that are cached")
    m.add_argument("--no-kdump", action="store_true",
                   help="ELF only: skip the kdump-compressed copies (vmcore.kdump-zlib) of each pause")
    m.set_defaults(fn=_cmd_make)
    l = sub.add_parser("list", help="what is cached, with sizes")
    l.set_defaults(fn=_cmd_list)
    p = sub.add_parser("path", help="print a dump's directory, or exit 1")
    p.add_argument("kernel")
    p.add_argument("scenario", choices=ALL_SCENARIOS, metavar="SCENARIO")
    p.set_defaults(fn=_cmd_path)
    lv = sub.add_parser("live", help="boot a guest and keep it running (QMP socket, gdbstub); "
                        "commands on stdin")
    lv.add_argument("--kernel", default="debian-6.1-cloud-arm64")
    lv.add_argument("--cpu")
    lv.add_argument("--userspace", action="store_true",
                    help="boot the Debian arm64 userspace with mminspect (vmcores.userspace) instead of busybox")
    lv.set_defaults(fn=_cmd_live)
    u = sub.add_parser("userspace", help="build (or show) the cached arm64 Debian userspace that runs mminspect")
    u.add_argument("--force", action="store_true", help="resolve, download and unpack again")
    u.set_defaults(fn=_cmd_userspace)
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except RecipeError as e:
        print(f"vmcores: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        progress("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
