"""Training: the Trainer every stage shares, the pretraining objective, run folders, checkpoints, the demo.

    from scratchlm.train import load_pretrain_config, pretrain
    cfg = load_pretrain_config("configs/shakespeare-char.yaml", ["budget.max_time=150s"])
    result = pretrain(cfg, "runs/shakespeare")  # RUN/{config.yaml, metrics.jsonl, checkpoints/, final/}
    result = pretrain(cfg, "runs/shakespeare", resume=True)  # continue from the newest intact checkpoint

Imports are lazy (PEP 562): `scratchlm.train.optim` is importable on its own without pulling in the loop.
"""

from __future__ import annotations

from scratchlm.lazy import lazy_exports

_EXPORTS = {
    "PretrainConfig": "scratchlm.train.config",
    "load_pretrain_config": "scratchlm.train.config",
    "pretrain": "scratchlm.train.causal_lm",
    "RunResult": "scratchlm.train.trainer",
    "Trainer": "scratchlm.train.trainer",
    "TrainerConfig": "scratchlm.train.config",
    "RunDir": "scratchlm.train.run_dir",
    "StepBatches": "scratchlm.train.objective",
    "run_demo": "scratchlm.train.demo",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
