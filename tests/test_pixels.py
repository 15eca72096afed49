"""One conversion between stored pixels (uint8 [0, 255]) and the models' range (float [-1, 1]):
:mod:`alchemist_pl.pixels`, used by every module that feeds images to a model."""

import ast
from pathlib import Path

import torch

from alchemist_pl.pixels import to_model_range, to_uint8

PACKAGE = Path(__file__).resolve().parents[1] / "alchemist_pl"


def test_every_uint8_value_round_trips():
    values = torch.arange(256, dtype=torch.uint8)
    x = to_model_range(values)
    assert x.dtype == torch.float32 and x[0] == -1 and x[-1] == 1 and (x.diff() > 0).all()
    assert torch.equal(to_uint8(x), values)


def test_a_dataset_item_is_its_pixels_in_model_range(small_split):
    for i in (0, len(small_split) - 1):
        assert torch.equal(small_split[i]["image"], to_model_range(small_split.images[i]))


def test_no_module_converts_pixels_inline():
    """The scale 127.5 (255 / 2) appears in pixels.py alone: another module that writes it out
    converts pixels itself instead of calling to_model_range / to_uint8."""
    inline = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "pixels.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value == 127.5:
                inline.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not inline, f"inline pixel conversion (use alchemist_pl.pixels): {inline}"
