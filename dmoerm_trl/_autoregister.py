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

    configuration = importlib.import_module("dmoerm_trl.models.dmoerm.configuration_dmoerm")
    config_class = getattr(configuration, "DMoERMConfig", None)
    if config_class is None:  # the configuration module is loading (its own import loaded AutoConfig): it registers
        return  # itself at its end
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)


def _register_models() -> None:
    importlib.import_module(
        "dmoerm_trl.models.dmoerm.modeling_dmoerm"
    )  # registers DMoERM with AutoConfig/AutoModelFor...
    importlib.import_module("dmoerm_trl.rl.ensemble")  # registers the reward ensemble


_REGISTER = {CONFIG_AUTO: _register_config, MODELING_AUTO: _register_models}
# Registration imports these libraries' modules, so it waits until none of them is half-imported (e.g. transformers'
# trainer_utils imports modeling_auto while it loads): it runs at the end of the outermost such import.
# The model's own modules import transformers while they load: a registration they set off waits for them too (else
# it would import a half-loaded module of theirs), and runs at the end of the outermost one.
_LIBRARIES = ("transformers", "peft", "trl", "accelerate", "datasets")
_OWN = "dmoerm_trl.models"
_pending: list[str] = []


def _watched(name: str) -> bool:
    return name.split(".")[0] in _LIBRARIES or name == _OWN or name.startswith(_OWN + ".")


def _busy(skip: str) -> bool:
    for name, module in list(sys.modules.items()):
        if name != skip and _watched(name):
            spec = getattr(module, "__spec__", None)
            if spec is not None and getattr(spec, "_initializing", False):
                return True
    return False


def _done() -> bool:
    return not _pending and all(name in sys.modules for name in _REGISTER)


def _flush(skip: str = "") -> None:
    while _pending and not _busy(skip):
        _REGISTER[_pending.pop(0)]()


class _AfterLoad(importlib.abc.Loader):
    def __init__(self, loader, name: str):
        self.loader, self.name = loader, name

    def __getattr__(self, name):  # get_source, get_resource_reader, is_package ... of the real loader
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        if self.name in _REGISTER:
            _pending.append(self.name)
        if _pending:
            _flush(skip=self.name)


class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if not _watched(name) or _done():
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _AfterLoad(spec.loader, name)
        return spec


def install() -> None:
    """Register now for what transformers already loaded; register the rest when it loads."""
    if not any(isinstance(finder, _Hook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Hook())
    for name in _REGISTER:
        if name in sys.modules and name not in _pending:
            _pending.append(name)
    _flush()
