"""Small formatting pieces every report uses."""

__all__ = ("size_text",)


def size_text(n: int) -> str:
    """A byte count in the largest binary unit that divides it: ``2M``,
    ``1984K``, ``256T`` (as ptdump and crash print sizes)."""
    for unit in ("", "K", "M", "G", "T", "P"):
        if n % 1024 or unit == "P":
            return f"{n}{unit}"
        n //= 1024
    return str(n)
