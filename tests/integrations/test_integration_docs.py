"""Run the ```python blocks of every page in docs/integrations/, in order, one namespace per page.

Each page's blocks are meant to be copy-pasted into a fresh session, so they run in an
empty working directory with nothing but the page's own earlier blocks. Blocks fenced
otherwise (```bash, ```yaml, ```text, ```{literalinclude}) are not run; the code they
show is run by the other integration tests.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted((ROOT / "docs" / "integrations").glob("*.md"))
NEEDS = {"speechbrain": "speechbrain", "espnet": "espnet2", "transformers": "transformers", "lightning": "lightning",
         "versa": "versa", "ray": "ray", "datasets": "datasets", "lhotse": "lhotse", "torchrun": "torch.distributed"}
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks(page: Path) -> list[str]:
    return FENCE.findall(page.read_text())


def test_every_integration_has_a_page():
    assert sorted(p.stem for p in PAGES) == sorted(NEEDS)


# the Ray page starts a local Ray cluster: on the Ray tests' xdist worker, one cluster at a time
@pytest.mark.parametrize("page", [pytest.param(p, marks=pytest.mark.xdist_group("ray")) if p.stem == "ray" else p
                                  for p in PAGES], ids=[p.stem for p in PAGES])
def test_page_snippets_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    how = ("VERSA, installed from its source (not on PyPI): see docs/integrations/versa.md"
           if page.stem == "versa" else f"{page.stem}: pip install -e '.[integrations]'")
    pytest.importorskip(NEEDS[page.stem], reason=f"needs {how}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(page)
    assert blocks, f"{page.name} has no runnable ```python block"
    namespace: dict = {"__name__": "__docs__"}
    for i, code in enumerate(blocks, 1):
        try:
            exec(compile(code, f"{page.name}[python block {i}]", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"{page.relative_to(ROOT)}: python block {i} failed: {e!r}\n{code}") from e
    assert os.getcwd() == str(tmp_path)
