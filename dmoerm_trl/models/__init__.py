"""Model definitions, one subpackage per model (like ``transformers.models``): ``dmoerm``."""
