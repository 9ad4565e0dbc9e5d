"""DMoERM in RL: TRL PPO, GRPO and RLOO with DMoERM (or any reward model) as the reward, best-of-n sampling,
reward-model ensembles, and reward-overoptimization tracking against a gold reward model.

Example:
    >>> from dmoerm_trl.rl import BestOfNSampler, GoldRewardCallback, RewardEnsemble, RewardScorer
"""

from __future__ import annotations

from .best_of_n import (
    BestOfNEvaluation,
    BestOfNOutput,
    BestOfNSampler,
    best_of_n_curve,
    best_of_n_curves,
    best_of_n_gain,
    best_of_n_gains,
    expected_best_of_n,
    nan_gold_counts,
)
from .checks import check_reward_model_ready, check_tokenizers_match
from .ensemble import RewardEnsemble, RewardEnsembleConfig, RewardEnsembleOutput
from .gold_callback import GoldRewardCallback
from .overoptimization import GaoFit, bon_kl, fit_gao, fit_records, plot_overoptimization, read_records_csv
from .ppo import PPO_SUPPORTED_RANGE, PPOUnavailableError, is_ppo_available, require_ppo
from .remote import RemoteReward, RemoteRewardError
from .scoring import RewardScorer

__all__ = [
    "PPO_SUPPORTED_RANGE",
    "BestOfNEvaluation",
    "BestOfNOutput",
    "BestOfNSampler",
    "GaoFit",
    "GoldRewardCallback",
    "PPOUnavailableError",
    "RemoteReward",
    "RemoteRewardError",
    "RewardEnsemble",
    "RewardEnsembleConfig",
    "RewardEnsembleOutput",
    "RewardScorer",
    "best_of_n_curve",
    "best_of_n_curves",
    "best_of_n_gain",
    "best_of_n_gains",
    "bon_kl",
    "check_reward_model_ready",
    "check_tokenizers_match",
    "expected_best_of_n",
    "fit_gao",
    "fit_records",
    "is_ppo_available",
    "nan_gold_counts",
    "plot_overoptimization",
    "read_records_csv",
    "require_ppo",
]
