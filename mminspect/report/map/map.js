/* mminspect map: draws the embedded mminspect.map/1 JSON as inline SVG.
 * No network, no libraries. The physical view shows a range of physical
 * memory as rows (memory blocks, groups of blocks, or 1 MiB-ish slices of
 * one block); with few tables in view every table page is one mark, with
 * many a density map whose rows zoom in. */
(function () {
  "use strict";
  var SVGNS = "http://www.w3.org/2000/svg";
  var D = JSON.parse(document.getElementById("mminspect-map-data").textContent);
  var MAX_ROWS = 128, COLS = 256, PLOT_W = 1024, LABEL_W = 150, ROW_H = 20, HOLE_H = 12, MARK_LIMIT = 12000;
  var ORIGIN_SHAPES = {
    "memblock": "square", "buddy-ctor": "circle", "buddy-no-ctor": "triangle", "slab": "diamond",
    "kernel-image": "plus", "altmap": "tridown", "unknown": "cross"
  };
  var ORIGIN_TEXT = {
    "memblock": "memblock (boot allocator)", "buddy-ctor": "buddy, with pgtable ctor",
    "buddy-no-ctor": "buddy, without ctor", "slab": "slab (sub-page pgd)", "kernel-image": "kernel image (static)",
    "altmap": "altmap (block's own memmap)", "unknown": "unknown"
  };
  var PATTERN_TEXT = {
    "memblock": "solid", "buddy-ctor": "dots", "buddy-no-ctor": "diagonal stripes", "slab": "cross-hatch",
    "kernel-image": "black, white dots", "altmap": "horizontal stripes", "unknown": "vertical stripes"
  };
  var PAGE = D.memory.page_size, BLOCK = D.memory.block_size || 0;

  // -- data ------------------------------------------------------------------
  function expandRuns(runs, step) {
    var n = 0, i, j;
    for (i = 0; i < runs.length; i++) n += runs[i][1];
    var phys = new Float64Array(n), cls = new Int32Array(n), at = 0, start = 0;
    for (i = 0; i < runs.length; i++) {
      start += runs[i][0];
      for (j = 0; j < runs[i][1]; j++) { phys[at] = start + j * step; cls[at] = runs[i][2]; at++; }
    }
    return { phys: phys, cls: cls, n: n };
  }
  var T = expandRuns(D.tables.runs, PAGE);
  var CLASSES = D.classes;
  var ORIGINS = D.origins;
  var originOf = new Int32Array(CLASSES.length);
  CLASSES.forEach(function (c, i) { originOf[i] = ORIGINS.indexOf(c.origin); });
  var P = D.proposal;
  var FREED = P ? expandRuns(P.freed.runs, PAGE) : { phys: new Float64Array(0), cls: new Int32Array(0), n: 0 };
  var KEPT = P ? P.kept.slice().sort(function (a, b) { return a.phys - b.phys; }) : [];
  var keptPhys = new Float64Array(KEPT.map(function (k) { return k.phys; }));

  function lowerBound(arr, x) { var lo = 0, hi = arr.length; while (lo < hi) { var m = (lo + hi) >>> 1; if (arr[m] < x) lo = m + 1; else hi = m; } return lo; }
  function findPhys(arr, x) { var k = lowerBound(arr, x); return (k < arr.length && arr[k] === x) ? k : -1; }

  function expandMemory(list, idKey) {
    var out = [];
    list.forEach(function (r) {
      for (var j = 0; j < r.count; j++) {
        var x = {};
        for (var key in r) if (key !== "count") x[key] = r[key];
        x.start = r.start + j * r.size;
        if (idKey) x[idKey] = r[idKey] + j;
        out.push(x);
      }
    });
    return out.sort(function (a, b) { return a.start - b.start; });
  }
  var blocks = expandMemory(D.memory.blocks, "id");
  var sections = expandMemory(D.memory.sections, null);
  var memLo, memHi;
  if (blocks.length) { memLo = blocks[0].start; memHi = blocks[blocks.length - 1].start + blocks[blocks.length - 1].size; }
  else if (T.n) { memLo = Math.floor(T.phys[0] / (1 << 27)) * (1 << 27); memHi = (Math.floor(T.phys[T.n - 1] / (1 << 27)) + 1) * (1 << 27); }
  else { memLo = 0; memHi = 1 << 27; }
  var UNIT = BLOCK || (1 << 27);

  // -- formatting ------------------------------------------------------------------
  function hex(n) { return "0x" + n.toString(16); }
  function size(n) {
    var u = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"], i = 0;
    while (n >= 1024 && i < u.length - 1 && n % 1024 === 0) { n /= 1024; i++; }
    if (n >= 1024 && i < u.length - 1) { while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; } return n.toFixed(1) + " " + u[i]; }
    return n + " " + u[i];
  }
  function num(n) { return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ","); }
  function esc(s) { return String(s).replace(/[&<>"]/g, function (c) { return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]; }); }
  function el(name, attrs, parent) {
    var e = document.createElementNS(SVGNS, name);
    if (attrs) for (var k in attrs) if (attrs[k] !== undefined && attrs[k] !== null) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function titled(e, text) { var t = el("title", null, e); t.textContent = text; return e; }

  // -- shapes and patterns ------------------------------------------------------------
  function shapePath(shape, x, y, r) {
    switch (shape) {
      case "square": return "M" + (x - r) + " " + (y - r) + "h" + 2 * r + "v" + 2 * r + "h" + -2 * r + "z";
      case "circle": return "M" + (x - r) + " " + y + "a" + r + " " + r + " 0 1 0 " + 2 * r + " 0a" + r + " " + r + " 0 1 0 " + -2 * r + " 0z";
      case "triangle": return "M" + x + " " + (y - r * 1.15) + "L" + (x + r * 1.1) + " " + (y + r * 0.85) + "L" + (x - r * 1.1) + " " + (y + r * 0.85) + "z";
      case "tridown": return "M" + x + " " + (y + r * 1.15) + "L" + (x + r * 1.1) + " " + (y - r * 0.85) + "L" + (x - r * 1.1) + " " + (y - r * 0.85) + "z";
      case "diamond": return "M" + x + " " + (y - r * 1.2) + "L" + (x + r * 1.2) + " " + y + "L" + x + " " + (y + r * 1.2) + "L" + (x - r * 1.2) + " " + y + "z";
      case "plus": var a = r * 0.4; return "M" + (x - a) + " " + (y - r) + "h" + 2 * a + "v" + (r - a) + "h" + (r - a) + "v" + 2 * a + "h" + (a - r) + "v" + (r - a) + "h" + -2 * a + "v" + (a - r) + "h" + (a - r) + "v" + -2 * a + "h" + (r - a) + "z";
      default: var b = r * 0.35; return "M" + (x - r) + " " + (y - r + b) + "L" + (x - r + b) + " " + (y - r) + "L" + x + " " + (y - b) + "L" + (x + r - b) + " " + (y - r) + "L" + (x + r) + " " + (y - r + b) + "L" + (x + b) + " " + y + "L" + (x + r) + " " + (y + r - b) + "L" + (x + r - b) + " " + (y + r) + "L" + x + " " + (y + b) + "L" + (x - r + b) + " " + (y + r) + "L" + (x - r) + " " + (y + r - b) + "L" + (x - b) + " " + y + "z";
    }
  }
  var COLOURS = { "kernel-image": "#000000", "memblock": "#0072B2", "buddy-ctor": "#009E73", "buddy-no-ctor": "#D55E00",
                  "slab": "#CC79A7", "altmap": "#E69F00", "unknown": "#56B4E9" };
  function defs(svg) {
    var d = el("defs", null, svg);
    function pattern(id, w, h, bg, draw) {
      var p = el("pattern", { id: id, width: w, height: h, patternUnits: "userSpaceOnUse" }, d);
      el("rect", { width: w, height: h, fill: bg }, p);
      draw(p);
    }
    ORIGINS.forEach(function (o) {
      var c = COLOURS[o] || "#777";
      pattern("p-" + o, 4, 4, "#fff", function (p) {
        switch (o) {
          case "buddy-ctor": el("rect", { width: 4, height: 4, fill: c, opacity: 0.35 }, p); el("circle", { cx: 2, cy: 2, r: 1.3, fill: c }, p); break;
          case "buddy-no-ctor": el("rect", { width: 4, height: 4, fill: "#fff" }, p); el("path", { d: "M-1 1L1 -1M0 4L4 0M3 5L5 3", stroke: c, "stroke-width": 1.4 }, p); break;
          case "slab": el("path", { d: "M0 0L4 4M4 0L0 4", stroke: c, "stroke-width": 1 }, p); break;
          case "kernel-image": el("rect", { width: 4, height: 4, fill: c }, p); el("rect", { x: 1.5, y: 1.5, width: 1, height: 1, fill: "#fff" }, p); break;
          // light colours: dark lines on a tint, so that grey-scale keeps the orientation
          case "altmap": el("rect", { width: 4, height: 4, fill: c, opacity: 0.5 }, p); el("path", { d: "M0 2H4", stroke: "#222", "stroke-width": 1.5 }, p); break;
          case "unknown": el("rect", { width: 4, height: 4, fill: c, opacity: 0.5 }, p); el("path", { d: "M2 0V4", stroke: "#222", "stroke-width": 1.5 }, p); break;
          default: el("rect", { width: 4, height: 4, fill: c }, p);
        }
      });
    });
    pattern("p-hot", 6, 6, "#ffffff", function (p) { el("path", { d: "M0 6L6 0", stroke: "#9ccbe8", "stroke-width": 1 }, p); });
    pattern("p-offline", 6, 6, "#f4f4f4", function (p) { el("path", { d: "M0 0L6 6M6 0L0 6", stroke: "#aaa", "stroke-width": 0.6 }, p); });
    pattern("p-altmap-bg", 6, 6, "#fff7e0", function (p) { el("path", { d: "M0 3H6", stroke: "#E69F00", "stroke-width": 0.6 }, p); });
    pattern("p-refused", 8, 8, "none", function (p) { el("path", { d: "M0 8L8 0", stroke: "#D55E00", "stroke-width": 1.6, opacity: 0.8 }, p); });
  }

  // -- memory layout -----------------------------------------------------------------
  var blockStarts = new Float64Array(blocks.map(function (b) { return b.start; }));
  function blockAt(pa) {
    var k = lowerBound(blockStarts, pa + 1) - 1;
    return (k >= 0 && pa < blocks[k].start + blocks[k].size) ? blocks[k] : null;
  }
  function blocksIn(lo, hi) {
    var out = [], k = Math.max(0, lowerBound(blockStarts, lo + 1) - 1);
    for (; k < blocks.length && blocks[k].start < hi; k++) if (blocks[k].start + blocks[k].size > lo) out.push(blocks[k]);
    return out;
  }
  var secStarts = new Float64Array(sections.map(function (s) { return s.start; }));
  function sectionsIn(lo, hi) {
    var out = [], k = Math.max(0, lowerBound(secStarts, lo + 1) - 1);
    for (; k < sections.length && sections[k].start < hi; k++) if (sections[k].start + sections[k].size > lo) out.push(sections[k]);
    return out;
  }
  function blockRangeText(bs) {
    if (!bs.length) return "";
    return bs.length === 1 ? "memory" + bs[0].id : "memory" + bs[0].id + "-" + bs[bs.length - 1].id;
  }
  function uniq(xs) { var s = []; xs.forEach(function (x) { if (s.indexOf(x) < 0) s.push(x); }); return s; }
  function rowFacts(bs) {
    var early = bs.filter(function (b) { return b.early; }).length;
    var kind = early === bs.length ? "boot" : (early === 0 ? "hot-added" : "boot and hot-added");
    var zones = uniq(bs.map(function (b) { return b.zone || ""; })).filter(function (z) { return z; });
    var nodes = uniq(bs.map(function (b) { return b.nid === null || b.nid === undefined ? "node ?" : "node " + b.nid; }));
    var states = uniq(bs.map(function (b) { return b.state; }));
    return { kind: kind, zones: zones, nodes: nodes, states: states };
  }

  // A view: [lo, hi) cut into rows of `unit` bytes; consecutive rows with no
  // present block collapse into one hole row.
  function makeRows(lo, hi, unit) {
    var rows = [];
    for (var a = lo; a < hi; a += unit) {
      var b = Math.min(a + unit, hi), bs = blocksIn(a, b);
      if (!bs.length && blocks.length) {
        var last = rows[rows.length - 1];
        if (last && last.hole) { last.hi = b; continue; }
        rows.push({ lo: a, hi: b, hole: true, blocks: [] });
      } else rows.push({ lo: a, hi: b, hole: false, blocks: bs });
    }
    return rows;
  }

  // -- view state ---------------------------------------------------------------------
  var stack = [];
  function initialUnit(lo, hi) {
    var n = Math.ceil((hi - lo) / UNIT);
    return UNIT * Math.max(1, Math.ceil(n / MAX_ROWS));
  }
  function childUnit(row) {
    var span = row.hi - row.lo;
    if (span > UNIT) return Math.max(UNIT, UNIT * Math.ceil(span / UNIT / MAX_ROWS));
    return Math.max(PAGE, PAGE * COLS);           // one block: rows of COLS pages
  }
  function currentView() { return stack[stack.length - 1]; }

  function tableRange(lo, hi) { return [lowerBound(T.phys, lo), lowerBound(T.phys, hi)]; }

  // -- drawing: the physical view -------------------------------------------------------------
  var wrap = document.getElementById("map-wrap");
  var selectedEl = null;
  function draw() {
    var v = currentView();
    var rows = makeRows(v.lo, v.hi, v.unit);
    var tr = tableRange(v.lo, v.hi), inView = tr[1] - tr[0];
    var cellBytes = v.unit / COLS;
    var marks = cellBytes <= PAGE || inView <= MARK_LIMIT;
    ROW_H = rows.length > 48 ? 12 : 20;
    var y = 4, heights = rows.map(function (r) { return r.hole ? HOLE_H : ROW_H; });
    var total = heights.reduce(function (a, b) { return a + b; }, 0) + 8;
    var svg = el("svg", { viewBox: "0 0 " + (LABEL_W + PLOT_W + 8) + " " + total, role: "img", id: "map-svg",
                          "aria-labelledby": "map-title map-desc", "data-mode": marks ? "marks" : "density",
                          "data-lo": v.lo, "data-hi": v.hi, "data-unit": v.unit });
    var title = el("title", { id: "map-title" }, svg);
    title.textContent = "Physical memory " + hex(v.lo) + "-" + hex(v.hi - 1) + ", " + num(inView) + " page-table pages, " +
      (marks ? "one mark per table page" : "as a density map");
    var desc = el("desc", { id: "map-desc" }, svg);
    desc.textContent = "Rows of " + size(v.unit) + " of physical memory; boot memory grey, hot-added memory striped, holes dashed. " +
      (marks ? "Each page-table page is a mark whose colour and shape give its origin; hollow marks were not ctor'd." :
               "Each cell shows the page-table pages in it, patterned by the most common origin, darker with more tables.");
    defs(svg);
    var gMem = el("g", { "class": "memory" }, svg);
    var gData = el("g", { "class": "tables" }, svg);
    var gOv = el("g", { "class": "overlay", "aria-label": "proposed removal overlay" }, svg);
    var rowY = [];
    rows.forEach(function (r, i) { rowY.push(y); y += heights[i]; });
    rows.forEach(function (r, i) { drawRow(gMem, r, rowY[i], heights[i], v); });
    if (marks) drawMarks(gData, rows, rowY, v, tr);
    else drawDensity(gData, rows, rowY, v, tr);
    if (P) drawOverlay(gOv, rows, rowY, v, marks);
    wrap.textContent = "";
    wrap.appendChild(svg);
    var vt = document.getElementById("view-text");
    vt.textContent = "Showing " + hex(v.lo) + "-" + hex(v.hi - 1) + " (" + size(v.hi - v.lo) + "), rows of " + size(v.unit) +
      ", " + num(inView) + " table pages, " + (marks ? "marks" : "density") + ".";
    document.getElementById("zoom-out").disabled = stack.length < 2;
    document.getElementById("zoom-up").disabled = stack.length < 2;
    document.body.setAttribute("data-view-mode", marks ? "marks" : "density");
  }

  function xOf(r, pa, unit) { return LABEL_W + (pa - r.lo) / unit * PLOT_W; }

  function drawRow(g, r, y, h, v) {
    var row = el("g", { "class": "row", "data-lo": r.lo, "data-hi": r.hi }, g);
    var label = el("text", { x: 4, y: y + h - 3, "class": "row-label" + (r.hole ? " hole-label" : "") }, row);
    var facts = r.hole ? null : rowFacts(r.blocks);
    if (r.hole) {
      label.textContent = "hole " + size(r.hi - r.lo);
      titled(el("rect", { x: LABEL_W, y: y + 1, width: xOf(r, r.hi, v.unit) - LABEL_W, height: h - 2, "class": "seg-hole" }, row),
             "no memory block: " + hex(r.lo) + "-" + hex(r.hi - 1) + " (" + size(r.hi - r.lo) + ")");
      return;
    }
    var name = v.unit <= UNIT && v.unit < BLOCK ? hex(r.lo) : blockRangeText(r.blocks);
    label.textContent = name + (facts.zones.length ? " " + facts.zones.join("/") : "") +
      (facts.nodes[0] !== "node ?" ? " " + facts.nodes.map(function (n) { return n.replace("node ", "n"); }).join("/") : "");
    // one segment per run of alike, adjacent blocks
    var segs = [];
    r.blocks.forEach(function (b) {
      var last = segs[segs.length - 1];
      if (last && last.end === b.start && last.b.state === b.state && last.b.early === b.early &&
          last.b.zone === b.zone && last.b.nid === b.nid) { last.end = b.start + b.size; last.lastId = b.id; }
      else segs.push({ b: b, start: b.start, end: b.start + b.size, lastId: b.id });
    });
    segs.forEach(function (sg) {
      var b = sg.b, a = Math.max(sg.start, r.lo), e = Math.min(sg.end, r.hi);
      var cls = b.state !== "online" ? "seg-offline" : (b.early ? "seg-boot" : "seg-hot");
      var x0 = xOf(r, a, v.unit), x1 = xOf(r, e, v.unit);
      titled(el("rect", { x: x0, y: y + 1, width: Math.max(0.5, x1 - x0), height: h - 2, "class": cls }, row),
             "memory" + b.id + (sg.lastId !== b.id ? "-" + sg.lastId : "") + ": " + hex(sg.start) + "-" + hex(sg.end - 1) + ", " +
             (b.early ? "boot" : "hot-added") + ", " + b.state + ", zone " + (b.zone || "?") + ", node " +
             (b.nid === null || b.nid === undefined ? "?" : b.nid));
    });
    r.blocks.forEach(function (b) {
      if (b.altmap_pages) {
        var as = b.altmap_start * PAGE, ae = as + b.altmap_pages * PAGE;
        var xa = xOf(r, Math.max(as, r.lo), v.unit), xe = xOf(r, Math.min(ae, r.hi), v.unit);
        if (xe > xa) titled(el("rect", { x: xa, y: y + 1, width: xe - xa, height: h - 2, "class": "seg-altmap" }, row),
                            "altmap reserve of memory" + b.id + ": " + num(b.altmap_pages) + " pages of its own memmap");
      }
    });
    // present sections that are missing inside a block's span, and section ticks
    var secs = sectionsIn(r.lo, r.hi), ssize = D.memory.section_size;
    if (ssize && (r.hi - r.lo) / ssize <= 16) {
      r.blocks.forEach(function (b) {
        for (var s = Math.max(b.start, r.lo); s < Math.min(b.start + b.size, r.hi); s += ssize) {
          var present = secs.some(function (x) { return x.start === s; });
          if (!present) titled(el("rect", { x: xOf(r, s, v.unit), y: y + 1, width: ssize / v.unit * PLOT_W, height: h - 2, "class": "seg-hole" }, row),
                               "section " + hex(s) + " not present");
          if (s > r.lo) el("line", { x1: xOf(r, s, v.unit), x2: xOf(r, s, v.unit), y1: y + 1, y2: y + h - 1, "class": "sec-tick" }, row);
        }
      });
    }
    el("rect", { x: LABEL_W, y: y + 1, width: xOf(r, r.hi, v.unit) - LABEL_W, height: h - 2, "class": "row-bg-outline" }, row);
    var zoomable = (r.hi - r.lo) > PAGE * COLS || v.unit > PAGE * COLS;
    if (zoomable) {
      row.setAttribute("tabindex", "0");
      row.setAttribute("role", "button");
      row.setAttribute("aria-label", "Zoom into " + name + ": " + hex(r.lo) + "-" + hex(r.hi - 1) + ", " + facts.kind +
                       (facts.zones.length ? ", zone " + facts.zones.join("/") : "") + ", " + facts.states.join("/"));
      row.addEventListener("click", function (ev) { if (ev.target.classList.contains("mark")) return; zoomInto(r); });
      row.addEventListener("keydown", function (ev) { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); zoomInto(r); } });
    }
  }

  function rowIndexFinder(rows) {
    var i = 0;
    return function (pa) { while (i < rows.length && rows[i].hi <= pa) i++; return (i < rows.length && rows[i].lo <= pa) ? i : -1; };
  }

  function markText(k, c) {
    var roots = c.roots.map(function (ri) { return D.roots[ri].name; }).join(", ");
    return c.level + " table " + hex(T.phys[k]) + " (" + roots + "): " + c.origin + ", " +
      (c.ctor === true ? "ctor'd" : c.ctor === false ? "no ctor" : "ctor unknown") + ", ptlock " + c.ptlock + ", " + c.region;
  }

  function drawMarks(g, rows, rowY, v, tr) {
    var find = rowIndexFinder(rows), pageW = PAGE / v.unit * PLOT_W;
    var r0 = Math.max(2.5, Math.min(5, pageW / 2 - 0.4));
    var focusable = (tr[1] - tr[0]) <= 2000;
    for (var k = tr[0]; k < tr[1]; k++) {
      var i = find(T.phys[k]);
      if (i < 0) continue;
      var r = rows[i], c = CLASSES[T.cls[k]];
      var x = xOf(r, T.phys[k], v.unit) + pageW / 2, y = rowY[i] + ROW_H / 2;
      var cls = "mark o-" + c.origin + (c.ctor === true ? " ctor" : c.ctor === false ? " noctor" : " ctorunknown");
      var m = el("path", { d: shapePath(ORIGIN_SHAPES[c.origin] || "cross", x, y, r0), "class": cls,
                           "data-phys": T.phys[k], "data-origin": c.origin, "data-k": k }, g);
      titled(m, markText(k, c));
      if (focusable) { m.setAttribute("tabindex", "0"); m.setAttribute("role", "button"); m.setAttribute("aria-label", markText(k, c)); }
    }
  }

  function drawDensity(g, rows, rowY, v, tr) {
    var cellBytes = v.unit / COLS, cellW = PLOT_W / COLS, find = rowIndexFinder(rows);
    var cur = -1, counts = null, curRow = -1;
    var cells = [];
    function flush() {
      if (cur < 0) return;
      var best = 0, n = 0;
      for (var o = 0; o < counts.length; o++) { n += counts[o]; if (counts[o] > counts[best]) best = o; }
      cells.push({ row: curRow, col: cur % COLS, counts: counts, best: best, n: n });
    }
    for (var k = tr[0]; k < tr[1]; k++) {
      var i = find(T.phys[k]);
      if (i < 0) continue;
      var col = Math.floor((T.phys[k] - rows[i].lo) / cellBytes), key = i * COLS + col;
      if (key !== cur) { flush(); cur = key; curRow = i; counts = new Int32Array(ORIGINS.length); }
      counts[originOf[T.cls[k]]]++;
    }
    flush();
    var maxPerCell = Math.max(1, cellBytes / PAGE);
    cells.forEach(function (c) {
      var r = rows[c.row], x = xOf(r, r.lo + c.col * cellBytes, v.unit), y = rowY[c.row];
      var o = ORIGINS[c.best];
      var frac = Math.log(1 + c.n) / Math.log(1 + maxPerCell);
      var h = Math.max(3, (ROW_H - 2) * Math.min(1, 0.35 + 0.65 * frac));
      var rect = el("rect", { x: x, y: y + 1 + (ROW_H - 2 - h), width: cellW, height: h, fill: "url(#p-" + o + ")",
                              "class": "cell o-" + o, "data-n": c.n, "data-origin": o }, g);
      var parts = [];
      for (var j = 0; j < ORIGINS.length; j++) if (c.counts[j]) parts.push(num(c.counts[j]) + " " + ORIGINS[j]);
      titled(rect, num(c.n) + " table pages in " + hex(r.lo + c.col * cellBytes) + "+" + size(cellBytes) + ": " + parts.join(", "));
    });
  }

  function drawOverlay(g, rows, rowY, v, marks) {
    // the proposal's range and the refused memory
    function spans(lo, hi, fn) {
      rows.forEach(function (r, i) {
        var a = Math.max(lo, r.lo), b = Math.min(hi, r.hi);
        if (a < b) fn(r, i, a, b);
      });
    }
    spans(P.start, P.end, function (r, i, a, b) {
      el("rect", { x: xOf(r, a, v.unit), y: rowY[i] + 0.5, width: Math.max(1, xOf(r, b, v.unit) - xOf(r, a, v.unit)),
                   height: (r.hole ? HOLE_H : ROW_H) - 1, "class": "ov-range" }, g);
    });
    P.refusals.forEach(function (f) {
      if (!f.fatal) return;
      spans(f.start, f.end, function (r, i, a, b) {
        titled(el("rect", { x: xOf(r, a, v.unit), y: rowY[i] + 1, width: Math.max(1, xOf(r, b, v.unit) - xOf(r, a, v.unit)),
                            height: (r.hole ? HOLE_H : ROW_H) - 2, "class": "ov-refused", "data-rule": f.rule }, g),
               "refused: " + f.message);
      });
    });
    var find, k, i, r, pageW = PAGE / v.unit * PLOT_W, rr = Math.max(3.5, Math.min(6.5, pageW / 2 + 1));
    var a = lowerBound(FREED.phys, v.lo), b = lowerBound(FREED.phys, v.hi);
    if (marks) {
      find = rowIndexFinder(rows);
      for (k = a; k < b; k++) {
        i = find(FREED.phys[k]); if (i < 0) continue; r = rows[i];
        var x = xOf(r, FREED.phys[k], v.unit) + pageW / 2, y = rowY[i] + ROW_H / 2;
        var routine = P.freed.routines[FREED.cls[k]];
        // a ring around the mark, which stays visible inside it
        el("circle", { cx: x, cy: y, r: rr, "class": "ov-freed-halo" }, g);
        titled(el("circle", { cx: x, cy: y, r: rr, "class": "ov-freed", "data-phys": FREED.phys[k] }, g),
               "freed by " + routine + ": table " + hex(FREED.phys[k]));
      }
      find = rowIndexFinder(rows);
      var ka = lowerBound(keptPhys, v.lo), kb = lowerBound(keptPhys, v.hi);
      for (k = ka; k < kb; k++) {
        i = find(keptPhys[k]); if (i < 0) continue; r = rows[i];
        var kx = xOf(r, keptPhys[k], v.unit) + pageW / 2, ky = rowY[i] + ROW_H / 2, s = rr + 1.5;
        titled(el("rect", { x: kx - s, y: ky - s, width: 2 * s, height: 2 * s, "class": "ov-kept", "data-phys": keptPhys[k] }, g),
               "kept: " + KEPT[k].level + " table " + hex(KEPT[k].phys) + ": " + KEPT[k].reason);
      }
    } else {
      var cellBytes = v.unit / COLS, cellW = PLOT_W / COLS;
      function cellsOf(arr, lo, hi) {
        var out = {}, f = rowIndexFinder(rows);
        for (var q = lo; q < hi; q++) {
          var ri = f(arr[q]); if (ri < 0) continue;
          var key = ri * COLS + Math.floor((arr[q] - rows[ri].lo) / cellBytes);
          out[key] = (out[key] || 0) + 1;
        }
        return out;
      }
      var fc = cellsOf(FREED.phys, a, b);
      Object.keys(fc).forEach(function (key) {
        var ri = Math.floor(key / COLS), col = key % COLS, r = rows[ri];
        titled(el("rect", { x: xOf(r, r.lo + col * cellBytes, v.unit), y: rowY[ri] + 0.5, width: cellW, height: ROW_H - 1,
                            "class": "ov-cell-freed", "data-n": fc[key] }, g), num(fc[key]) + " table pages freed");
      });
      var kc = cellsOf(keptPhys, lowerBound(keptPhys, v.lo), lowerBound(keptPhys, v.hi));
      Object.keys(kc).forEach(function (key) {
        var ri = Math.floor(key / COLS), col = key % COLS, r = rows[ri];
        titled(el("rect", { x: xOf(r, r.lo + col * cellBytes, v.unit) - 1, y: rowY[ri] - 0.5, width: cellW + 2, height: ROW_H + 1,
                            "class": "ov-cell-kept", "data-n": kc[key] }, g), num(kc[key]) + " table pages kept");
      });
    }
  }

  function zoomInto(r) {
    if (r.hole) return;
    stack.push({ lo: r.lo, hi: r.hi, unit: childUnit(r) });
    draw();
    var first = wrap.querySelector(".row[tabindex]");
    if (first && document.activeElement && document.activeElement.classList && document.activeElement.classList.contains("row")) first.focus();
  }

  // -- details -------------------------------------------------------------------------------
  function details(k) {
    var c = CLASSES[T.cls[k]], phys = T.phys[k];
    var rows = [["Table page", hex(phys) + " (" + c.level + ")"],
                ["Roots", c.roots.map(function (ri) { return D.roots[ri].name; }).join(", ")],
                ["Origin", c.origin + (c.mismatch ? " (not what this kernel's allocation sites give it: a finding)" : "")],
                ["ctor", c.ctor === true ? "yes (typed as a page table)" : c.ctor === false ? "no" : "unknown"],
                ["ptlock", c.ptlock], ["Region", c.region]];
    var b = blockAt(phys);
    if (b) rows.push(["Memory block", "memory" + b.id + " (" + (b.early ? "boot" : "hot-added") + ", zone " + (b.zone || "?") + ")"]);
    if (P) {
      var f = findPhys(FREED.phys, phys);
      if (f >= 0) rows.push(["Removal", "freed by " + P.freed.routines[FREED.cls[f]]]);
      var kk = findPhys(keptPhys, phys);
      if (kk >= 0) rows.push(["Removal", "kept: " + KEPT[kk].reason]);
    }
    rows.push(["Evidence", '<span class="evidence">' + esc(c.evidence) + "</span>"]);
    document.getElementById("details-body").innerHTML = "<dl>" + rows.map(function (r) {
      return "<dt>" + esc(r[0]) + "</dt><dd>" + (r[0] === "Evidence" ? r[1] : esc(r[1])) + "</dd>";
    }).join("") + "</dl>";
  }
  function selectMark(m) {
    if (selectedEl) selectedEl.classList.remove("selected");
    selectedEl = m; m.classList.add("selected");
    details(+m.getAttribute("data-k"));
  }
  wrap.addEventListener("click", function (ev) { var t = ev.target; if (t.classList && t.classList.contains("mark")) selectMark(t); });
  wrap.addEventListener("mouseover", function (ev) { var t = ev.target; if (t.classList && t.classList.contains("mark") && !selectedEl) details(+t.getAttribute("data-k")); });
  wrap.addEventListener("keydown", function (ev) { var t = ev.target; if (t.classList && t.classList.contains("mark") && (ev.key === "Enter" || ev.key === " ")) { ev.preventDefault(); selectMark(t); } });

  // -- legend ---------------------------------------------------------------------------------
  function legend() {
    var counts = new Int32Array(ORIGINS.length), ctor = new Int32Array(ORIGINS.length);
    for (var k = 0; k < T.n; k++) { var o = originOf[T.cls[k]]; counts[o]++; if (CLASSES[T.cls[k]].ctor === true) ctor[o]++; }
    var html = '<table aria-label="Origins of page-table pages"><tbody>';
    ORIGINS.forEach(function (o, i) {
      var sw = '<svg width="34" height="16" viewBox="0 0 34 16" role="img" aria-label="' + esc(o + ": " + (ORIGIN_SHAPES[o] || "") + " mark, " + PATTERN_TEXT[o] + " pattern") + '">' +
        '<path class="mark o-' + o + (o === "buddy-ctor" ? " ctor" : " noctor") + '" d="' + shapePath(ORIGIN_SHAPES[o], 8, 8, 5) + '"/>' +
        '<rect x="18" y="2" width="14" height="12" fill="url(#p-' + o + ')" stroke="#999" stroke-width=".5"/></svg>';
      html += '<tr class="legend-origin" data-origin="' + o + '" data-count="' + counts[i] + '"><td>' + sw + "</td><td>" + esc(ORIGIN_TEXT[o] || o) +
        '</td><td class="num">' + num(counts[i]) + "</td></tr>";
    });
    html += "</tbody></table><p>Filled mark: the pgtable ctor ran (typed page); hollow: no ctor; dashed: unknown. " +
      "Density cells take the pattern of their most common origin; taller means more tables.</p>";
    html += '<table aria-label="Memory"><tbody>' +
      '<tr><td><svg width="34" height="14" aria-hidden="true"><rect width="34" height="14" fill="#e6e6e6" stroke="#999" stroke-width=".5"/></svg></td><td>boot memory (SECTION_IS_EARLY)</td></tr>' +
      '<tr><td><svg width="34" height="14" aria-hidden="true"><rect width="34" height="14" fill="url(#p-hot)" stroke="#999" stroke-width=".5"/></svg></td><td>hot-added memory</td></tr>' +
      '<tr><td><svg width="34" height="14" aria-hidden="true"><rect width="34" height="14" fill="url(#p-offline)" stroke="#999" stroke-width=".5"/></svg></td><td>offline block</td></tr>' +
      '<tr><td><svg width="34" height="14" aria-hidden="true"><rect x=".5" y=".5" width="33" height="13" fill="#fff" stroke="#bbb" stroke-dasharray="3 2"/></svg></td><td>hole (no memory block)</td></tr>';
    if (P) html += '<tr><td><svg width="34" height="14" aria-hidden="true"><circle cx="17" cy="7" r="5.5" fill="none" stroke="#000" stroke-width="1.6"/></svg></td><td>freed by the removal (ring)</td></tr>' +
      '<tr><td><svg width="34" height="14" aria-hidden="true"><rect x="11" y="1" width="12" height="12" fill="none" stroke="#000" stroke-dasharray="2 1.5"/></svg></td><td>kept, dashed square (reason on hover)</td></tr>' +
      '<tr><td><svg width="34" height="14" aria-hidden="true"><rect width="34" height="14" fill="url(#p-refused)" stroke="#D55E00"/></svg></td><td>refused by the kernel</td></tr>' +
      '<tr><td><svg width="34" height="14" aria-hidden="true"><rect x=".5" y=".5" width="33" height="13" fill="none" stroke="#000" stroke-dasharray="5 3"/></svg></td><td>proposed range</td></tr>';
    html += "</tbody></table>";
    var lb = document.getElementById("legend-body");
    lb.innerHTML = html;
    // the legend's swatches use the map's patterns: give them their own defs
    var hidden = el("svg", { width: 0, height: 0, "aria-hidden": "true", style: "position:absolute" });
    defs(hidden);
    lb.insertBefore(hidden, lb.firstChild);
  }

  // -- proposal ---------------------------------------------------------------------------------
  function proposal() {
    if (!P) { document.getElementById("overlay-toggle-label").hidden = true; return; }
    document.getElementById("proposal").hidden = false;
    var h = "<p>Remove <strong>" + esc(P.text) + "</strong> with the rules of <em>" + esc(P.policy) + "</em>.</p>";
    P.refusals.forEach(function (f) {
      h += '<div class="refusal" data-rule="' + esc(f.rule) + '">' + (f.fatal ? "<strong>Refused</strong>" : "Note") +
        " (" + esc(f.rule) + (f.block !== null && f.block !== undefined ? ", memory" + f.block : "") + ", " + hex(f.start) + "-" + hex(f.end - 1) +
        "): <code>" + esc(f.message) + "</code>" + (f.evidence ? "<br><small>" + esc(f.evidence) + "</small>" : "") + "</div>";
    });
    if (P.kernel_log && P.kernel_log.length)
      h += "<p>The kernel would print:</p><pre class=\"kernel-log\">" + P.kernel_log.map(esc).join("\n") + "</pre>";
    if (P.unchecked && P.unchecked.length)
      h += "<p>Not decided from this dump (never counted as passed): " + P.unchecked.map(function (u) {
        var b = u.blocks.length ? " (memory" + u.blocks[0] + (u.blocks.length > 1 ? " and " + num(u.blocks.length - 1) + " more blocks" : "") + ")" : "";
        return esc(u.rule + b + ": " + u.why); }).join("; ") + "</p>";
    if (!P.simulated) h += "<p>Not simulated: the kernel refuses this removal before any page table is touched.</p>";
    else {
      var lv = Object.keys(P.freed.levels).map(function (k) { return P.freed.levels[k] + " " + k; }).join(", ");
      h += '<table class="data-table"><tbody>' +
        "<tr><th>freed</th><td id=\"p-freed\">" + num(P.freed.count) + " table pages" + (lv ? " (" + lv + ")" : "") + ", " + size(P.data_freed) + " of mapped memmap</td></tr>" +
        "<tr><th>kept</th><td>" + num(P.kept.length) + " touched tables stay</td></tr>" +
        "<tr><th>NR_PAGETABLE</th><td id=\"p-nr\">" + (P.delta_nr_pagetable >= 0 ? "+" : "") + P.delta_nr_pagetable + " counter, " +
        (P.delta_typed_pages >= 0 ? "+" : "") + P.delta_typed_pages + " typed pages, drift " + (P.drift >= 0 ? "+" : "") + P.drift + "</td></tr>" +
        "<tr><th>verdict</th><td>" + (P.findings.length ? P.findings.length + " finding(s)" : "balanced: every freed table meets the dtor its ctor calls for") + "</td></tr>" +
        "</tbody></table>";
      if (P.kept.length) {
        h += '<h3>Kept tables</h3><table class="data-table"><thead><tr><th>table</th><th>level</th><th>origin</th><th>routine</th><th>reason</th></tr></thead><tbody>';
        P.kept.forEach(function (k) { h += "<tr><td>" + hex(k.phys) + "</td><td>" + esc(k.level) + "</td><td>" + esc(k.origin) + "</td><td>" + esc(k.routine) + "</td><td>" + esc(k.reason) + "</td></tr>"; });
        h += "</tbody></table>";
      }
      if (P.findings.length) {
        h += '<h3>Findings</h3><table class="data-table"><thead><tr><th>severity</th><th>rule</th><th>table</th><th>what happens</th></tr></thead><tbody>';
        P.findings.slice(0, 200).forEach(function (f) {
          h += '<tr><td class="sev-' + esc(f.severity) + '">' + esc(f.severity) + "</td><td>" + esc(f.rule) + "</td><td>" + hex(f.phys) + " " + esc(f.level) +
            "</td><td>" + esc(f.sentence) + (f.messages.length ? "<br><code>" + f.messages.map(esc).join("<br>") + "</code>" : "") + "</td></tr>";
        });
        if (P.findings.length > 200) h += "<tr><td colspan=\"4\">... " + num(P.findings.length - 200) + " more (mminspect simulate-remove --tables)</td></tr>";
        h += "</tbody></table>";
      }
      if (P.memmap && P.memmap.length) {
        h += "<p>Memmap (struct pages) of the removed sections: " + P.memmap.map(function (m) {
          return num(m.sections) + " section(s) (the first in " + esc(m.first) + "): " + esc(m.goes); }).join("; ") +
          (P.data_to_altmap ? "; " + size(P.data_to_altmap) + " handed back to an altmap" : "") + "</p>";
      }
      if (P.warnings.length) h += "<p>" + num(P.warnings.length) + " WARN_ON(s) the replayed code would hit, first: " + esc(P.warnings[0].routine + ": " + P.warnings[0].detail) + "</p>";
    }
    document.getElementById("proposal-body").innerHTML = h;
    var t = document.getElementById("overlay-toggle");
    t.addEventListener("change", function () { document.body.classList.toggle("overlay-off", !t.checked); });
  }

  // -- VA overview ---------------------------------------------------------------------------------
  var GRAN_FILL = { "page": "#0072B2", "contiguous": "#56B4E9", "block": "#009E73", "repeated": "#999999" };
  function vaOverview() {
    var h = "";
    D.roots.forEach(function (root) {
      h += '<div class="root-block" data-root="' + esc(root.name) + '"><h3>' + esc(root.name) + " (" + num(root.tables) + " table pages, root " + hex(root.phys) + ")</h3>";
      h += '<table class="data-table"><thead><tr><th>region</th><th>VA range</th><th class="num">size</th><th class="num">mapped</th><th>granularity</th><th>maps</th></tr></thead><tbody>';
      root.regions.forEach(function (g) {
        var bar = "", x = 0, parts = [];
        g.granularity.forEach(function (q) {
          var w = g.mapped ? q.bytes / g.mapped * 120 : 0;
          var label = q.level + " " + size(q.size) + " " + q.kind + (q.kind === "page" ? "s" : q.kind === "block" ? "s" : "") + ": " + size(q.bytes);
          bar += '<rect x="' + x + '" y="0" width="' + Math.max(w, 0.5) + '" height="12" fill="' + GRAN_FILL[q.kind] + '" opacity="' + (q.level === "PTE" ? 1 : 0.75) + '"><title>' + esc(label) + "</title></rect>";
          x += w; parts.push(esc(label));
        });
        var targets = Object.keys(g.targets).map(function (k) { return esc(k) + " " + size(g.targets[k]); }).join(", ");
        h += "<tr><td>" + esc(g.name) + "</td><td><code>" + esc(g.start) + "-" + esc(g.end) + "</code></td><td class=\"num\">" + size(g.size) +
          '</td><td class="num">' + (g.mapped ? size(g.mapped) : "nothing") + "</td><td>" +
          (parts.length ? '<svg class="gran-bar" width="122" height="12" role="img" aria-label="' + parts.join("; ") + '">' + bar + "</svg><br>" + parts.join("<br>") : "") +
          "</td><td>" + (targets || "") + "</td></tr>";
      });
      h += "</tbody></table>";
      if (root.problems.length) h += "<p>" + root.problems.map(esc).join("<br>") + "</p>";
      h += "</div>";
    });
    h += "<p>Granularity bars: dark blue pages, light blue contiguous runs, green blocks; the text beside each lists the same bytes.</p>";
    document.getElementById("va-body").innerHTML = h;
  }

  function findings() {
    var f = D.findings;
    var h = f.length ? '<table class="data-table"><thead><tr><th>severity</th><th>kind</th><th>root</th><th>table</th><th>finding</th></tr></thead><tbody>' +
      f.slice(0, 500).map(function (x) { return '<tr><td class="sev-' + esc(x.severity) + '">' + esc(x.severity) + "</td><td>" + esc(x.kind) + "</td><td>" + esc(x.root) + "</td><td>" + hex(x.phys) + " " + esc(x.level) + "</td><td>" + esc(x.sentence) + "</td></tr>"; }).join("") +
      "</tbody></table>" : "<p>No findings: every table page has the origin this kernel's allocation sites give it.</p>";
    document.getElementById("findings-body").innerHTML = h;
  }

  function subtitle() {
    var k = D.kernel, n = T.n;
    document.getElementById("subtitle").textContent = (k.osrelease || "kernel") + " · " + k.regime_text + " · " +
      num(blocks.length) + " memory blocks of " + size(BLOCK || 0) + " · " + num(n) + " page-table pages from " +
      D.roots.map(function (r) { return r.name; }).join(", ");
  }

  document.getElementById("zoom-out").addEventListener("click", function () { stack.length = 1; draw(); });
  document.getElementById("zoom-up").addEventListener("click", function () { if (stack.length > 1) stack.pop(); draw(); });

  var t0 = performance.now();
  stack.push({ lo: memLo, hi: memHi, unit: initialUnit(memLo, memHi) });
  subtitle();
  legend();
  proposal();
  draw();
  vaOverview();
  findings();
  document.body.setAttribute("data-ready", "1");
  document.body.setAttribute("data-render-ms", (performance.now() - t0).toFixed(1));
  // for scripts and tests: the same API a user drives with clicks
  window.mminspectMap = {
    data: D, tables: T, freed: FREED,
    zoom: function (lo, hi) { var r = { lo: lo, hi: hi, hole: false, blocks: blocksIn(lo, hi) }; zoomInto(r); },
    // zoom one level into the row holding physical address pa
    zoomAt: function (pa) {
      var v = currentView(), rows = makeRows(v.lo, v.hi, v.unit);
      for (var i = 0; i < rows.length; i++) if (rows[i].lo <= pa && pa < rows[i].hi) { zoomInto(rows[i]); return true; }
      return false;
    },
    // select the mark of the table page at pa (as a click does)
    select: function (pa) {
      var m = wrap.querySelector('.mark[data-phys="' + pa + '"]');
      if (m) selectMark(m);
      return !!m;
    },
    reset: function () { stack.length = 1; draw(); }
  };
})();
