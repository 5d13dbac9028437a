"""The JSON schemas and the snapshot format, pinned on a synthetic kernel:
every key path of the walk, classify, audit and simulate JSON and of a
snapshot's header, with the type of its value, and the snapshot's arrays
(``tests/unit/schemas/NAME.txt``, one ``path: type`` per line; ``[]`` is an
element of a list). A change to a format shows here: change the schema's
version and this pin together.

The kernel is a small synthetic server (mminspect.synthetic.server): 4 GiB
page-granular, the top 2 GiB hot-added, no DWARF.
"""

import io
import json
import pathlib
import zipfile

import numpy as np
import pytest

import mminspect
from mminspect.classify import audit, classify_roots, resolve_roots
from mminspect.hotremove import Proposal, capture_snapshot, select_policy, simulate
from mminspect.hotremove.snapshot import SCHEMA as SNAPSHOT_SCHEMA
from mminspect.report.classify import audit_json, classify_json
from mminspect.report.simulate import simulate_json
from mminspect.report.walk import walk_json
from mminspect.synthetic import REGIMES_BY_NAME
from mminspect.synthetic.server import make_server_kernel, write_server_vmcore
from mminspect.walk import walk

GiB = 1 << 30
PINS = pathlib.Path(__file__).parent / "schemas"
SCHEMAS = {"walk": "mminspect.walk/1", "classify": "mminspect.classify/1", "audit": "mminspect.audit/1",
           "simulate": "mminspect.simulate/1"}
#: Measurements, not format: their keys are pinned, not what they hold.
VOLATILE = ("stats",)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    built = make_server_kernel(REGIMES_BY_NAME["4k-va48"], 4 * GiB, hotadd=2 * GiB)
    path = tmp_path_factory.mktemp("schemas") / "vmcore"
    write_server_vmcore(path, built)
    return mminspect.open(core=str(path)), built


@pytest.fixture(scope="module")
def kernel(server):
    return server[0]


def key_paths(value, path: str = "") -> set:
    """Every ``path: type`` of a JSON value."""
    if isinstance(value, dict):
        out = set()
        for k, v in value.items():
            sub = f"{path}.{k}" if path else k
            out |= {f"{sub}: {{}}"} if k in VOLATILE else key_paths(v, sub)
        return out or {f"{path}: {{}}"}
    if isinstance(value, list):
        out = set()
        for v in value:
            out |= key_paths(v, f"{path}[]")
        return out or {f"{path}: []"}
    return {f"{path}: {type(value).__name__}"}


def _json(name: str, k, ram) -> dict:
    buf = io.StringIO()
    if name == "walk":
        walk_json(walk(k, k.root("init_mm")), buf, tables=True)
    elif name == "classify":
        classify_json(classify_roots(k, resolve_roots(k, "all")), buf)
    elif name == "audit":
        audit_json(audit(k), buf)
    else:
        snap = capture_snapshot(k)
        end = max(a + n for a, n in ram)
        result = simulate(snap, Proposal(end - GiB, end), select_policy(snap.era), force=True)
        simulate_json(result, snap, buf)
    return json.loads(buf.getvalue())


def test_key_paths():
    assert key_paths({"a": [{"b": 1}, {"b": None}], "c": {}, "stats": {"x": 1.5}}) == {
        "a[].b: int", "a[].b: NoneType", "c: {}", "stats: {}"}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_is_pinned(server, name):
    kernel, built = server
    got = _json(name, kernel, built.ram)
    assert got["schema"] == SCHEMAS[name]
    pinned = set(PINS.joinpath(f"{name}.txt").read_text().splitlines())
    paths = key_paths(got)
    assert sorted(paths - pinned) == [] and sorted(pinned - paths) == []


def test_snapshot_format_is_pinned(kernel, tmp_path):
    path = tmp_path / "s.npz"
    capture_snapshot(kernel).save(str(path))
    with zipfile.ZipFile(path) as z:
        members = sorted(z.namelist())
    with np.load(path) as npz:
        header = json.loads(bytes(npz["header"]).decode())
    assert header["schema"] == SNAPSHOT_SCHEMA == "mminspect.snapshot/2"
    got = key_paths(header) | {f"npz member: {m}" for m in members}
    pinned = set(PINS.joinpath("snapshot.txt").read_text().splitlines())
    assert sorted(got - pinned) == [] and sorted(pinned - got) == []
