"""LLaRA stage 2: contrastive fine-tuning (InfoNCE, cross-device negatives, GradCache), data and mining.

Modules: ``data`` (sources, cleaning report, group sampling), ``collator``, ``loss``
(:class:`LlaraContrastiveLoss`), ``trainer`` (:class:`LlaraFinetuneConfig`, :class:`LlaraFinetuneTrainer`,
:func:`finetune`) and ``mining`` (hard negatives with FAISS or BM25). Import from the submodules; this
package imports nothing heavy on its own.
"""
