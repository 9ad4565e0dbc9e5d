"""DMoERM (arXiv 2403.01197): ``configuration_dmoerm.py`` (the config, no torch), ``modeling_dmoerm.py`` (the model,
its [`DMoERMRouter`] and [`CapabilityAggregator`]), ``training_stages.py`` and private helpers (``_*.py``).

The names below load on first use, so importing the package (or only the configuration) does not import torch.

Example:
    >>> from dmoerm_trl.models.dmoerm import DMoERMConfig
    >>> DMoERMConfig.model_type
    'dmoerm'
"""

_EXPORTS = {
    "DMoERMConfig": "configuration_dmoerm",
    "CapabilityAggregator": "modeling_dmoerm",
    "DMoERMForSequenceClassification": "modeling_dmoerm",
    "DMoERMOutput": "modeling_dmoerm",
    "DMoERMPreTrainedModel": "modeling_dmoerm",
    "DMoERMRouter": "modeling_dmoerm",
    "PromptBoundaryError": "_prompt_boundary",
}

__all__ = [
    "CapabilityAggregator",
    "DMoERMConfig",
    "DMoERMForSequenceClassification",
    "DMoERMOutput",
    "DMoERMPreTrainedModel",
    "DMoERMRouter",
    "PromptBoundaryError",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
