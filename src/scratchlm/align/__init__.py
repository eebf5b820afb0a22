"""Alignment: preferences (people's or a simulated annotator's), the reward model, PPO, DPO, GRPO, RLOO.

    from scratchlm.align import read_preferences, get_judge, Annotator, rollout, RewardModel

Each method is an objective of the one trainer (`scratchlm.train.trainer`); see docs/design-align.md.
"""

from __future__ import annotations

from scratchlm.lazy import lazy_exports

_EXPORTS = {
    "Pair": "scratchlm.align.preferences",
    "Preferences": "scratchlm.align.preferences",
    "read_preferences": "scratchlm.align.preferences",
    "append_record": "scratchlm.align.preferences",
    "remove_last_record": "scratchlm.align.preferences",
    "Annotator": "scratchlm.align.annotators",
    "get_judge": "scratchlm.align.annotators",
    "tau_for_ceiling": "scratchlm.align.annotators",
    "agreement_ceiling": "scratchlm.align.annotators",
    "read_prompts": "scratchlm.align.prompts",
    "sample_answers": "scratchlm.align.simulate",
    "simulate_preferences": "scratchlm.align.simulate",
    "Rollout": "scratchlm.align.rollout",
    "rollout": "scratchlm.align.rollout",
    "token_logprobs": "scratchlm.align.rollout",
    "RewardModel": "scratchlm.align.reward",
    "load_reward_model": "scratchlm.align.reward",
    "save_reward_model": "scratchlm.align.reward",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
