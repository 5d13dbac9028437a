"""
Hot-remove policies
-------------------

A policy is the freeing code of one kernel era, replayed by the engine: which
routines run over which ranges, and whether each freed table page gets a
pgtable dtor. Policies register themselves through the entry-point group
``mminspect.policies`` (ours too, see pyproject.toml), so a kernel developer
models a patch by shipping a module with a :class:`Policy` subclass and a
``register()`` that returns it (see plugins/example_policy.py).

A policy declares what it needs to know of the kernel it runs against through
:class:`Era` facts; the simulator fills them from the snapshot.
"""

from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Dict, List, Optional, Tuple, Type

from mminspect.errors import MMInspectError
from mminspect.files import check_input

__all__ = ("Era", "Policy", "available_policies", "get_policy", "load_plugin_file", "select_policy")

GROUP = "mminspect.policies"

#: Spellings of yes and no a yes/no option accepts.
_BOOLEAN = {"yes": "yes", "y": "yes", "true": "yes", "1": "yes", "on": "yes",
            "no": "no", "n": "no", "false": "no", "0": "no", "off": "no"}

#: Policies registered from plugin files loaded in this process.
_loaded: Dict[str, Type["Policy"]] = {}


@dataclass
class Era:
    """Facts about the dumped kernel that decide what a free or a dtor does.

    Each fact carries the evidence that decided it (``evidence[name]``).
    """

    #: "pgty" (v6.12+: PGTY_table in the top byte), "inverted" (v4.18..v6.11)
    page_type: str = "inverted"
    #: v6.16+: __create_pgd_mapping() ctors hot-added linear-map tables
    #: (pgd_pgtable_alloc_init_mm, no ptlock for init_mm).
    init_mm_ctor: bool = False
    #: v6.14+: ptlock_free() is NULL-safe.
    ptlock_free_null_safe: bool = False
    #: v6.17+: page freeing clears any page type (2dfcd1608f3a9).
    free_clears_type: bool = False
    #: ALLOC_SPLIT_PTLOCKS: sizeof(spinlock_t) > sizeof(long).
    alloc_split: bool = False
    #: CONFIG_DEBUG_VM: VM_BUG_ON_PAGE is live.
    debug_vm: bool = False
    #: The free-time bad-page checks run (always before v6.10; then the
    #: check_pages_enabled static key).
    check_pages: bool = True
    #: arm64 refuses to offline boot memory (prevent_bootmem_remove_notifier, v5.7+).
    bootmem_notifier: bool = True
    #: arm64's memory notifier also refuses an offline whose linear-map or
    #: vmemmap edges fall inside a leaf ("arm64/mm: Reject memory removal
    #: that splits a kernel leaf mapping", 2026). None: not known (a
    #: snapshot from before this fact was captured, or no code to read).
    leaf_split_notifier: Optional[bool] = None
    #: Where a memory block keeps the size of its own memmap
    #: (memmap_on_memory): "nr_vmemmap_pages" (v5.15..v6.5, one block per
    #: hot-add), "altmap" (v6.6+: struct vmem_altmap *), "none"; None: unknown.
    block_memmap: Optional[str] = None
    #: Each block of a larger hot-add gets its own altmap, and removal runs
    #: arch_remove_memory() block by block (remove_memory_blocks_and_altmaps()).
    altmap_per_block: Optional[bool] = None
    #: The memory_hotplug.memmap_on_memory parameter as the kernel holds it
    #: ("0", "1", "force"); None: unknown.
    memmap_on_memory: Optional[str] = None
    evidence: Dict[str, str] = field(default_factory=dict)


