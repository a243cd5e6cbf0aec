"""The text of a ``.cu`` file as its compilers see it: local headers inlined.

The conv2d ``.cu`` files share ``kernels/conv2d/gemm_tile.cuh`` through ``#include
"gemm_tile.cuh"``. nvcc finds that header next to the file it compiles. The two other paths
compile a *string*, so they get the text from :func:`read_cu`, with every ``#include "name"``
that names a file next to the source (or in ``include_dirs``) replaced by that file's text:

* NVRTC through ``cupy.RawModule(code=...)`` (``kernels/cupy_backend.py``): CuPy's kernel
  cache keys a build by the code string and the options only, not by the headers an
  ``-I``/``--include-path`` option lets NVRTC find (cupy/cupy#941, #6159), so after an edit of
  the header it would keep running the old kernels; with the header in the string, the key
  changes with it.
* the CPU emulator (``kernels/emulator/loader.py``): it rewrites ``__shared__`` declarations,
  finds the kernels that reach a barrier through the functions they call, and caches builds
  by the hash of the text -- all three need the header's text, not just its path.

The inlined text is framed by ``#line`` directives, so compiler errors name the header and
its line, and the ``.cu`` file's own lines keep their numbers. Includes inside comments,
``<...>`` includes and quoted names that are not found are left as they are (the compiler
then looks for them itself). Stdlib only: the cupy backend imports this on a GPU machine.
"""
from __future__ import annotations

import os
import re

_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"\n]+)"')
_DIRECTIVE = re.compile(r'^[ \t]*#[ \t]*include\b')
_LINE = re.compile(r'^#line (\d+) "([^"\n]*)"[ \t]*$', re.M)


def blank_comments(src):
    """``src`` with comments and string literals replaced by spaces (newlines kept), so
    positions and line numbers match the original."""
    out, i, n = list(src), 0, len(src)
    while i < n:
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
        elif src[i] == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            j += 1
        else:
            i += 1
            continue
        for k in range(i, min(j, n)):
            if out[k] != "\n":
                out[k] = " "
        i = j
    return "".join(out)


def inline_includes(src, filename, include_dirs=(), _stack=()):
    """``src`` (the text of ``filename``) with its local ``#include "name"`` lines replaced by
    the named files' text (inlined the same way, recursively), each framed by ``#line``
    directives. ``name`` is looked for in the directory of ``filename``, then in
    ``include_dirs`` (nvcc's order for quoted includes: the including file's directory
    first, then ``-I``). An include cycle raises ``ValueError`` naming the files."""
    here = os.path.dirname(filename) if filename and not filename.startswith("<") else None
    dirs = ([here] if here else []) + list(include_dirs)
    lines, clean = src.split("\n"), blank_comments(src).split("\n")
    out, changed = [], False
    for no, (line, cl) in enumerate(zip(lines, clean), start=1):
        m = _INCLUDE.match(line) if _DIRECTIVE.match(cl) else None
        path = next((os.path.join(d, m.group(1)) for d in dirs
                     if os.path.isfile(os.path.join(d, m.group(1)))), None) if m else None
        if path is None:
            out.append(line)
            continue
        key = os.path.realpath(path)
        if key in _stack:
            chain = " -> ".join(list(_stack) + [key])
            raise ValueError(f"{filename}:{no}: #include cycle ({chain}); break it with an "
                             f"include guard that stops the inner include")
        with open(path) as f:
            text = f.read()
        text = inline_includes(text, path, include_dirs, _stack + (key,))
        out += [f'#line 1 "{path}"', text.rstrip("\n"), f'#line {no + 1} "{filename}"']
        changed = True
    return "\n".join(out) if changed else src


def read_cu(path, include_dirs=()):
    """The text of the ``.cu`` file ``path`` with its local headers inlined."""
    with open(path) as f:
        return inline_includes(f.read(), path, include_dirs)


def location(text, pos, filename):
    """``file:line`` of position ``pos`` in ``text`` (the text of ``filename``, maybe with
    ``#line`` directives from :func:`inline_includes`)."""
    name, line = filename, text.count("\n", 0, pos) + 1
    for m in _LINE.finditer(text, 0, pos):
        base = text.count("\n", 0, m.end()) + 2      # the line after the directive
        name, line = m.group(2), int(m.group(1)) + text.count("\n", 0, pos) + 1 - base
    return f"{name}:{line}"
