"""The rule registry: every public module ``rules/<name>.py`` exporting ``RULE = RuleSpec(...)`` is a rule.

The registry ``RULES`` (name → :class:`localrules.core.RuleSpec`) feeds the CLI's ``rule=<name>`` choices, the
unknown-rule error and the contract test over all rules, so adding a rule is one file here plus its test.
A rule's CLI name is its module's name; ``aliases`` add short names (``ff``, ``pc``, ``ccl``).

Always import rules as ``localrules.rules.<name>`` (never ``rules.<name>``): a second import path would create a
second module object and register every rule twice.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil

from localrules.core import RuleSpec


def _discover() -> dict[str, RuleSpec]:
    reg: dict[str, RuleSpec] = {}
    for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if m.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{m.name}")
        spec = getattr(mod, "RULE", None)
        if spec is None:
            continue
        if spec.name != m.name:
            raise RuntimeError(f"rules/{m.name}.py exports RULE named {spec.name!r}; the name must be the module's")
        if spec.name in reg:
            raise RuntimeError(f"rule {spec.name!r} registered twice (imported as both rules.* and localrules.rules.*?)")
        reg[spec.name] = spec
    return reg


RULES: dict[str, RuleSpec] = _discover()
ALIASES: dict[str, str] = {a: s.name for s in RULES.values() for a in s.aliases}


def resolve(name: str) -> RuleSpec:
    """The rule called ``name`` (or one of its aliases); an unknown name raises one clear line."""
    if name in RULES:
        return RULES[name]
    if name in ALIASES:
        return RULES[ALIASES[name]]
    choices = sorted(RULES) + sorted(ALIASES)
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise KeyError(f"unknown rule {name!r}.{hint} Known rules: {', '.join(sorted(RULES))}")


def name_of(cfg) -> str:
    """The registered name of a rule config instance."""
    for s in RULES.values():
        if type(cfg) is s.config:
            return s.name
    raise TypeError(f"not a rule config: {cfg!r}")
