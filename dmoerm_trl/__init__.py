"""dmoerm-trl: DMoERM (Double-Layer Mixture-of-Experts Reward Model, arXiv 2403.01197) for Hugging Face TRL."""

__version__ = "0.1.0.dev0"
