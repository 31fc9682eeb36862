"""Hydra-style ``key=value`` overrides on typed frozen dataclasses.

Grammar (tokens in any order)::

    rule=softhebb                 choose a registered config for a "choice" field (rule, arch, task, compose parts)
    rule.t_invert=0.3             set a field of the chosen config (dots go down nested dataclasses)
    arch.hidden=[1000,1000]       tuples and lists as [a,b,...]; true/false for bools; none for Optional
    preset=<name>                 start from a preset of sweeps/ (other tokens override it)
    sweep=sweeps/<file>.toml      expand a grid (see localrules.sweep)

Choice tokens are applied before field tokens and outer before inner, so ``rule.t_invert=0.3 rule=softhebb``
works. Every mistake raises :class:`CLIError` with one line that names the problem and the fix (the closest valid
key for a typo, the known names for an unknown choice, the expected type for a bad value).

Why not ``tyro.cli`` directly: tyro parses ``--flag value`` syntax and prints multi-line boxed errors; the lab's
promise is ``key=value`` tokens and one-line errors with suggestions. tyro is still the source of the attribute
docstrings shown by ``--help``.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any, Callable

from localrules import architectures
from localrules import rules as rules_registry
from localrules import tasks as tasks_registry


class CLIError(ValueError):
    """A bad command line: the message is one line naming the problem and the fix."""


# A "choice" field holds one config among a registry's; these are recognised by field name.
def _choices(field: str) -> dict[str, type] | None:
    leaf = field.rsplit(".", 1)[-1]
    if leaf in ("rule", "hidden_rule", "head_rule"):
        out = {n: s.config for n, s in rules_registry.RULES.items()}
        out.update({a: rules_registry.RULES[n].config for a, n in rules_registry.ALIASES.items()})
        return out
    if leaf == "arch":
        return {n: s.config for n, s in architectures.ARCHS.items()}
    if leaf == "task":
        out = {n: s.config for n, s in tasks_registry.TASKS.items()}
        out.update({a: tasks_registry.TASKS[n].config for a, n in tasks_registry.ALIASES.items()})
        return out
    return None


def _kind(field: str) -> str:
    return {"rule": "rule", "hidden_rule": "rule", "head_rule": "rule", "arch": "architecture",
            "task": "task"}[field.rsplit(".", 1)[-1]]


def field_doc(cls: type, name: str) -> str:
    try:
        from tyro import _docstrings

        return (_docstrings.get_field_docstring(cls, name, ()) or "").strip()
    except Exception:  # tyro internals moved: help still lists fields and defaults
        return ""


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:
        return {f.name: f.type for f in dataclasses.fields(cls)}


def all_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Every settable dotted key of a config instance (the chosen sub-configs included)."""
    out = []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        key = prefix + f.name
        out.append(key)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            out.extend(all_keys(v, key + "."))
    return out


def _parse_scalar(text: str, tp: Any, key: str):
    t = text.strip()
    origin = typing.get_origin(tp)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if t.lower() in ("none", "null", "") and len(args) < len(typing.get_args(tp)):
            return None
        errors = []
        for a in args:
            try:
                return _parse_scalar(t, a, key)
            except CLIError as e:
                errors.append(str(e))
        raise CLIError(errors[0] if errors else f"{key}={text!r}: cannot parse")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        for a in allowed:
            if str(a) == t:
                return a
        raise CLIError(f"{key}={text!r}: choose one of {', '.join(map(str, allowed))}")
    if origin in (tuple, list):
        args = typing.get_args(tp)
        elem = args[0] if args else str
        if not (t.startswith("[") and t.endswith("]")) and not (t.startswith("(") and t.endswith(")")):
            items = [t] if t else []
        else:
            inner = t[1:-1].strip()
            items = [s for s in (x.strip() for x in inner.split(",")) if s] if inner else []
        vals = [_parse_scalar(s, elem, key) for s in items]
        return tuple(vals) if origin is tuple else vals
    if tp is bool:
        if t.lower() in ("true", "1", "yes", "on"):
            return True
        if t.lower() in ("false", "0", "no", "off"):
            return False
        raise CLIError(f"{key}={text!r}: expected true or false")
    if tp is int:
        try:
            f = float(t)
        except ValueError:
            raise CLIError(f"{key}={text!r}: expected an integer, e.g. {key}=3") from None
        if f != int(f):
            raise CLIError(f"{key}={text!r}: expected an integer, e.g. {key}={int(f)}")
        return int(f)
    if tp is float:
        try:
            return float(t)
        except ValueError:
            raise CLIError(f"{key}={text!r}: expected a number, e.g. {key}=0.001") from None
    if tp is str:
        return t
    if tp is Any:
        return t
    raise CLIError(f"{key}: fields of type {tp} cannot be set from the command line")


