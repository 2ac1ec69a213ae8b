"""How to cite LLaRA (and GradCache, which the fine-tuning loss can use), in one place.

Model cards, mteb model metadata and the sentence-transformers losses all take their BibTeX from here.
"""

LLARA_PAPER_URL = "https://arxiv.org/abs/2312.15503"
LLARA_TRAINING_CODE = "https://github.com/FlagOpen/FlagEmbedding/tree/master/research/LLARA"

LLARA_BIBTEX = """@misc{li2023llara,
  title         = {Making Large Language Models A Better Foundation For Dense Retrieval},
  author        = {Chaofan Li and Zheng Liu and Shitao Xiao and Yingxia Shao},
  year          = {2023},
  eprint        = {2312.15503},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CL},
  url           = {https://arxiv.org/abs/2312.15503}
}"""

GRADCACHE_BIBTEX = """@inproceedings{gao2021scaling,
  title     = {Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup},
  author    = {Gao, Luyu and Zhang, Yunyi and Han, Jiawei and Callan, Jamie},
  booktitle = {Proceedings of the 6th Workshop on Representation Learning for NLP (RepL4NLP-2021)},
  year      = {2021}
}"""

__all__ = ["GRADCACHE_BIBTEX", "LLARA_BIBTEX", "LLARA_PAPER_URL", "LLARA_TRAINING_CODE"]
