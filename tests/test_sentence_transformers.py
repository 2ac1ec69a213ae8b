"""sentence-transformers and fresh-process loading: same embeddings as LlaraModel, self-contained folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import encode, run_isolated
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer

from modeling_llara import LlaraInputBuilder

QUERIES = ["web server", "a tool that checks python code for style problems", ""]
DOCS = [
    "nginx is a small, fast HTTP server and reverse proxy. " * 3,
    "pylint analyses Python source code looking for bugs and signs of poor quality.",
    "x",
]


def _reference(folder, texts, task, **build):
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    return encode(model, LlaraInputBuilder(tokenizer, model.config), texts, task=task, **build).numpy()


def test_encode_query_and_document_match_the_model(tiny_llara_dir):
    st = SentenceTransformer(str(tiny_llara_dir), trust_remote_code=True, device="cpu")
    queries = st.encode_query(QUERIES, batch_size=2)
    docs = st.encode_document(DOCS, batch_size=2)
    plain = st.encode(DOCS, batch_size=2)
    np.testing.assert_allclose(queries, _reference(tiny_llara_dir, QUERIES, "query"), atol=1e-5, rtol=0)
    np.testing.assert_allclose(docs, _reference(tiny_llara_dir, DOCS, "document"), atol=1e-5, rtol=0)
    np.testing.assert_allclose(plain, docs, atol=1e-6, rtol=0)
    # query and passage prompts differ, so the same text embeds differently on each side
    assert np.abs(st.encode_query(DOCS) - docs).max() > 1e-3
    assert st.get_embedding_dimension() == 32
    np.testing.assert_allclose(np.linalg.norm(docs, axis=1), 1.0, atol=1e-5)


def test_long_texts_keep_their_suffix(tiny_llara_dir):
    st = SentenceTransformer(str(tiny_llara_dir), trust_remote_code=True, device="cpu")
    st.max_seq_length = 16  # budget of text tokens
    long_text = "word " * 500
    features = st.preprocess([long_text], task="query")
    ids = features["input_ids"][0].tolist()
    config = st[0].auto_model.config
    assert ids[-8:] == config.predict_token_ids
    embedded = st.encode_query([long_text])
    np.testing.assert_allclose(embedded, _reference(tiny_llara_dir, [long_text], "query", max_text_tokens=16), atol=1e-5)


def test_multi_process_encoding_matches_single_process(tiny_llara_dir):
    st = SentenceTransformer(str(tiny_llara_dir), trust_remote_code=True, device="cpu")
    texts = [f"package number {i} does {'many ' * (i % 7)}things" for i in range(24)]
    single = st.encode_document(texts, batch_size=4)
    multi = st.encode_document(texts, batch_size=4, device=["cpu", "cpu"], chunk_size=6)
    np.testing.assert_allclose(multi, single, atol=1e-5, rtol=0)


def test_fresh_process_loads_without_the_project(tmp_path, tiny_llara_dir):
    expected_q = _reference(tiny_llara_dir, QUERIES, "query")
    expected_d = _reference(tiny_llara_dir, DOCS, "document")
    code = f"""
import json
try:
    import modeling_llara  # noqa: F401
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("the project is importable: the isolation failed")
from transformers import AutoModel, AutoTokenizer
from sentence_transformers import SentenceTransformer
folder = {str(tiny_llara_dir)!r}
model = AutoModel.from_pretrained(folder, trust_remote_code=True)
assert type(model).__name__ == "LlaraModel" and type(model).__module__.startswith("transformers_modules.")
st = SentenceTransformer(folder, trust_remote_code=True, device="cpu")
print(json.dumps({{"q": st.encode_query({QUERIES!r}).tolist(), "d": st.encode_document({DOCS!r}).tolist(),
                   "attn": model.config._attn_implementation}}))
"""
    result = run_isolated(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["attn"] == "sdpa"
    np.testing.assert_allclose(np.array(out["q"]), expected_q, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.array(out["d"]), expected_d, atol=1e-5, rtol=0)


def test_model_type_llara_needs_trust_remote_code(tmp_path, tiny_llara_dir):
    code = f"""
from transformers import AutoModel
try:
    AutoModel.from_pretrained({str(tiny_llara_dir)!r}, trust_remote_code=False)
except ValueError as err:
    print("REFUSED", str(err)[:200])
else:
    print("LOADED")
"""
    result = run_isolated(code, tmp_path)
    assert "REFUSED" in result.stdout, result.stdout + result.stderr[-2000:]


@pytest.mark.integration
def test_real_smollm2_path(smollm2_llara_dir):
    """The whole foundation on a real pretrained LLM: init, ST encode, padding sides, sanity retrieval."""
    st = SentenceTransformer(str(smollm2_llara_dir), trust_remote_code=True, device="cpu")
    model = st[0].auto_model
    assert model.config.text_config.num_hidden_layers == 30
    assert model.config.tie_word_embeddings
    docs = [
        "nginx is a small, powerful, scalable web/proxy server.",
        "Pylint is a Python source code analyzer which looks for programming errors.",
        "GNU Image Manipulation Program: an advanced picture editor.",
        "OpenSSH client: secure shell for remote login and file transfer.",
    ]
    queries = ["web server", "python code checker", "photo editing", "ssh client"]
    q = st.encode_query(queries, convert_to_tensor=True)
    d = st.encode_document(docs, convert_to_tensor=True)
    assert torch.isfinite(q).all() and torch.isfinite(d).all()
    builder = st[0].builder
    right = builder(docs, task="document", padding_side="right")
    left = builder(docs, task="document", padding_side="left")
    with torch.no_grad():
        torch.testing.assert_close(model(**left).pooler_output, model(**right).pooler_output, atol=1e-5, rtol=0)
    # an untrained LLaRA already ranks above chance: count queries whose own document is the top hit
    hits = int((q @ d.T).argmax(dim=1).eq(torch.arange(4)).sum())
    assert hits >= 2, f"only {hits}/4 queries find their document"