def coerce(value: Any, tp: Any, key: str):
    """Coerce a Python value (from a TOML sweep file) or a string (from the command line) to ``tp``."""
    if isinstance(value, str):
        return _parse_scalar(value, tp, key)
    origin = typing.get_origin(tp)
    if origin in (tuple, list) and isinstance(value, (list, tuple)):
        elem = (typing.get_args(tp) or (Any,))[0]
        vals = [coerce(v, elem, key) for v in value]
        return tuple(vals) if origin is tuple else vals
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is int and isinstance(value, float) and value == int(value):
        return int(value)
    if tp is bool and isinstance(value, bool):
        return value
    if origin is typing.Union:
        if value is None and type(None) in typing.get_args(tp):
            return None
        for a in typing.get_args(tp):
            if a is type(None):
                continue
            try:
                return coerce(value, a, key)
            except CLIError:
                pass
    if tp is Any:
        return value
    return _parse_scalar(str(value), tp, key)


def _set(cfg: Any, path: list[str], raw: Any, full_key: str) -> Any:
    name = path[0]
    names = [f.name for f in dataclasses.fields(cfg)]
    if name not in names:
        raise _unknown_key(cfg, full_key, path)
    cur = getattr(cfg, name)
    here = full_key[: len(full_key) - len(".".join(path)) + len(name)]
    if len(path) > 1:
        if cur is None:  # an unset Optional[<dataclass>] group: setting one of its fields creates it
            cls = _optional_dataclass(_hints(type(cfg)).get(name))
            if cls is not None:
                cur = cls()
        if not (dataclasses.is_dataclass(cur) and not isinstance(cur, type)):
            raise CLIError(f"{full_key}: {here} is a value, not a group; set it as {here}=...")
        return dataclasses.replace(cfg, **{name: _set(cur, path[1:], raw, full_key)})
    choices = _choices(here)
    if choices is not None:
        if not isinstance(raw, str):
            raise CLIError(f"{full_key}: give the {_kind(here)} by name, e.g. {full_key}={next(iter(choices))}")
        if raw not in choices:
            close = difflib.get_close_matches(raw, list(choices), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            primary = sorted(n for n, c in choices.items() if _is_primary(here, n))
            raise CLIError(f"unknown {_kind(here)} {raw!r} in {full_key}={raw}.{hint} "
                           f"Known {_kind(here)}s: {', '.join(primary)}")
        new = choices[raw]()
        if type(cur) is type(new):  # re-selecting the same choice keeps earlier settings (e.g. from a preset)
            return cfg
        return dataclasses.replace(cfg, **{name: new})
    if dataclasses.is_dataclass(cur) and not isinstance(cur, type):
        raise CLIError(f"{full_key}: {here} is a group of settings; set its fields as {here}.<field>=...")
    tp = _hints(type(cfg)).get(name, Any)
    return dataclasses.replace(cfg, **{name: coerce(raw, tp, full_key)})


def _optional_dataclass(tp) -> type | None:
    for a in typing.get_args(tp) or ():
        if dataclasses.is_dataclass(a):
            return a
    return None


def _is_primary(field: str, name: str) -> bool:
    kind = _kind(field)
    if kind == "rule":
        return name in rules_registry.RULES
    if kind == "task":
        return name in tasks_registry.TASKS
    return True


def _owners(group: str, rel: str) -> list[str]:
    """Registered choices of the choice field ``group`` (e.g. ``arch``) whose config has the dotted key ``rel``."""
    choices = _choices(group) if group else None
    if not choices:
        return []
    out = []
    for n, cls in choices.items():
        if not _is_primary(group, n):
            continue
        try:
            if rel in all_keys(cls()):
                out.append(n)
        except Exception:  # a config without defaults cannot be listed; it is simply not suggested
            pass
    return sorted(out)


def _unknown_key(cfg: Any, full_key: str, path: list[str]) -> CLIError:
    prefix = full_key[: len(full_key) - len(".".join(path))]
    group, rel = prefix[:-1], ".".join(path)
    # a setting of another rule/arch/task than the chosen one (arch.channels on arch=mlp): name its owners
    owners = _owners(group, rel)
    if owners:
        chosen = [n for n, c in (_choices(group) or {}).items() if type(cfg) is c and _is_primary(group, n)]
        here = f" for {group}={chosen[0]}" if chosen else ""
        return CLIError(f"unknown key {full_key!r}{here}: it is a setting of {_kind(group)} "
                        f"{', '.join(owners)}; choose one with {group}=<name> or drop {full_key}")
    # a top-level key that lives in a group (data_dir= for task.data_dir=)
    if not prefix:
        for f in dataclasses.fields(cfg):
            owners = _owners(f.name, rel)
            if owners:
                return CLIError(f"unknown key {full_key!r}. Did you mean '{f.name}.{rel}' (a setting of "
                                f"{_kind(f.name)} {', '.join(owners)})?")
    keys = all_keys(cfg, prefix)
    close = difflib.get_close_matches(full_key, keys, n=1, cutoff=0.5)
    if not close:  # maybe the leaf name alone is close to a key somewhere
        leaf = path[-1]
        close = [k for k in keys if difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1]], n=1, cutoff=0.75)][:1]
    hint = f" Did you mean {close[0]!r}?" if close else " Run with --help to list every key."
    return CLIError(f"unknown key {full_key!r}.{hint}")


