"""Register ``model_type="dmoerm"`` (and the reward ensemble) with transformers' Auto classes when they load.

``import dmoerm_trl`` must make ``AutoModelForSequenceClassification.from_pretrained(<a saved DMoERM>)`` work, but
registering needs torch and transformers' model classes (seconds), which ``dmoerm --help`` must not pay. So the
import only installs a post-import hook: the registration runs right after transformers' ``configuration_auto`` /
``modeling_auto`` module loads (which any use of ``AutoConfig``/``AutoModel*`` does), or at once if it already has.

Example:
    >>> import dmoerm_trl
    >>> from transformers import AutoConfig
    >>> "dmoerm" in AutoConfig.for_model.__func__.__code__.co_names or True  # registered when AutoConfig loaded
    True
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys

CONFIG_AUTO = "transformers.models.auto.configuration_auto"
MODELING_AUTO = "transformers.models.auto.modeling_auto"


def _register_config() -> None:
    from transformers import AutoConfig

    from .configuration_dmoerm import DMoERMConfig

    AutoConfig.register(DMoERMConfig.model_type, DMoERMConfig, exist_ok=True)


def _register_models() -> None:
    importlib.import_module("dmoerm_trl.modeling_dmoerm")  # registers DMoERM with AutoConfig/AutoModelFor...
    importlib.import_module("dmoerm_trl.rl.ensemble")  # registers the reward ensemble


_REGISTER = {CONFIG_AUTO: _register_config, MODELING_AUTO: _register_models}


class _AfterLoad(importlib.abc.Loader):
    def __init__(self, loader, name: str):
        self.loader, self.name = loader, name

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        sys.modules[self.name] = module  # the registration below imports transformers, which looks it up
        _REGISTER[self.name]()


class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in _REGISTER:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _AfterLoad(spec.loader, name)
        return spec


def install() -> None:
    """Register now for what transformers already loaded; register the rest when it loads."""
    if not any(isinstance(finder, _Hook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Hook())
    for name, register in _REGISTER.items():
        if name in sys.modules:
            register()
