"""Session-wide test reporting: how many tests ran on real arm64 dumps."""


def pytest_terminal_summary(terminalreporter):
    ran = skipped = 0
    for kind in ("passed", "failed", "error", "skipped"):
        for rep in terminalreporter.stats.get(kind, []):
            if getattr(rep, "when", "call") not in ("call", "setup"):
                continue
            if "tests/real/" not in rep.nodeid.replace("\\", "/"):
                continue
            if kind == "skipped":
                skipped += 1
            elif rep.when == "call" or kind == "error":
                ran += 1
    terminalreporter.write_line(f"real-dump tests: {ran} ran, {skipped} skipped (no dump)")
