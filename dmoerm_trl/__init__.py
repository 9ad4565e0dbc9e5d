"""dmoerm-trl: DMoERM (Double-Layer Mixture-of-Experts Reward Model, arXiv 2403.01197) for Hugging Face TRL.

Importing this package registers ``model_type="dmoerm"`` (and the reward ensemble) with ``AutoConfig`` and
``AutoModelForSequenceClassification``, so saved models load without ``trust_remote_code``. The import itself is
light (``dmoerm --help`` needs no torch): the classes below load on first use, and the registration runs when
transformers' Auto classes load (``dmoerm_trl/_autoregister.py``).

Example:
    >>> import dmoerm_trl
    >>> dmoerm_trl.DMoERMConfig.model_type
    'dmoerm'
"""

__version__ = "0.1.0.dev0"

from . import _autoregister

_autoregister.install()

_EXPORTS = {
    "DMoERMConfig": "dmoerm_trl.models.dmoerm.configuration_dmoerm",
    "CapabilityAggregator": "dmoerm_trl.models.dmoerm.modeling_dmoerm",
    "DMoERMForSequenceClassification": "dmoerm_trl.models.dmoerm.modeling_dmoerm",
    "DMoERMOutput": "dmoerm_trl.models.dmoerm.modeling_dmoerm",
    "DMoERMRouter": "dmoerm_trl.models.dmoerm.modeling_dmoerm",
    "PromptBoundaryError": "dmoerm_trl.models.dmoerm._prompt_boundary",
    "BestOfNSampler": "dmoerm_trl.rl",
    "GoldRewardCallback": "dmoerm_trl.rl",
    "RewardEnsemble": "dmoerm_trl.rl",
    "RewardScorer": "dmoerm_trl.rl",
}

__all__ = [
    "BestOfNSampler",
    "CapabilityAggregator",
    "DMoERMConfig",
    "DMoERMForSequenceClassification",
    "DMoERMOutput",
    "DMoERMRouter",
    "GoldRewardCallback",
    "PromptBoundaryError",
    "RewardEnsemble",
    "RewardScorer",
    "__version__",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dmoerm_trl' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
