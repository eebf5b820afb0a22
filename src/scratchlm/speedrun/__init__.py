"""The speedrun: one command from raw text to an aligned chat model, with a report card.

    from scratchlm.speedrun import speedrun
    speedrun("tiny", "runs/tiny")                 # every stage at toy size, about 2 minutes on 2 CPU cores
    speedrun("laptop", "runs/sr", corpus="../shared/data/english", chat=["../shared/data/chitchat"])

The pipeline is data (`configs/speedrun-*.yaml`, `scratchlm.speedrun.recipe`); each stage is the API
its own command calls (`scratchlm.speedrun.stages`); stages are cached by fingerprint and resume after a
kill (`scratchlm.speedrun.run`); the eval stage measures the report card's figures
(`scratchlm.speedrun.evaluation`), the report stage writes it (`scratchlm.speedrun.card`).
"""

from scratchlm.speedrun.recipe import PRESETS, STAGES, load_recipe
from scratchlm.speedrun.run import speedrun, stage_record

__all__ = ["PRESETS", "STAGES", "load_recipe", "speedrun", "stage_record"]
