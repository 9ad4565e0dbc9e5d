"""dmoerm-trl: DMoERM (Double-Layer Mixture-of-Experts Reward Model, arXiv 2403.01197) for Hugging Face TRL.

Importing this package registers ``model_type="dmoerm"`` (and the reward ensemble) with ``AutoConfig`` and
``AutoModelForSequenceClassification``, so saved models load without ``trust_remote_code``. Registration needs
transformers' model classes, so the import costs what importing transformers costs (a few seconds on a small CPU).
"""

__version__ = "0.1.0.dev0"

from .configuration_dmoerm import DMoERMConfig
from .modeling_dmoerm import CapabilityAggregator, DMoERMForSequenceClassification, DMoERMOutput
from .rl import BestOfNSampler, GoldRewardCallback, RewardEnsemble, RewardScorer

__all__ = [
    "BestOfNSampler",
    "CapabilityAggregator",
    "DMoERMConfig",
    "DMoERMForSequenceClassification",
    "DMoERMOutput",
    "GoldRewardCallback",
    "RewardEnsemble",
    "RewardScorer",
    "__version__",
]