def split_token(tok: str) -> tuple[str, str]:
    if "=" not in tok:
        raise CLIError(f"cannot read {tok!r}: write overrides as key=value, e.g. rule=backprop optimizer.lr=1e-3")
    k, v = tok.split("=", 1)
    k = k.strip()
    if k.startswith("--"):
        k = k[2:]
    if not k:
        raise CLIError(f"cannot read {tok!r}: the key before '=' is empty")
    return k, v


def apply_overrides(cfg: Any, items: list[tuple[str, Any]]) -> Any:
    """Apply (key, value) pairs: choice fields first, outer before inner; then ordinary fields in order."""

    def is_choice(k):
        return _choices(k) is not None

    choice_items = sorted([kv for kv in items if is_choice(kv[0])], key=lambda kv: kv[0].count("."))
    other = [kv for kv in items if not is_choice(kv[0])]
    for k, v in choice_items:
        cfg = _set(cfg, k.split("."), v, k)
    cfg = _rule_default_arch(cfg, chose_rule=any(k == "rule" for k, _ in choice_items),
                             chose_arch=any(k == "arch" for k, _ in choice_items))
    for k, v in other:
        cfg = _set(cfg, k.split("."), v, k)
    return cfg


def _rule_default_arch(cfg: Any, chose_rule: bool, chose_arch: bool) -> Any:
    """A rule chosen without ``arch=`` brings its own default architecture, if its RuleSpec names one."""
    if not chose_rule or chose_arch or not {"rule", "arch"} <= {f.name for f in dataclasses.fields(cfg)}:
        return cfg
    spec = rules_registry.RULES[rules_registry.name_of(cfg.rule)]
    if spec.default_arch is None:
        return cfg
    return dataclasses.replace(cfg, arch=spec.default_arch())


def render_help(cfg: Any, title: str) -> str:
    """Every field with its value, type and docstring, the chosen sub-configs expanded, and the registries."""
    lines = [title, ""]

    def walk(c, prefix, depth):
        hints = _hints(type(c))
        for f in dataclasses.fields(c):
            v = getattr(c, f.name)
            key = prefix + f.name
            doc = field_doc(type(c), f.name)
            if dataclasses.is_dataclass(v) and not isinstance(v, type):
                choice = _choices(key)
                chosen = ""
                if choice is not None:
                    names = [n for n, cls in choice.items() if cls is type(v) and _is_primary(key, n)]
                    chosen = f"={names[0]}" if names else ""
                lines.append(f"{'  ' * depth}{key}{chosen}    {doc}")
                walk(v, key + ".", depth + 1)
            else:
                tp = hints.get(f.name, Any)
                tn = getattr(tp, "__name__", str(tp)).replace("typing.", "")
                shown = list(v) if isinstance(v, tuple) else v
                lines.append(f"{'  ' * depth}{key}={shown!s:<12} ({tn})  {doc}")

    walk(cfg, "", 0)
    lines += ["", "Rules (rule=<name>):"]
    for n, s in sorted(rules_registry.RULES.items()):
        al = f" (aliases: {', '.join(s.aliases)})" if s.aliases else ""
        lines.append(f"  {n}{al}: {s.doc}")
        for f in dataclasses.fields(s.config):
            lines.append(f"      rule.{f.name}={getattr(s.config(), f.name)!s}  {field_doc(s.config, f.name)}")
    lines += ["", "Architectures (arch=<name>):"]
    for n, s in sorted(architectures.ARCHS.items()):
        lines.append(f"  {n}: {(s.doc or '').strip().splitlines()[0] if s.doc else ''}")
    lines += ["", "Tasks (task=<name>):"]
    for n, s in sorted(tasks_registry.TASKS.items()):
        lines.append(f"  {n}: {s.doc}")
    return "\n".join(lines)
