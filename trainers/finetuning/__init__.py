"""LLaRA stage 2: contrastive fine-tuning on sentence-transformers' trainer and losses, data and mining.

Modules: ``data`` (sources, cleaning report, group sampling into a ``datasets.Dataset``), ``loss`` (the
released recipe as sentence-transformers' ``(Cached)MultipleNegativesRankingLoss``), ``trainer``
(:class:`LlaraFinetuneConfig`, :class:`LlaraFinetuneTrainer`, :func:`finetune`) and ``mining`` (hard
negatives: dense through ``sentence_transformers.util.mine_hard_negatives``, or BM25). Import from the
submodules; this package imports nothing heavy on its own.
"""
