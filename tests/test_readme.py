"""The README's usage example runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_usage_example_runs(capsys):
    text = README.read_text()
    block = re.search(r"## Usage\n\n```python\n(.*?)```", text, re.S).group(1)
    ns = {}
    exec(compile(block, "README.md", "exec"), ns)
    x, D, S, y = ns["x"], ns["D"], ns["S"], ns["y"]
    ref = x.double() @ (D.double() @ S.to_dense().double()).T
    assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-2
    assert len(ns["report"].layers) == 2
