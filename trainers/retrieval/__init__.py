"""Retrieval: BEIR-layout data, encoding, FAISS indexes, evaluation with pytrec_eval, and mteb support.

* ``beir`` - read and validate a BEIR-layout collection (corpus.jsonl, queries.jsonl, qrels/<split>.tsv).
* ``encoding`` - load an encoder, encode texts in length-sorted batches and in resumable shards.
* ``faiss_index`` - build, search, save and load FAISS index directories.
* ``corpus_index`` - the resumable ``llara index`` job: shards, index, atomic save.
* ``evaluation`` - rank with a model or BM25, TREC run files, metrics.
* ``mteb`` - mteb 2 model metadata and BEIR folders as mteb tasks (imports mteb).

Importing this package imports none of them.
"""
