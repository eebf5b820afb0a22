"""Alignment: preferences (people's or a simulated annotator's), the reward model, PPO, DPO, GRPO, RLOO.

    from scratchlm.align import load_reward_config, train_reward, load_ppo_config, ppo
    train_reward(load_reward_config("reward-sentiment-char", ["base=runs/sft", "prefs=p.jsonl"]), "runs/rm")
    ppo(load_ppo_config("ppo-sentiment-char", ["policy=runs/sft", "reward=runs/rm"]), "runs/ppo")
    # likewise dpo(load_dpo_config(...)), grpo(load_grpo_config(...)); read_preferences, get_judge, rollout

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
    "RewardConfig": "scratchlm.align.reward_config",
    "load_reward_config": "scratchlm.align.reward_config",
    "train_reward": "scratchlm.align.reward_objective",
    "check_same_tokenizer": "scratchlm.align.reward_objective",
    "PPOConfig": "scratchlm.align.ppo_config",
    "load_ppo_config": "scratchlm.align.ppo_config",
    "ppo": "scratchlm.align.ppo_objective",
    "DPOConfig": "scratchlm.align.dpo_config",
    "load_dpo_config": "scratchlm.align.dpo_config",
    "dpo": "scratchlm.align.dpo_objective",
    "GRPOConfig": "scratchlm.align.grpo_config",
    "load_grpo_config": "scratchlm.align.grpo_config",
    "grpo": "scratchlm.align.grpo_objective",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
