"""dmoerm-trl: DMoERM (Double-Layer Mixture-of-Experts Reward Model, arXiv 2403.01197) for Hugging Face TRL.

Importing this package registers ``model_type="dmoerm"`` with ``AutoConfig`` and
``AutoModelForSequenceClassification``, so saved models load without ``trust_remote_code``.
"""

__version__ = "0.1.0.dev0"

from .configuration_dmoerm import DMoERMConfig
from .modeling_dmoerm import CapabilityAggregator, DMoERMForSequenceClassification, DMoERMOutput

__all__ = ["CapabilityAggregator", "DMoERMConfig", "DMoERMForSequenceClassification", "DMoERMOutput", "__version__"]
