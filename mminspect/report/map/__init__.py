"""
``mminspect map``: physical memory and page tables as one picture
-----------------------------------------------------------------

:func:`~mminspect.report.map.model.build_map` gathers the data (schema
``mminspect.map/1``); :func:`~mminspect.report.map.html.map_html` writes it
as one self-contained HTML page (inline SVG drawn by a small script from the
embedded JSON: no network, no external fonts) that opens from disk.
"""

from mminspect.report.map.html import map_html
from mminspect.report.map.model import MAP_SCHEMA, build_map, map_dict, va_overview

__all__ = ("MAP_SCHEMA", "build_map", "map_dict", "map_html", "va_overview")
