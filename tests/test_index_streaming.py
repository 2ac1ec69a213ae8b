"""A corpus is read as a stream: ``scan_corpus`` keeps ids and byte offsets, not texts, and indexing a corpus file
many times larger than the process's memory growth allowance works and gives the in-memory result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainers.retrieval.beir import BeirFormatError, load_corpus, passage_text, scan_corpus

REPO = Path(__file__).resolve().parent.parent

# A stand-in encoder (the model is not what is measured): a unit vector from a text's length and first characters.
STAND_IN = '''
import numpy as np

def encode(texts):
    rows = np.zeros((len(texts), 8), dtype=np.float32)
    for row, text in enumerate(texts):
        rows[row, len(text) % 8] += 1.0
        rows[row, ord(text[0]) % 8] += 0.5
        rows[row, ord(text[-1]) % 8] += 0.25
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)
'''
namespace: dict = {}
exec(STAND_IN, namespace)
encode = namespace["encode"]

MEASURE = STAND_IN + '''
import json, resource, sys
from trainers.retrieval.corpus_index import index_corpus_file
from trainers.retrieval.faiss_index import load_index

small, big, out = sys.argv[1:4]
# Warm up on a small corpus, so that what the libraries allocate once is in the baseline.
index_corpus_file(encode, small, out + "-warmup", model_id="stand-in", shard_size=20, show_progress=False)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
index_corpus_file(encode, big, out, model_id="stand-in", shard_size=20, show_progress=False)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_growth_bytes": (after - before) * 1024, "rows": load_index(out).index.ntotal}))
'''


def _write_corpus(path: Path, docs: int, words_per_doc: int) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for i in range(docs):
            text = f"document {i} " + f"word{i % 97} " * words_per_doc
            handle.write(json.dumps({"_id": f"doc-{i}", "title": f"title {i}" if i % 3 else "", "text": text}) + "\n")
    return path


def test_scan_keeps_ids_and_offsets_and_reads_any_range(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"_id": "a", "title": "T", "text": " body "}\n\n{"_id": 7, "text": "caf\\u00e9"}\n'
                    '{"_id": "c", "text": "last"}\n')
    corpus = scan_corpus(path)
    reference = load_corpus(path)
    # Then ids, texts and order are those of load_corpus, with ids packed and texts read from disk on demand
    assert list(corpus.ids) == list(reference) == ["a", "7", "c"]
    assert corpus.read_texts(0, 3) == [passage_text(d["title"], d["text"]) for d in reference.values()]
    assert corpus.read_texts(1, 3) == ["café", "last"] and corpus.read_texts(2, 9) == ["last"]
    assert corpus.ids[-1] == "c" and corpus.ids[1:] == ["7", "c"]
    assert corpus.ids.nbytes < 64
    # And a changed file changes the fingerprint's corpus hash
    before = corpus.sha256
    path.write_text(path.read_text().replace("last", "lost"))
    assert scan_corpus(path).sha256 != before


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ('{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "b"}\n\n{"_id": "d2", "text": "c"}\n{"_id": "d1", "text": "d"}\n',
         r":4: duplicate document id 'd2' \(first seen on line 2\)"),
        ('{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": broken}\n', r"corpus\.jsonl:2: not valid JSON"),
        ('{"_id": "d1"}\n', r":1: missing field 'text'"),
        ("\n\n", r"the corpus is empty"),
    ],
)
def test_scan_reports_the_errors_load_corpus_reports(tmp_path, lines, message):
    path = tmp_path / "corpus.jsonl"
    path.write_text(lines)
    for read in (scan_corpus, load_corpus):
        with pytest.raises(BeirFormatError, match=message):
            read(path)


def test_streamed_index_equals_the_in_memory_index(tmp_path):
    from trainers.retrieval.corpus_index import build_corpus_index, index_corpus_file
    from trainers.retrieval.faiss_index import load_index

    path = _write_corpus(tmp_path / "corpus.jsonl", docs=57, words_per_doc=3)
    corpus = load_corpus(path)
    texts = [passage_text(d["title"], d["text"]) for d in corpus.values()]
    build_corpus_index(encode, list(corpus), texts, tmp_path / "memory", model_id="m", shard_size=10, show_progress=False)
    index_corpus_file(encode, path, tmp_path / "stream", model_id="m", shard_size=10, show_progress=False)
    memory, stream = load_index(tmp_path / "memory"), load_index(tmp_path / "stream")
    assert stream.ids == memory.ids == list(corpus)
    np.testing.assert_array_equal(stream.index.reconstruct_n(0, 57), memory.index.reconstruct_n(0, 57))
    assert (tmp_path / "stream" / "index.faiss").read_bytes() == (tmp_path / "memory" / "index.faiss").read_bytes()


def test_corpus_larger_than_the_memory_allowance_indexes(tmp_path):
    # Given a ~60 MB corpus file (1000 documents of ~60 kB)
    big = _write_corpus(tmp_path / "big.jsonl", docs=1000, words_per_doc=9000)
    small = _write_corpus(tmp_path / "small.jsonl", docs=40, words_per_doc=9000)
    size = big.stat().st_size
    assert size > 55 * 2**20
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    # When a fresh process indexes it from the file
    result = subprocess.run([sys.executable, "-c", MEASURE, str(small), str(big), str(tmp_path / "index")], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    # Then every document is indexed while the peak resident memory grew by less than a tenth of the file:
    # holding the texts (a dict of the corpus) would need more than the whole file
    assert measured["rows"] == 1000
    assert measured["peak_growth_bytes"] < size / 10, measured
