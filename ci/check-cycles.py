#!/usr/bin/env python3
"""No import cycle between the files of any crate (README, section Layout).

For every crate of the workspace (a Cargo.toml next to a src/), each .rs file under src/ is
a module; a file depends on another when its code names a path into that module:
`crate::a::b`, `super::x`, `self::x`, or `child::x` for a module declared in it (Rust's
uniform paths). `mod` declarations are not dependencies, nor is a `pub use` that
re-exports a module's own descendant (the parent is then only its facade), and a path
into a module's own inline modules (`mod tests { use super::*; }`) stays inside the file. Any
strongly connected set of two or more files is reported with the edges that close it, and
the script exits 1.

Usage: ci/check-cycles.py [ROOT]   (default: the repository this script is in)
"""

import os
import re
import sys
from pathlib import Path

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
TOKEN = re.compile(
    rf"(?P<mod>\bmod\s+(?P<modname>{IDENT})\s*(?P<modend>[{{;]))"
    rf"|(?P<path>(?<![\w$:])(?:{IDENT})(?:\s*::\s*{IDENT})+)"
    r"|(?P<open>\{)|(?P<close>\})"
)

REEXPORT = re.compile(r"\bpub(?:\s*\([^)]*\))?\s+use\b[^;]*;")


def strip(text):
    """The source with comments, string and char literals blanked (newlines kept)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    if text[i] == "\n":
                        out.append("\n")
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:]) and (i == 0 or not text[i - 1].isalnum()):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            end = n if end < 0 else end + 1 + len(hashes)
            out.append("\n" * text.count("\n", i, end) + '""')
            i = end
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append("\n" * text.count("\n", i, j) + '""')
            i = j + 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:]):
            m = re.match(r"'(\\.|[^\\'])'", text[i:])
            out.append("' '")
            i += len(m.group(0))
        elif c == "'" and re.match(r"'\\u\{[0-9a-fA-F]+\}'", text[i:]):
            m = re.match(r"'\\u\{[0-9a-fA-F]+\}'", text[i:])
            out.append("' '")
            i += len(m.group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def modules(src):
    """Module path (tuple) -> file, for every .rs file under src/."""
    found = {}
    for path in sorted(src.rglob("*.rs")):
        rel = path.relative_to(src).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] in ("lib", "main", "mod"):
            parts = parts[:-1]
        if len(rel.parts) == 1 and rel.parts[0] not in ("lib", "main"):
            # A file beside lib.rs/main.rs: a module of the crate root (or a second binary).
            parts = [rel.parts[0]]
        found[tuple(parts)] = path
    return found


def resolve(segments, here, mods):
    """The module a path in module `here` (file-level path plus inline modules) points
    into, or None for paths outside the crate."""
    head = segments[0]
    if head == "crate":
        base, rest = (), segments[1:]
    elif head in ("super", "self"):
        base = list(here)
        rest = segments
        while rest and rest[0] in ("super", "self"):
            if rest[0] == "super":
                if not base:
                    return None
                base.pop()
            rest = rest[1:]
        base = tuple(base)
    else:
        if here + (head,) in mods:
            base, rest = here, segments
        else:
            return None
    target = base
    for seg in rest:
        if target + (seg,) in mods:
            target = target + (seg,)
        else:
            break
    return target


def crate_edges(src):
    mods = modules(src)
    edges = {}
    for mod_path, file in mods.items():
        text = strip(file.read_text())
        reexports = [(r.start(), r.end()) for r in REEXPORT.finditer(text)]
        stack = []  # ("inline", name) or ("brace", None)
        pending_mod = None
        deps = {}
        for m in TOKEN.finditer(text):
            if m.group("mod"):
                if m.group("modend") == "{":
                    stack.append(("inline", m.group("modname")))
                continue
            if m.group("open"):
                stack.append(("brace", None))
                continue
            if m.group("close"):
                if stack:
                    stack.pop()
                continue
            segments = [s.strip() for s in m.group("path").split("::")]
            inline = tuple(name for kind, name in stack if kind == "inline")
            here = mod_path + inline
            # Paths resolved against inline modules that have no file fall back to the
            # file's module: they are the file's own business.
            target = resolve(segments, here, {**mods, **{mod_path + inline[:k + 1]: None for k in range(len(inline))}})
            if target is None:
                continue
            while target not in mods or mods[target] is None:
                if not target:
                    break
                target = target[:-1]
            if target == mod_path or target not in mods:
                continue
            facade = any(a <= m.start() < b for a, b in reexports)
            if facade and target[: len(mod_path)] == mod_path:
                continue
            line = text.count("\n", 0, m.start()) + 1
            deps.setdefault(target, (line, m.group("path")))
        edges[mod_path] = deps
    return mods, edges


def cycles(nodes, edges):
    """Strongly connected components of two or more nodes (Tarjan)."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in nodes:
        if v not in index:
            visit(v)
    return out


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
    crates = []
    for manifest in sorted(root.rglob("Cargo.toml")):
        if "target" in manifest.parts or any(p.startswith(".") for p in manifest.relative_to(root).parts):
            continue
        src = manifest.parent / "src"
        if src.is_dir():
            crates.append(src)
    failed = False
    files = 0
    for src in crates:
        mods, edges = crate_edges(src)
        files += len(mods)
        for component in cycles(list(mods), edges):
            failed = True
            members = set(component)
            print(f"import cycle in {src.parent.relative_to(root)}:", file=sys.stderr)
            for v in component:
                for w, (line, path) in sorted(edges[v].items()):
                    if w in members:
                        print(f"  {mods[v].relative_to(root)}:{line} -> "
                              f"{mods[w].relative_to(root)} ({path})", file=sys.stderr)
    if failed:
        return 1
    print(f"import cycles: none in {len(crates)} crates ({files} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
