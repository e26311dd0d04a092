"""scripts/evaluate_models.py's public-set scoring on small files in the gensim test-data formats (the real sets
ship in the gensim wheel, the `bench` extra). A fake backend that embeds a text as its leading number makes every
expected score computable by hand."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from deployments.backends.base import EmbedOutput

ROOT = Path(__file__).resolve().parents[2]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("evaluate_models_under_test", ROOT / "scripts" / "evaluate_models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class AngleFakeBackend:
    """Embeds a text starting with a number x as the unit vector at angle x degrees (anything else: 0)."""

    def embed(self, texts: list[str]) -> EmbedOutput:
        angles = []
        for text in texts:
            head = text.split()[0] if text.split() else "0"
            angles.append(np.radians(float(head)) if head.replace(".", "").isdigit() else 0.0)
        vectors = np.array([[np.cos(a), np.sin(a)] for a in angles], dtype=np.float32)
        return EmbedOutput(vectors, [1] * len(texts), [False] * len(texts))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    # Lee format: one document per line, cp1252 (the \x97 dash must not break reading); similarity matrix rows.
    (tmp_path / "lee.cor").write_bytes("0 first \x97 doc\n10 second\n80 third\n".encode("latin-1"))
    (tmp_path / "similarities0-1.txt").write_text("1\t0.9\t0.1\n0\t1\t0.2\n0\t0\t1\n")
    lines = [f"__label__pos {a} good\n" for a in (0, 1, 2)] + [f"__label__neg {a} bad\n" for a in (90, 91, 92)]
    (tmp_path / "pang_lee_polarity.cor").write_text("".join(lines))
    (tmp_path / "simlex999.txt").write_text("# word1\tword2\tscore\n0 a\t0 b\t9\n0 c\t60 d\t5\n0 e\t89 f\t1\n")
    (tmp_path / "wordsim353.tsv").write_text("# comment\n0 a\t90 b\t1\n0 c\t0 d\t10\n")
    return tmp_path


def test_public_quality_scores_the_gensim_formats(data: Path) -> None:
    module = _script()
    result: dict[str, Any] = module.public_quality(AngleFakeBackend(), data, neighbours=2)
    assert result["lee50"]["pairs"] == 3
    # cosines: (0,10)=cos10, (0,80)=cos80, (10,80)=cos70 rank like the gold 0.9, 0.1, 0.2
    assert result["lee50"]["spearman"] == pytest.approx(1.0)
    assert result["polarity200"] == {"sentences": 6, "k": 2, "knn_accuracy": pytest.approx(1.0)}
    assert result["simlex999"] == {"pairs": 3, "spearman": pytest.approx(1.0)}
    assert result["wordsim353"]["spearman"] == pytest.approx(1.0)