class Policy:
    """The freeing rules of one kernel era. Subclasses override ``remove``
    (run the engine) and ``dtor_on_free`` (does a freed table get a dtor)."""

    #: Short name for ``--policy``.
    name = ""
    #: One line for ``--help`` and reports.
    summary = ""
    #: Whether the kernel refuses boot memory and checks block states.
    refuses_boot_memory = True
    #: Whether PG_reserved tables go back through free_reserved_page()
    #: (the 2017 RFC) rather than free_pages() (mainline).
    frees_reserved_pages = False

    #: The options this policy takes: name -> the values it accepts (the
    #: first is the default). ``--policy-option`` refuses anything else.
    option_values: Dict[str, Tuple[str, ...]] = {}

    def __init__(self, era: Era, options: Optional[Dict[str, str]] = None) -> None:
        self.era = era
        self.options = self.check_options(options or {})

    @classmethod
    def check_options(cls, options: Dict[str, str]) -> Dict[str, str]:
        """``options`` with each value in its canonical spelling (``true``,
        ``1``, ``on`` are ``yes`` for a yes/no option).

        :raises MMInspectError: for a key the policy does not take or a value
            it does not accept, listing the valid ones
        """
        valid = "; ".join(f"{k}={'|'.join(v)}" for k, v in sorted(cls.option_values.items()))
        out = {}
        for key, value in options.items():
            values = cls.option_values.get(key)
            if values is None:
                raise MMInspectError(f"policy {cls.name} has no option {key!r}; "
                                     + (f"its options: {valid}" if valid else "it takes no options"))
            v = str(value).strip().lower()
            if set(values) == {"yes", "no"}:
                v = _BOOLEAN.get(v, v)
            if v not in values:
                raise MMInspectError(f"policy {cls.name}: {key}={value!r} is not one of {', '.join(values)}")
            out[key] = v
        return out

    @classmethod
    def applies_to(cls, era: Era) -> int:
        """How well this policy fits a dumped kernel: 0 never, higher better."""
        return 0

    def remove(self, sim) -> None:
        """Replay the removal of ``sim.proposal`` on ``sim.state``."""
        raise NotImplementedError

    def dtor_on_free(self, routine: str, table) -> bool:
        """Whether freeing ``table`` through ``routine`` runs a pgtable dtor."""
        return False

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.name}" + (f" ({opts})" if opts else "") + f": {self.summary}"


def available_policies() -> Dict[str, Type[Policy]]:
    """Every registered policy by name (entry points in ``mminspect.policies``)."""
    found: Dict[str, Type[Policy]] = {}
    for ep in entry_points(group=GROUP):
        try:
            result = ep.load()()
        except Exception as e:  # a broken third-party plugin must not break the tool
            why = str(e).splitlines()[0] if str(e).strip() else "it stopped without saying why"
            raise MMInspectError(f"installed policy plugin {ep.name!r} ({ep.value}) failed to load: {why}") from None
        for cls in result if isinstance(result, (list, tuple)) else [result]:
            found[cls.name] = cls
    found.update(_loaded)
    if not found:
        raise MMInspectError("no hot-remove policies registered (is mminspect installed?)")
    return found


def load_plugin_file(path: str) -> List[str]:
    """Load a policy plugin from a Python file (the same ``register()`` an
    installed plugin's entry point names) and return the policy names."""
    import importlib.util
    import os

    check_input(path, "plugin file")
    name = "mminspect_plugin_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise MMInspectError(f"{path}: not a Python file (a plugin is a .py file with register())")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        register = getattr(module, "register", None)
        if not callable(register):
            raise MMInspectError(f"{path}: plugin has no register() function")
        result = register()
    except MMInspectError:
        raise
    except SyntaxError as e:
        raise MMInspectError(f"{path}: plugin is not valid Python (line {e.lineno}: {e.msg})") from None
    except (Exception, SystemExit) as e:  # the plugin's own failure, in its words
        what = str(e).splitlines()[0] if str(e).strip() else "it stopped without saying why"
        if isinstance(e, SystemExit):
            what = "it called sys.exit()"
        raise MMInspectError(f"{path}: plugin failed to load: {what}") from None
    return _register(path, result)


def _register(source: str, result) -> List[str]:
    """Record the policies a plugin's register() returned, after checking
    each is a :class:`Policy` subclass with a name."""
    names = []
    for cls in result if isinstance(result, (list, tuple)) else [result]:
        if not (isinstance(cls, type) and issubclass(cls, Policy)):
            raise MMInspectError(f"{source}: register() returned {str(cls)[:60]!r}, not a Policy subclass")
        if not isinstance(cls.name, str) or not cls.name.strip():
            raise MMInspectError(f"{source}: policy {cls.__name__} has no name")
        _loaded[cls.name] = cls
        names.append(cls.name)
    return names


def get_policy(name: str, era: Era, options: Optional[Dict[str, str]] = None) -> Policy:
    policies = available_policies()
    if name not in policies:
        raise MMInspectError(f"unknown policy {name!r}; available: {', '.join(sorted(policies))}")
    return policies[name](era, options)


def select_policy(era: Era, options: Optional[Dict[str, str]] = None) -> Policy:
    """The registered policy that best fits the dumped kernel."""
    ranked: List = sorted(
        ((cls.applies_to(era), name, cls) for name, cls in available_policies().items()),
        key=lambda x: (-x[0], x[1]),
    )
    score, _, cls = ranked[0]
    if score <= 0:
        raise MMInspectError("no policy fits this kernel; choose one with --policy")
    return cls(era, options)
