#!/usr/bin/env python3
"""Build the Python standard-library docstring retrieval snapshot.

Why this exists: a second real, offline retrieval domain, different in kind from
the Debian package descriptions (API documentation instead of software
blurbs), to be used only for held-out evaluation.  Every public function,
class and method of the standard library carries a docstring whose first
paragraph is a one-sentence summary ("Return the square root of x.") and whose
remainder explains the details.  The summary is the query and the remainder is
the relevant document.  Docstrings change between Python releases, so the result
is snapshotted into ``data/pydocs/docstrings.jsonl.gz`` and this script records
how it was derived (and the interpreter version it read).

Pipeline:

1. ``list_modules`` asks the target interpreter for ``sys.stdlib_module_names``
   and drops private names and the noisy or unsafe ones in ``EXCLUDED``
   (GUI toolkits, test suites, ``antigravity`` which opens a web browser, ...).
2. For each top-level module a fresh ``python -I -S`` child (isolated: no
   site-packages, no user site, no environment variables; no ``DISPLAY``;
   in a temporary working directory; with a timeout) imports the module and
   its public submodules and prints the raw docstrings as JSON
   (``--worker`` mode of this very script).  Import failures are recorded and
   skipped, and a crashing module cannot take the build down.
3. ``split_docstring`` cleans a docstring (``inspect.cleandoc``), drops a
   leading C-style signature line (``S.startswith(prefix[, start]) -> bool``)
   and splits it into summary (first sentence of the first paragraph, on one
   line) and body; memory addresses are removed from signatures.
4. ``filter_records`` keeps pairs whose summary has ``--min-query-words`` to
   ``--max-query-words`` words and whose body has ``--min-words`` to
   ``--max-words`` words, and whose body does not contain the summary
   (case- and whitespace-insensitive).
5. ``deduplicate``: identical (summary, body) pairs -- inherited or re-exported
   docstrings -- keep one representative (shortest qualified name, then
   alphabetical); a summary shared by records with different bodies is
   ambiguous as a query, so every copy is dropped; a body shared by records with
   different summaries keeps one representative.
6. ``write_snapshot`` writes JSON lines sorted by id, gzip with ``mtime=0`` and
   no embedded file name, so a rebuild on the same interpreter gives the same
   bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

# The snapshot is written by the project's own atomic writer; the script runs from any directory.
sys.path.append(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from trainers.io import atomic_write_jsonl_gz  # noqa: E402

DEFAULT_OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "docstrings.jsonl.gz")
DEFAULT_PYTHON = "/usr/bin/python3"

# Top-level modules that are never imported: GUI toolkits and their demos,
# the regression-test suite, modules with side effects on import (antigravity
# opens a browser, this prints), codec tables, deprecated copies of other
# packages, and platform modules that do not exist on Linux.
EXCLUDED = frozenset({
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "lib2to3",
    "test", "ensurepip", "pydoc_data", "distutils", "encodings",
    "msilib", "msvcrt", "nt", "winreg", "winsound", "_winapi",
})
# Submodule name parts that mark test code or internals.
EXCLUDED_PARTS = frozenset({"test", "tests", "idle_test", "__main__"})

_WS = re.compile(r"\s+")
# "S.startswith(prefix[, start[, end]]) -> bool", "bytes(iterable_of_ints) -> bytes",
# "compress(data, level=9) -> bytes": legacy C docstrings start with a signature.
_SIGNATURE_LINE = re.compile(r"^[\w.]+\(.*\)\s*(->.*)?$")


# End of the summary sentence inside a first paragraph: ". " before a capital letter.
# Default values in signatures print their memory address ("<object object at 0x7f...>"),
# which would make the output differ between runs.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+>")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


class SnapshotBuildError(RuntimeError):
    """Raised when the interpreter cannot be run or gives no records."""


# --------------------------------------------------------------------------------------
# Worker: runs inside the isolated child interpreter, prints JSON records on stdout.

def _worker(top: str) -> int:
    import importlib
    import inspect
    import pkgutil
    import types
    import warnings

    warnings.simplefilter("ignore")
    out: list[dict] = []
    failures: list[str] = []

    def try_import(name: str):
        try:
            return importlib.import_module(name)
        except BaseException as exc:  # noqa: BLE001 - SystemExit/ImportError/anything: skip the module
            failures.append(f"{name}: {type(exc).__name__}: {exc}"[:200])
            return None

    def signature(obj, qualname: str) -> str:
        try:
            return f"{qualname}{inspect.signature(obj)}"
        except Exception:  # noqa: BLE001 - text signatures can fail in many ways
            return ""

    def public_names(module) -> list[str]:
        # Every public name, not only ``__all__``: public helper classes left out of
        # ``__all__`` are documented API too; re-exports are filtered by ``owned``.
        names = list(vars(module))
        extra = getattr(module, "__all__", None)
        if isinstance(extra, (list, tuple)):
            names.extend(extra)
        return sorted({n for n in names if isinstance(n, str) and not n.startswith("_")})

    def owned(obj, modname: str) -> bool:
        # Defined here, or in a private implementation module (_io, _functools, ...)
        # and re-exported here.
        owner = getattr(obj, "__module__", None)
        return isinstance(owner, str) and (owner == modname or owner.split(".")[-1].startswith("_"))

    def emit(modname: str, qualname: str, kind: str, obj, doc) -> None:
        if isinstance(doc, str) and doc.strip():
            out.append({"module": modname, "qualname": qualname, "kind": kind,
                        "signature": signature(obj, qualname) if kind != "property" else qualname,
                        "doc": doc})

    def visit_class(modname: str, qual: str, cls, depth: int = 0) -> None:
        emit(modname, qual, "class", cls, cls.__doc__)
        for attr, raw in sorted(vars(cls).items()):
            if attr.startswith("_"):
                continue
            member = raw.__func__ if isinstance(raw, (classmethod, staticmethod)) else raw
            if isinstance(member, property):
                emit(modname, f"{qual}.{attr}", "property", member, member.__doc__)
            elif inspect.isroutine(member):
                emit(modname, f"{qual}.{attr}", "method", member, getattr(member, "__doc__", None))
            elif (inspect.isclass(member) and depth == 0 and member.__module__ == cls.__module__
                  and member.__qualname__ == f"{cls.__qualname__}.{attr}"):
                visit_class(modname, f"{qual}.{attr}", member, depth + 1)  # nested class, one level

    def visit(module) -> None:
        modname = module.__name__
        if isinstance(module.__doc__, str) and module.__doc__.strip():
            out.append({"module": modname, "qualname": modname, "kind": "module",
                        "signature": modname, "doc": module.__doc__})
        for name in public_names(module):
            try:
                obj = getattr(module, name)
            except BaseException:  # noqa: BLE001
                continue
            qual = f"{modname}.{name}"
            if inspect.isclass(obj):
                if owned(obj, modname):
                    visit_class(modname, qual, obj)
            elif inspect.isroutine(obj) and not isinstance(obj, types.MethodType):
                if owned(obj, modname):
                    emit(modname, qual, "function", obj, obj.__doc__)

    root = try_import(top)
    if root is not None:
        modules = [root]
        if hasattr(root, "__path__"):
            def onerror(name: str) -> None:
                failures.append(f"{name}: error while walking the package")

            for info in pkgutil.walk_packages(root.__path__, prefix=f"{top}.", onerror=onerror):
                parts = info.name.split(".")
                if any(p.startswith("_") or p in EXCLUDED_PARTS for p in parts):
                    continue
                sub = try_import(info.name)
                if sub is not None:
                    modules.append(sub)
        for module in modules:
            visit(module)
    sys.stdout.write(json.dumps({"records": out, "failures": failures}))
    return 0


# --------------------------------------------------------------------------------------
# Parent: pure helpers.

def normalise(text: str) -> str:
    """Comparison key: case- and whitespace-insensitive."""
    return _WS.sub(" ", text).casefold().strip()


def split_docstring(doc: str) -> tuple[str, str]:
    """Return (summary, body) of a docstring.

    The summary is the first sentence of the first paragraph, on one line (PEP 257's
    summary line; stdlib summaries are often wrapped over two lines, and a first
    paragraph sometimes goes on with details after its first sentence: those
    details start the body).

    A leading legacy signature paragraph (``S.split(sep=None) -> list of strings``)
    is skipped: it is not a natural-language summary.
    """
    import inspect

    text = inspect.cleandoc(doc).strip()
    paragraphs = re.split(r"\n\s*\n", text)
    while paragraphs and all(_SIGNATURE_LINE.match(line.strip()) for line in paragraphs[0].splitlines()):
        paragraphs = paragraphs[1:]
    if not paragraphs:
        return "", ""
    first = _WS.sub(" ", paragraphs[0]).strip()
    sentences = _SENTENCE_END.split(first, maxsplit=1)
    summary = sentences[0].strip()
    rest = [sentences[1].strip()] if len(sentences) > 1 else []
    body = "\n\n".join(rest + [p.strip("\n") for p in paragraphs[1:]]).strip()
    return summary, body


def to_pairs(records: Iterable[dict]) -> list[dict]:
    """Raw worker records -> ``{"id", "module", "qualname", "kind", "signature", "query", "document"}``."""
    pairs = []
    for rec in records:
        query, document = split_docstring(rec["doc"])
        pairs.append({"id": rec["qualname"], "module": rec["module"], "qualname": rec["qualname"],
                      "kind": rec["kind"], "signature": _ADDRESS.sub(">", rec["signature"]) or rec["qualname"],
                      "query": query, "document": document})
    return pairs


@dataclass
class FilterStats:
    """Counts reported by :func:`filter_records` (helpers do not print)."""

    input_pairs: int = 0
    short_query: int = 0
    non_text_query: int = 0
    long_query: int = 0
    short_document: int = 0
    long_document: int = 0
    query_in_document: int = 0


def filter_records(pairs: Sequence[dict], *, min_query_words: int = 3, max_query_words: int = 40,
                   min_words: int = 15, max_words: int = 300) -> tuple[list[dict], FilterStats]:
    """Keep pairs with sensible lengths and without the query verbatim in the document."""
    stats = FilterStats(input_pairs=len(pairs))
    kept = []
    for p in pairs:
        nq, nd = len(p["query"].split()), len(p["document"].split())
        if nq < min_query_words:
            stats.short_query += 1
        elif not (p["query"][:1].isalpha() or p["query"][:1] in "'\"`"):
            stats.non_text_query += 1  # a doctest (">>> ...") or markup, not a sentence
        elif nq > max_query_words:
            stats.long_query += 1
        elif nd < min_words:
            stats.short_document += 1
        elif nd > max_words:
            stats.long_document += 1
        elif normalise(p["query"]) in normalise(p["document"]) or normalise(p["query"]) in normalise(p["signature"]):
            stats.query_in_document += 1
        else:
            kept.append(p)
    return kept, stats


@dataclass
class DedupStats:
    input_pairs: int = 0
    dropped_identical_pairs: int = 0
    dropped_shared_query: int = 0
    dropped_shared_document: int = 0


def _representative(members: list[dict]) -> dict:
    return min(members, key=lambda p: (len(p["id"]), p["id"]))


def deduplicate(pairs: Sequence[dict]) -> tuple[list[dict], DedupStats]:
    """Remove repeated and ambiguous pairs (see module docstring, step 5)."""
    stats = DedupStats(input_pairs=len(pairs))
    by_pair: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for p in pairs:
        by_pair[(normalise(p["query"]), normalise(p["document"]))].append(p)
    unique = [_representative(m) for m in by_pair.values()]
    stats.dropped_identical_pairs = len(pairs) - len(unique)

    query_counts = Counter(normalise(p["query"]) for p in unique)
    unambiguous = [p for p in unique if query_counts[normalise(p["query"])] == 1]
    stats.dropped_shared_query = len(unique) - len(unambiguous)

    by_doc: dict[str, list[dict]] = defaultdict(list)
    for p in unambiguous:
        by_doc[normalise(p["document"])].append(p)
    kept = [_representative(m) for m in by_doc.values()]
    stats.dropped_shared_document = len(unambiguous) - len(kept)
    kept.sort(key=lambda p: p["id"])
    return kept, stats


def write_snapshot(pairs: Sequence[dict], path: str) -> str:
    """Write sorted JSON lines, gzip (mtime 0, no file name) atomically; return the sha256."""
    return atomic_write_jsonl_gz(path, sorted(pairs, key=lambda r: r["id"]))


# --------------------------------------------------------------------------------------
# Parent: running the children.

def _child_env() -> dict:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8"}
    return env  # no DISPLAY, no proxies, no PYTHONPATH


def interpreter_info(python: str) -> dict:
    code = ("import json, sys, platform; print(json.dumps({'version': platform.python_version(), "
            "'implementation': platform.python_implementation(), 'executable': sys.executable, "
            "'modules': sorted(sys.stdlib_module_names)}))")
    try:
        proc = subprocess.run([python, "-I", "-S", "-c", code], capture_output=True, text=True,
                              env=_child_env(), timeout=60, check=False)
    except OSError as exc:
        raise SnapshotBuildError(f"cannot run {python}: {exc}") from exc
    if proc.returncode != 0:
        raise SnapshotBuildError(f"{python} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def list_modules(all_names: Iterable[str]) -> list[str]:
    return sorted(n for n in all_names if not n.startswith("_") and n not in EXCLUDED)


def collect(python: str, modules: Sequence[str], timeout: float = 120.0) -> tuple[list[dict], dict[str, str]]:
    """Run one isolated child per top-level module; return raw records and failures."""
    records: list[dict] = []
    failures: dict[str, str] = {}
    script = os.path.abspath(__file__)
    with tempfile.TemporaryDirectory(prefix="pydocs_build_") as cwd:
        for top in modules:
            try:
                proc = subprocess.run([python, "-I", "-S", script, "--worker", top], capture_output=True,
                                      text=True, env=_child_env(), cwd=cwd, timeout=timeout,
                                      stdin=subprocess.DEVNULL, check=False)
            except subprocess.TimeoutExpired:
                failures[top] = f"timed out after {timeout}s"
                continue
            try:
                payload = json.loads(proc.stdout)
            except json.JSONDecodeError:
                failures[top] = f"worker exited {proc.returncode}: {proc.stderr.strip()[-200:]}"
                continue
            records.extend(payload["records"])
            for line in payload["failures"]:
                failures[line.split(":", 1)[0]] = line.split(":", 1)[1].strip()
    return records, failures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build data/pydocs/docstrings.jsonl.gz from the docstrings "
                                                 "of the Python standard library.")
    parser.add_argument("--python", default=DEFAULT_PYTHON,
                        help=f"interpreter whose standard library is read (default {DEFAULT_PYTHON})")
    parser.add_argument("-o", "--output", default=DEFAULT_OUTPUT, help="output .jsonl.gz (default: %(default)s)")
    parser.add_argument("--min-words", type=int, default=15, help="minimum document words (default 15)")
    parser.add_argument("--max-words", type=int, default=300, help="maximum document words (default 300)")
    parser.add_argument("--min-query-words", type=int, default=3, help="minimum query words (default 3)")
    parser.add_argument("--max-query-words", type=int, default=40, help="maximum query words (default 40)")
    parser.add_argument("--worker", metavar="MODULE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args.worker)

    try:
        info = interpreter_info(args.python)
        modules = list_modules(info["modules"])
        records, failures = collect(args.python, modules)
        if not records:
            raise SnapshotBuildError("no docstrings collected")
    except SnapshotBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    pairs = to_pairs(records)
    filtered, fstats = filter_records(pairs, min_query_words=args.min_query_words,
                                      max_query_words=args.max_query_words,
                                      min_words=args.min_words, max_words=args.max_words)
    kept, dstats = deduplicate(filtered)
    digest = write_snapshot(kept, args.output)
    words = sorted(len(p["document"].split()) for p in kept)
    stats = {
        "python": f"{info['implementation']} {info['version']} ({info['executable']})",
        "top_level_modules_tried": len(modules),
        "import_failures": dict(sorted(failures.items())),
        "raw_docstrings": len(records),
        "filter": asdict(fstats),
        "dedup": asdict(dstats),
        "pairs": len(kept),
        "modules_with_pairs": len({p["module"] for p in kept}),
        "kinds": dict(sorted(Counter(p["kind"] for p in kept).items())),
        "document_words_median": words[len(words) // 2] if words else 0,
    }
    print(json.dumps(stats, indent=2))
    print(f"wrote {len(kept)} pairs to {args.output} ({os.path.getsize(args.output)} bytes, sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
