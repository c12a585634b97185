#!/usr/bin/env python3
"""Structure checks run by `make test`; exit 1 with what is wrong.

1. Layers: within each listed crate, the modules that share a parent (the top-level modules of
   `src/`, and the children of every module directory) must not import each other in a cycle.
   Paths are read as text, as rustc would resolve them: `crate::a::b`, `super::x` and
   `self::x`, grouped imports (`use crate::{a, b::c}`) included; test modules
   (`#[cfg(test)]` to the end of a file) and comments are skipped.
2. Declared layers: when `src/lib.rs` lists its top-level modules in numbered layers under
   `# Layout` (`//! 1. ...` then `//!    - [`module`]: ...`), a module imports only from its own
   layer or the ones listed before it, and every top-level module is listed.
3. No `#[allow(clippy::too_many_arguments)]`: group what travels together in a struct.

usage: check-structure.py CRATE_SRC_DIR...
"""
import os
import re
import sys
from collections import defaultdict

PATH = re.compile(r"\b(crate|self|super)((?:::(?:super|self|[A-Za-z_][A-Za-z0-9_]*))*)(::\{[^}]*\})?")
COMMENT = re.compile(r"//[^\n]*")


def module_path(src, file):
    rel = os.path.relpath(file, src)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return rel


def references(src, file):
    """Absolute module paths (lists of names) that `file` names."""
    text = open(file, encoding="utf-8").read()
    cut = text.find("#[cfg(test)]")
    if cut >= 0:
        text = text[:cut]
    text = COMMENT.sub("", text)
    here = module_path(src, file)
    out = []
    for root, rest, group in PATH.findall(text):
        base = [] if root == "crate" else list(here)
        if root == "super":
            base = base[:-1]
        parts = [p for p in rest.split("::") if p]
        for p in parts:
            if p == "super":
                base = base[:-1]
            elif p != "self":
                base.append(p)
        if group:
            for item in group[3:-1].split(","):
                first = item.strip().split("::")[0].strip()
                if first and first not in ("self", "*"):
                    out.append(base + [first])
        out.append(base)
    return here, out


def cycles(nodes, edges):
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            strong(v)
    return found


LAYER = re.compile(r"^//! (\d+)\. ")
LAYER_MODULE = re.compile(r"^//!\s+- \[`(\w+)`\]")


def declared_layers(src):
    """module -> layer number, from the `# Layout` list of `src/lib.rs` (empty if none)."""
    lib = os.path.join(src, "lib.rs")
    if not os.path.exists(lib):
        return {}
    layers, current = {}, None
    for line in open(lib, encoding="utf-8"):
        if not line.startswith("//!"):
            break
        m = LAYER.match(line)
        if m:
            current = int(m.group(1))
            continue
        m = LAYER_MODULE.match(line)
        if m and current is not None:
            layers[m.group(1)] = current
    return layers


def check_layers(src, files, refs):
    layers = declared_layers(src)
    if not layers:
        return []
    problems = []
    top = {module_path(src, f)[0] for f in files if module_path(src, f) and os.path.basename(f) != "main.rs"}
    for module in sorted(top - set(layers)):
        problems.append(f"{src}/lib.rs: module {module} is in no layer of the # Layout list")
    seen = set()
    for here, paths in refs:
        if not here or here[0] not in layers:
            continue
        for p in paths:
            if p and p[0] in layers and layers[p[0]] > layers[here[0]] and (here[0], p[0]) not in seen:
                seen.add((here[0], p[0]))
                problems.append(
                    f"{src}: {here[0]} (layer {layers[here[0]]}) imports {p[0]} (layer {layers[p[0]]}); "
                    "a layer imports only from itself and the layers before it"
                )
    return problems


def check_crate(src):
    problems = []
    files = []
    for root, _, names in os.walk(src):
        files += [os.path.join(root, n) for n in names if n.endswith(".rs")]
    refs = [references(src, f) for f in files]
    # Every module that has children: its children must form a DAG.
    parents = defaultdict(set)
    for f in files:
        path = module_path(src, f)
        if os.path.basename(f) == "main.rs":
            continue
        for depth in range(len(path)):
            parents[tuple(path[:depth])].add(path[depth])
    for parent, children in sorted(parents.items()):
        edges = defaultdict(set)
        n = len(parent)
        for here, paths in refs:
            if len(here) <= n or tuple(here[:n]) != parent:
                continue
            mine = here[n]
            for p in paths:
                if len(p) > n and tuple(p[:n]) == parent and p[n] in children and p[n] != mine:
                    edges[mine].add(p[n])
        for comp in cycles(children, edges):
            where = "::".join(("crate",) + parent)
            lines = [f"{src}: import cycle among the children of {where}: {' '.join(comp)}"]
            lines += [f"    {a} -> {', '.join(sorted(b for b in edges[a] if b in comp))}" for a in comp]
            problems.append("\n".join(lines))
    problems += check_layers(src, files, refs)
    for f in files:
        for i, line in enumerate(open(f, encoding="utf-8"), 1):
            if "clippy::too_many_arguments" in line:
                problems.append(f"{f}:{i}: too_many_arguments allowed; group the arguments in a struct")
    return problems


def main():
    problems = []
    for src in sys.argv[1:]:
        problems += check_crate(src)
    if problems:
        print("\n".join(problems))
        return 1
    print(f"structure: no import cycles, layers as declared, no too_many_arguments in {', '.join(sys.argv[1:])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
