#!/usr/bin/env python3
"""Build the Debian package-description retrieval snapshot.

Why this exists: LLaRA needs a real, offline retrieval collection that can be
rebuilt without network access to Hugging Face.  Debian's English package
descriptions give natural (query, document) pairs: the one-line short
description is a query, the long description is the relevant document.  The
apt lists on a machine drift with every mirror update, so the result is
snapshotted into ``data/debian/descriptions.jsonl.gz`` and this script records
exactly how that snapshot was derived.

Pipeline (each step is a pure helper so it can be tested and reasoned about):

1. ``parse_translation`` reads RFC822-like stanzas (``Package``,
   ``Description-md5``, ``Description-en``) from ``Translation-en`` files
   (``.lz4`` files are decompressed through ``apt-helper cat-file``).
2. ``select_descriptions``: a package may carry several descriptions (one per
   archive version, or main vs. security).  The one with the lexicographically
   smallest ``Description-md5`` is kept, so the choice does not depend on file
   order.
3. ``clean_long_description`` turns the Debian markup into plain text: `` .``
   lines become paragraph breaks (``\\n\\n``), wrapped lines are joined with
   spaces, list bullets (``*``, ``-``, ``+``, ``o``, ``•``, ``1.``, ``2)`` on
   indented lines; only ``*``/``•`` on ordinary lines) are stripped and each
   list item starts a new line, and lines made only of
   punctuation (ASCII-art rulers) are dropped.
4. ``deduplicate``:
   * every record whose (case/whitespace-normalised) short description is
     shared with another package is dropped entirely -- a shared query such as
     "transitional package" or "GNU Fortran compiler" has no unique answer;
   * records whose long descriptions share the same first paragraph are one
     *family* (e.g. ``foo``, ``foo-data``, ``foo-doc``; identical long
     descriptions are a special case).  Only one representative per family is
     kept: the shortest package name, ties broken alphabetically.  Keeping
     near-identical siblings would put near-duplicate documents into the test
     corpus (ambiguous positives) and leak test documents into training.
5. ``filter_pairs`` drops empty short descriptions and long descriptions with
   fewer than ``--min-words`` words.
6. ``write_snapshot`` writes sorted JSON lines, gzip with ``mtime=0`` and no
   embedded file name, so the output is byte-for-byte reproducible.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

# The snapshot is written by the project's own atomic writer; the script runs from any directory.
sys.path.append(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from trainers.io import atomic_write_jsonl_gz  # noqa: E402

APT_LISTS = "/var/lib/apt/lists"
DEFAULT_GLOBS = (
    "*_debian_dists_bookworm_main_i18n_Translation-en*",
    "*_debian_dists_bookworm-updates_main_i18n_Translation-en*",
    "*_debian-security_dists_bookworm-security_main_i18n_Translation-en*",
)
DEFAULT_OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "descriptions.jsonl.gz")
APT_HELPER = "/usr/lib/apt/apt-helper"

_BULLET = re.compile(r"^(?:[*\-+o•·]|\d{1,2}[.)])\s+")
# Some maintainers write lists without the extra indent; only unambiguous
# markers are treated as bullets there ("- " or "1. " can be prose).
_BULLET_UNINDENTED = re.compile(r"^[*•·]\s+")
_ONLY_PUNCT = re.compile(r"[\W_]+")
_WS = re.compile(r"\s+")


@dataclass(frozen=True)
class RawRecord:
    """One stanza of a Translation-en file, before cleaning."""

    package: str
    md5: str
    short: str
    long_lines: tuple[str, ...]


class SnapshotBuildError(RuntimeError):
    """Raised when the source files are missing or malformed."""


def read_source_text(path: str) -> str:
    """Return the decoded text of a Translation file.

    ``.lz4`` (and other apt-compressed) files are read through
    ``apt-helper cat-file`` because the Python standard library has no lz4.
    """
    if not os.path.isfile(path):
        raise SnapshotBuildError(f"source file not found: {path}")
    if path.endswith((".lz4", ".gz", ".xz", ".bz2", ".zst")):
        if not os.access(APT_HELPER, os.X_OK):
            raise SnapshotBuildError(
                f"{path} is compressed and {APT_HELPER} is not available to decompress it"
            )
        proc = subprocess.run([APT_HELPER, "cat-file", path], capture_output=True, check=False)
        if proc.returncode != 0:
            raise SnapshotBuildError(
                f"apt-helper cat-file failed for {path}: {proc.stderr.decode(errors='replace').strip()}"
            )
        data = proc.stdout
    else:
        with open(path, "rb") as fh:
            data = fh.read()
    return data.decode("utf-8")


def parse_translation(text: str, source: str = "<text>") -> Iterator[RawRecord]:
    """Yield records from Translation-en text.

    Stanzas are separated by blank lines.  A stanza without ``Package`` or
    ``Description-en`` is a format error, reported with its source and index,
    rather than silently skipped, because it would mean the format changed.
    """
    for index, stanza in enumerate(text.split("\n\n")):
        if not stanza.strip():
            continue
        package = md5 = short = None
        long_lines: list[str] = []
        in_description = False
        for line in stanza.split("\n"):
            if in_description and line.startswith((" ", "\t")):
                long_lines.append(line)
                continue
            in_description = False
            if line.startswith("Package:"):
                package = line.split(":", 1)[1].strip()
            elif line.startswith("Description-md5:"):
                md5 = line.split(":", 1)[1].strip()
            elif line.startswith("Description-en:"):
                short = line.split(":", 1)[1].strip()
                in_description = True
        if not package or short is None:
            raise SnapshotBuildError(
                f"{source}: stanza #{index} lacks Package or Description-en: {stanza[:80]!r}"
            )
        yield RawRecord(package, md5 or "", short, tuple(long_lines))


def select_descriptions(records: Iterable[RawRecord]) -> dict[str, RawRecord]:
    """Keep one description per package: the smallest Description-md5.

    Why: packages can appear in several files or versions; picking by md5 is
    independent of the order in which the files were read.
    """
    chosen: dict[str, RawRecord] = {}
    for rec in records:
        cur = chosen.get(rec.package)
        if cur is None or (rec.md5, rec.short, rec.long_lines) < (cur.md5, cur.short, cur.long_lines):
            chosen[rec.package] = rec
    return chosen


def clean_short(text: str) -> str:
    """Collapse whitespace in a short description."""
    return _WS.sub(" ", text).strip()


def clean_long_description(lines: Sequence[str]) -> str:
    """Convert Debian long-description markup into plain paragraphs.

    Lines are prefixed by one space; `` .`` is a paragraph break; lines with
    two or more leading spaces are "verbatim" in Debian policy and are mostly
    bullet lists, whose markers are removed so that retrieval models see words
    rather than list syntax.
    """
    paragraphs: list[str] = []
    current = ""

    def flush() -> None:
        nonlocal current
        if current:
            paragraphs.append("\n".join(_WS.sub(" ", part).strip() for part in current.split("\n")))
        current = ""

    for raw in lines:
        body = raw[1:] if raw[:1] in (" ", "\t") else raw
        stripped = body.strip()
        if stripped == ".":
            flush()
            continue
        if not stripped or _ONLY_PUNCT.fullmatch(stripped):
            continue
        verbatim = body[:1] in (" ", "\t")
        match = (_BULLET if verbatim else _BULLET_UNINDENTED).match(stripped)
        if match:
            item = stripped[match.end():]
            current = f"{current}\n{item}" if current else item
        else:
            current = f"{current} {stripped}" if current else stripped
    flush()
    return "\n\n".join(p for p in paragraphs if p)


def normalise(text: str) -> str:
    """Comparison key for duplicate detection: case- and whitespace-insensitive."""
    return _WS.sub(" ", text).casefold().strip()


def first_paragraph(document: str) -> str:
    """The family key: siblings of one source package share their first paragraph."""
    return normalise(document.split("\n\n", 1)[0])


@dataclass
class DedupStats:
    """Counts reported by :func:`deduplicate` (no printing in helpers)."""

    input_pairs: int = 0
    dropped_shared_short: int = 0
    families: int = 0
    dropped_family_siblings: int = 0


def deduplicate(pairs: Sequence[dict]) -> tuple[list[dict], DedupStats]:
    """Remove ambiguous and near-duplicate pairs (see module docstring)."""
    stats = DedupStats(input_pairs=len(pairs))
    short_counts = Counter(normalise(p["query"]) for p in pairs)
    unique_short = [p for p in pairs if short_counts[normalise(p["query"])] == 1]
    stats.dropped_shared_short = len(pairs) - len(unique_short)

    families: dict[str, list[dict]] = defaultdict(list)
    for p in unique_short:
        families[first_paragraph(p["document"])].append(p)
    stats.families = len(families)
    kept = [min(members, key=lambda p: (len(p["id"]), p["id"])) for members in families.values()]
    stats.dropped_family_siblings = len(unique_short) - len(kept)
    kept.sort(key=lambda p: p["id"])
    return kept, stats


def filter_pairs(pairs: Iterable[dict], min_words: int) -> list[dict]:
    """Drop pairs with an empty query or a long description under ``min_words`` words."""
    return [p for p in pairs if p["query"] and len(p["document"].split()) >= min_words]


def build_pairs(paths: Sequence[str], min_words: int = 15) -> tuple[list[dict], dict]:
    """Run the whole pipeline on ``paths``; return sorted pairs and count statistics."""
    if not paths:
        raise SnapshotBuildError("no Translation-en source files given")
    raw: list[RawRecord] = []
    per_file: dict[str, int] = {}
    for path in paths:
        records = list(parse_translation(read_source_text(path), source=path))
        per_file[os.path.basename(path)] = len(records)
        raw.extend(records)
    chosen = select_descriptions(raw)
    pairs = [
        {"id": pkg, "query": clean_short(rec.short), "document": clean_long_description(rec.long_lines)}
        for pkg, rec in sorted(chosen.items())
    ]
    deduped, dstats = deduplicate(pairs)
    final = filter_pairs(deduped, min_words)
    stats = {
        "records_read": len(raw),
        "records_per_file": per_file,
        "unique_packages": len(chosen),
        "dropped_shared_short": dstats.dropped_shared_short,
        "families": dstats.families,
        "dropped_family_siblings": dstats.dropped_family_siblings,
        "dropped_too_short_or_empty": len(deduped) - len(final),
        "pairs_kept": len(final),
    }
    return final, stats


def write_snapshot(pairs: Sequence[dict], path: str) -> str:
    """Write gzip JSON lines reproducibly (mtime=0, no name) and atomically; return sha256."""
    rows = ({"id": p["id"], "query": p["query"], "document": p["document"]} for p in pairs)
    return atomic_write_jsonl_gz(path, sorted(rows, key=lambda p: p["id"]))


def default_sources(lists_dir: str = APT_LISTS) -> list[str]:
    """Find bookworm main (+updates, +security) Translation-en files in the apt lists."""
    found: list[str] = []
    for pattern in DEFAULT_GLOBS:
        found.extend(sorted(glob.glob(os.path.join(lists_dir, pattern))))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build data/debian/descriptions.jsonl.gz from Debian Translation-en files "
        "(short description = query, long description = document).")
    parser.add_argument("sources", nargs="*",
                        help="Translation-en files (.lz4 read via apt-helper). Default: bookworm main, "
                             f"bookworm-updates and bookworm-security files under {APT_LISTS}.")
    parser.add_argument("--lists-dir", default=APT_LISTS, help="apt lists directory for the default sources")
    parser.add_argument("-o", "--output", default=DEFAULT_OUTPUT, help="output .jsonl.gz path")
    parser.add_argument("--min-words", type=int, default=15,
                        help="drop pairs whose long description has fewer words (default 15)")
    args = parser.parse_args(argv)

    sources = list(args.sources) or default_sources(args.lists_dir)
    if not sources:
        parser.error(f"no Translation-en files found under {args.lists_dir}; run "
                     "`apt-get update -o Acquire::Languages=en` or pass files explicitly")
    try:
        pairs, stats = build_pairs(sources, min_words=args.min_words)
        digest = write_snapshot(pairs, args.output)
    except SnapshotBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for src in sources:
        print(f"source: {src}")
    print(json.dumps(stats, indent=2))
    print(f"wrote {len(pairs)} pairs to {args.output} ({os.path.getsize(args.output)} bytes, sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
