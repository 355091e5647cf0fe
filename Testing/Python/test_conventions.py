"""MRISynthesisLib.conventions: the one home of directions, contrasts and normalisation defaults,
and nothing else in the code defines them again."""

import ast
from pathlib import Path

import pytest

from MRISynthesisLib import conventions as c
from MRISynthesisLib.checkpoint import ModelMetadata
from MRISynthesisLib.errors import InputError

REPO = Path(__file__).resolve().parents[2]
CODE = ("MRISynthesisLib", "MRISynthesis", "Training", "benchmarks")


def test_directions_contrasts_and_their_reverse():
    assert c.DIRECTIONS == ("t1-to-t2", "t2-to-t1") and c.DEFAULT_DIRECTION == "t1-to-t2"
    assert [c.source_contrast(d) for d in c.DIRECTIONS] == ["T1", "T2"]
    assert [c.target_contrast(d) for d in c.DIRECTIONS] == ["T2", "T1"]
    assert {c.REVERSE[d] for d in c.DIRECTIONS} == set(c.DIRECTIONS) and c.REVERSE[c.T1_TO_T2] == c.T2_TO_T1
    assert c.DIRECTION_ALIASES["t2t1"] == c.T2_TO_T1 and set(c.DIRECTION_ALIASES.values()) == set(c.DIRECTIONS)
    assert c.source_and_target(c.T2_TO_T1, "t1.nii", "t2.nii") == ("t2.nii", "t1.nii")


def test_an_unknown_direction_is_a_clear_input_error():
    with pytest.raises(InputError, match="direction 't1-to-flair' is not one of t1-to-t2, t2-to-t1"):
        c.target_contrast("t1-to-flair")


def test_normalisation_defaults_are_those_of_the_checkpoints():
    assert (c.PERCENTILE_LOW, c.PERCENTILE_HIGH) == (0.5, 99.5)
    metadata = ModelMetadata(architecture="baseline", config={}, direction=c.T2_TO_T1)
    assert metadata.percentiles == (0.5, 99.5)
    assert (metadata.source_contrast, metadata.target_contrast) == ("T2", "T1")
    assert ModelMetadata(architecture="baseline", config={}, direction=c.T1_TO_T2,
                         normalisation={"low": 1, "high": 99}).percentiles == (1, 99)


def test_training_uses_the_shipped_models_foreground_threshold():
    import inspect

    from Training.config import DataConfig
    from Training.data.cache import SliceCache

    assert c.MIN_TRAINING_FOREGROUND == DataConfig().min_foreground == 0.05
    assert inspect.signature(SliceCache.build).parameters["min_foreground"].default == 0.05


def _code_constants(path: Path):
    """String and number constants of a file, docstrings excluded."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and id(node) not in docstrings]


def test_direction_strings_and_percentiles_are_defined_only_in_conventions():
    offending = {}
    for folder in CODE:
        for path in (REPO / folder).rglob("*.py"):
            if path.name == "conventions.py" and path.parent.name == "MRISynthesisLib":
                continue
            found = [v for v in _code_constants(path) if v in ("t1-to-t2", "t2-to-t1") or
                     (isinstance(v, float) and v == 99.5)]
            if found:
                offending[path.relative_to(REPO).as_posix()] = found
    assert offending == {}
