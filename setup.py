"""LLaRA: LLM adapted for dense retrieval (arXiv 2312.15503), Hugging Face native."""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
requirements = [
    line.strip()
    for line in (here / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#") and not line.startswith("--")
]

setup(
    name="llara",
    version="0.1.0",
    description="LLaRA: turn a decoder LLM into a dense-retrieval embedder (EBAE/EBAR + contrastive fine-tuning)",
    long_description=(here / "README.md").read_text(encoding="utf8") if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["modeling_llara", "trainers", "trainers.*", "hub_card", "llara", "llara.*"]),
    package_data={"trainers": ["resources/*"], "hub_card": ["templates/*"]},
    install_requires=requirements,
    extras_require={
        "test": ["pytest>=8", "pytest-timeout"],
        # source-only: install after torch with --no-build-isolation (see the Makefile)
        "deepspeed": ["deepspeed==0.19.8"],
    },
    entry_points={"console_scripts": ["llara=llara.cli:console_main"]},
)
