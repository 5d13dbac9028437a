"""The HTML page of ``mminspect map``: the template, stylesheet and script
shipped beside this module (package data), with the map's JSON embedded."""

import json
from importlib import resources
from typing import IO, Any, Dict

__all__ = ("map_html",)


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _embed(data: Dict[str, Any]) -> str:
    """JSON safe inside <script>: no "</" can close the element early."""
    return json.dumps(data, separators=(",", ":")).replace("</", "<\\/").replace("<!--", "<\\!--")


def map_html(data: Dict[str, Any], out: IO[str]) -> None:
    """Write the page for a ``mminspect.map/1`` dict."""
    k = data["kernel"]
    title = f"mminspect map: {k.get('osrelease') or 'kernel'}"
    page = _asset("template.html").replace("{{TITLE}}", _html_escape(title))
    for key, value in (("STYLE", _asset("map.css")),
                       ("SCRIPT", _asset("map.js")), ("DATA", _embed(data))):
        page = page.replace("{{" + key + "}}", value, 1)
    out.write(page)


def _html_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
