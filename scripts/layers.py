#!/usr/bin/env python3
"""Import graph of a crate's modules: cycles, the largest file, imports that run back up.

Usage: scripts/layers.py [CRATE_SRC_DIR ...]   (default: every crate's src/ in the workspace)

Reads `crate::a::b` paths (in `use` lines and in code) and `super::` paths, resolves each to
the file that defines the module, and reports per crate:
- the top-level modules that import one another in a cycle (strongly connected components);
- the files in the largest file-level cycle;
- the largest file.
Exit status 1 when top-level modules form a cycle not listed in ALLOWED_CYCLES.
"""
import os
import re
import sys

# Cycles between top-level modules that docs/architecture.md justifies.
ALLOWED_CYCLES = []

# The daemon's layers, lowest first (docs/architecture.md): a module may import its own
# layer and the ones below. Names of earlier trees (client, protocol, topic: now crates)
# are kept so the same measure reads an old checkout.
DAEMON_LAYERS = [
    ["topic", "protocol", "client", "settings", "hex", "throttle", "background", "metrics"],
    ["store", "tls"],
    ["auth", "history", "pubkeys"],
    ["hub"],
    ["mqtt", "live", "systemd", "cluster"],
    ["outbound_webhooks", "webhook", "recordings", "recorder"],
    ["uplinks", "bridges", "logging"],
    ["http"],
    ["ws"],
    ["config"],
    ["reload", "cli"],
    ["server"],
]

PATH_RE = re.compile(r"\b(crate|super)((?:::[a-z_][a-z0-9_]*)+)")
USE_GROUP_RE = re.compile(r"use\s+(crate|super)((?:::[a-z_][a-z0-9_]*)*)::\{([^;]*)\};", re.S)


def strip_comments(text):
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def module_of(src, path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


def files_of(src):
    out = {}
    for root, _, names in os.walk(src):
        for n in names:
            if n.endswith(".rs"):
                p = os.path.join(root, n)
                out[module_of(src, p)] = p
    return out


def resolve(mods, parts):
    for i in range(len(parts), 0, -1):
        if tuple(parts[:i]) in mods:
            return tuple(parts[:i])
    return None


def graph(src):
    mods = files_of(src)
    edges = {m: set() for m in mods}
    for m, path in mods.items():
        with open(path, encoding="utf-8") as f:
            text = strip_comments(f.read())
        refs = []
        for g in USE_GROUP_RE.finditer(text):
            base = g.group(1) + g.group(2)
            for item in re.findall(r"([a-z_][a-z0-9_]*)(?:::|\s*[,}]|\s*$|\s+as)", g.group(3)):
                refs.append(base + "::" + item)
        refs += [g.group(1) + g.group(2) for g in PATH_RE.finditer(text)]
        for r in refs:
            parts = r.split("::")
            if parts[0] == "crate":
                target = parts[1:]
            else:
                # `super` from a/b.rs and from a/b/mod.rs (both module a::b) is a.
                base = list(m[:-1])
                while parts and parts[0] == "super":
                    parts = parts[1:]
                    if parts and parts[0] == "super":
                        base = base[:-1]
                target = base + parts
            t = resolve(mods, target)
            if t is not None and t != m:
                edges[m].add(t)
        # `mod child;` in a file is an import of the child's file too.
        for child in re.findall(r"^\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+([a-z_][a-z0-9_]*)\s*;", text, re.M):
            t = resolve(mods, list(m) + [child])
            if t is not None and t != m:
                edges[m].add(t)
    return mods, edges


def sccs(nodes, edges):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
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
            out.append(comp)

    for v in nodes:
        if v not in index:
            visit(v)
    return out


def report(src):
    mods, edges = graph(src)
    top = {}
    for m, ts in edges.items():
        a = m[:1] or ("<root>",)
        for t in ts:
            b = t[:1]
            if a != b and a != ("<root>",) and b:
                top.setdefault(a, set()).add(b)
    tops = {m[:1] for m in mods if m}
    top_cycles = [sorted("::".join(x) for x in c) for c in sccs(sorted(tops), top) if len(c) > 1]
    file_cycles = sorted((c for c in sccs(sorted(mods), edges) if len(c) > 1), key=len, reverse=True)
    largest = max(mods.values(), key=lambda p: sum(1 for _ in open(p, encoding="utf-8")))
    lines = sum(1 for _ in open(largest, encoding="utf-8"))
    print(f"{src}: {len(mods)} files")
    print(f"  largest file-level cycle: {len(file_cycles[0]) if file_cycles else 0} files")
    print(f"  largest file: {largest} ({lines} lines)")
    bad = [c for c in top_cycles if c not in ALLOWED_CYCLES]
    if os.path.abspath(src) == os.path.join(ROOT, "src"):
        layer = {m: i for i, names in enumerate(DAEMON_LAYERS) for m in names}
        up = sorted(
            (a[0], b[0]) for a, bs in top.items() for b in bs
            if a[0] in layer and b[0] in layer and layer[b[0]] > layer[a[0]]
        )
        unknown = sorted({m[0] for m in tops if m and m[0] not in layer})
        print(f"  imports that run back up a layer: {len(up)}")
        for a, b in up:
            print(f"    UP {a} -> {b}")
        if unknown:
            print(f"  modules in no layer (add them to DAEMON_LAYERS): {' '.join(unknown)}")
        bad = bad + up + unknown
    for c in top_cycles:
        tag = "allowed" if c in ALLOWED_CYCLES else "CYCLE"
        print(f"  {tag} between top-level modules: {' '.join(c)}")
    if not top_cycles:
        print("  top-level modules: no cycle")
    if "-v" in sys.argv:
        for m in sorted(top):
            print("   ", "::".join(m), "->", " ".join(sorted("::".join(t) for t in top[m])))
    return not bad


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    root = ROOT
    if not args:
        args = [os.path.join(root, d, "src") for d in sorted(os.listdir(root))
                if os.path.isfile(os.path.join(root, d, "Cargo.toml"))]
        args.insert(0, os.path.join(root, "src"))
    ok = all([report(a) for a in args])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
