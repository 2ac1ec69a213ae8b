"""Every result table in the README is rendered from a committed result file (benchmarks/readme_tables.py)."""

from __future__ import annotations

import importlib.util

from conftest import REPO_ROOT


def _tables_module():
    spec = importlib.util.spec_from_file_location("readme_tables", REPO_ROOT / "benchmarks" / "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_tables_equal_their_result_files():
    tables = _tables_module()
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert "<!-- BEGIN main-job -->" in readme
    assert tables.render(readme, tables.tables()) == readme, "run: python benchmarks/readme_tables.py"


def test_render_replaces_only_marked_blocks():
    tables = _tables_module()
    text = "a\n<!-- BEGIN x -->\nold\n<!-- END x -->\nb\n<!-- BEGIN y -->\n<!-- END y -->\n"
    out = tables.render(text, {"x": "new", "y": "filled"})
    assert out == "a\n<!-- BEGIN x -->\nnew\n<!-- END x -->\nb\n<!-- BEGIN y -->\nfilled\n<!-- END y -->\n"


def test_comparison_tables_nest_under_the_readme_headings(tmp_path):
    tables = _tables_module()
    path = tmp_path / "paper_comparison.md"
    path.write_text("## LLaRA paper comparison, budget1x\n\n### Held-out Debian\n\n| a | b |\n|---|---|\n| ## | 1 |\n")
    assert tables.comparison_table(path).split("\n") == [
        "**LLaRA paper comparison, budget1x**", "", "#### Held-out Debian", "", "| a | b |", "|---|---|", "| ## | 1 |",
    ]
