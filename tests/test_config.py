from dataclasses import dataclass, field

import pytest

from scratchlm.config import load_config, save_config
from scratchlm.errors import ScratchError


@dataclass
class Inner:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])


@dataclass
class Outer:
    name: str = "x"
    steps: int = 10
    inner: Inner = field(default_factory=Inner)


def test_yaml_then_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps: 20\ninner:\n  lr: 0.01\n")
    cfg = load_config(Outer, recipe, ["inner.lr=3e-3", "name=run"])
    assert cfg.steps == 20 and cfg.inner.lr == pytest.approx(3e-3) and cfg.name == "run"
    assert cfg.inner.betas == [0.9, 0.95]
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(Outer, tmp_path / "resolved.yaml") == cfg


def test_unknown_key_and_bad_type_are_errors(tmp_path):
    with pytest.raises(ScratchError, match="unknown key inner.lrr"):
        load_config(Outer, None, ["inner.lrr=1"])
    with pytest.raises(ScratchError, match="steps must be int"):
        load_config(Outer, None, ["steps=abc"])
    with pytest.raises(ScratchError, match="expected key=value"):
        load_config(Outer, None, ["steps"])
