"""Reward-model ensembles as a baseline against reward overoptimization (Coste et al., 2023, arXiv 2310.02743).

``RewardEnsemble(models, mode=...)`` combines the ``(B,)`` rewards of its members:

- ``"mean"``: the mean of the members' rewards;
- ``"wco"`` (worst-case optimization): the minimum;
- ``"uwo"`` (uncertainty-weighted optimization): mean minus ``uwo_lambda`` times the (population) variance.

Members are trained separately, so each has its own offset and scale (the pairwise loss fixes neither): combined
raw, WCO nearly always picks the member with the lowest offset and UWO's variance penalty measures the offsets, not
disagreement (docs/benchmarks.md, "Fidelity"; docs/rl.md). :meth:`RewardEnsemble.standardize` (on reference texts, e.g. the
members' training texts or policy samples) stores each member's mean and standard deviation in the ensemble's config
(saved and loaded with it); from then on every mode combines the members' *standardised* rewards (``member_rewards``
in the outputs stay raw). Without it the members are combined raw, as before.

It is a ``PreTrainedModel`` usable wherever a DMoERM is: ``forward`` returns ``logits`` ``(B, 1)`` (plus
``member_rewards`` ``(B, M)``), so it works as a GRPO/RLOO ``reward_funcs`` entry (it has a ``.config``) and in
best-of-n; it meets TRL PPO's reward contract through the parameter-free ``SequenceRewardView`` and
``BroadcastRewardScore`` of ``dmoerm_trl/models/dmoerm/_ppo_reward_view.py``. Members may be DMoERMs, any HF sequence-classification
reward models, or ensembles.

Tokenizers: the token-id paths (``forward``, PPO) give every member the same ids, so the members must share one
tokenizer. Members with different tokenizers work only on the text paths: pass ``tokenizers=[...]`` (one per member)
and score through :class:`~dmoerm_trl.rl.RewardScorer` (best-of-n, the gold callback) or, for GRPO/RLOO, through
``ensemble.as_reward_function()``, which re-tokenizes the text for each member.

Example:
    >>> from dmoerm_trl.rl import RewardEnsemble
    >>> ensemble = RewardEnsemble([rm_a, rm_b, rm_c], mode="uwo", uwo_lambda=0.5)   # doctest: +SKIP
    >>> ensemble.standardize(reference_prompts, reference_completions, tokenizer)    # doctest: +SKIP
    >>> ensemble(**tokenizer(texts, return_tensors="pt", padding=True)).logits       # doctest: +SKIP
    tensor([[0.12], [-0.40]])
    >>> ensemble.save_pretrained("my-ensemble"); RewardEnsemble.from_pretrained("my-ensemble")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from ..models.dmoerm._ppo_reward_view import BroadcastRewardScore, SequenceRewardView
from ..utils.io import apply_umask, atomic_write_text
from .checks import check_reward_logits, check_reward_model_ready
from .scoring import eval_mode

ENSEMBLE_MODES = ("mean", "wco", "uwo")
MEMBER_DIR = "member_{index}"


class RewardEnsembleConfig(PretrainedConfig):
    """Configuration of a :class:`RewardEnsemble`.

    Args:
        mode: ``"mean"``, ``"wco"`` (minimum) or ``"uwo"`` (mean - ``uwo_lambda`` * variance).
        uwo_lambda: the variance penalty of ``"uwo"``.
        num_members: number of member reward models (saved in ``member_0/``, ``member_1/``, ...).
        member_model_types: the members' ``model_type`` (informational).
        member_means, member_stds: each member's reward mean and standard deviation on reference texts (set by
            :meth:`RewardEnsemble.standardize`); when set, members are standardised before they are combined.
        num_reference_texts: how many reference texts the statistics come from (informational).
    """

    model_type = "dmoerm_reward_ensemble"

    def __init__(
        self,
        mode: str = "mean",
        uwo_lambda: float = 0.5,
        num_members: int = 0,
        member_model_types: list[str] | None = None,
        member_means: list[float] | None = None,
        member_stds: list[float] | None = None,
        num_reference_texts: int = 0,
        **kwargs,
    ):
        if mode not in ENSEMBLE_MODES:
            raise ValueError(f"RewardEnsemble mode must be one of {ENSEMBLE_MODES}, got {mode!r}")
        if uwo_lambda < 0:
            raise ValueError(f"uwo_lambda must be >= 0 (a variance penalty), got {uwo_lambda}")
        kwargs.setdefault("num_labels", 1)
        self.mode = mode
        self.uwo_lambda = float(uwo_lambda)
        self.num_members = num_members
        self.member_model_types = list(member_model_types or [])
        if (member_means is None) != (member_stds is None):
            raise ValueError("member_means and member_stds are set together (RewardEnsemble.standardize)")
        if member_stds is not None and (len(member_stds) != len(member_means) or min(member_stds) <= 0):
            raise ValueError(f"member_stds must be positive, one per member mean; got {member_stds}")
        self.member_means = [float(v) for v in member_means] if member_means is not None else None
        self.member_stds = [float(v) for v in member_stds] if member_stds is not None else None
        self.num_reference_texts = int(num_reference_texts)
        super().__init__(**kwargs)


@dataclass
class RewardEnsembleOutput(ModelOutput):
    """``logits`` ``(B, 1)``: the combined reward; ``member_rewards`` ``(B, M)``: each member's reward."""

    logits: torch.FloatTensor | None = None
    member_rewards: torch.FloatTensor | None = None


def last_attended_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row (works for left, right and mixed padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(-1)


def _has_ppo_contract(model: nn.Module) -> bool:
    prefix = getattr(model, "base_model_prefix", None)
    return (
        bool(prefix)
        and isinstance(getattr(model, prefix, None), nn.Module)
        and callable(getattr(model, "score", None))
    )


class RewardEnsemble(PreTrainedModel):
    """A reward model whose reward combines several reward models' rewards (mean, worst case or mean - lambda var).

    Args:
        models: the member reward models (``PreTrainedModel`` with ``logits`` ``(B, 1)``; DMoERMs, HF
            sequence-classification models, ensembles).
        mode: ``"mean"``, ``"wco"`` or ``"uwo"``.
        uwo_lambda: variance penalty for ``"uwo"``.
        tokenizers: optional, one tokenizer per member, for members with different tokenizers (text paths only).
        config: a ``RewardEnsembleConfig`` (built from ``mode``/``uwo_lambda`` when omitted).
    """

    config_class = RewardEnsembleConfig
    base_model_prefix = "reward_view"  # TRL PPO calls getattr(model, base_model_prefix)(...) then model.score(...)
    supports_gradient_checkpointing = False

    def __init__(
        self,
        models: Sequence[nn.Module] | RewardEnsembleConfig,
        mode: str = "mean",
        uwo_lambda: float = 0.5,
        tokenizers: Sequence | None = None,
        config: RewardEnsembleConfig | None = None,
    ):
        if isinstance(models, PretrainedConfig):
            raise TypeError(
                "RewardEnsemble is built from its member models: RewardEnsemble([rm_a, rm_b], mode='mean'); "
                "to load a saved ensemble use RewardEnsemble.from_pretrained(folder)"
            )
        models = list(models)
        if not models:
            raise ValueError("a RewardEnsemble needs at least one member reward model")
        for i, member in enumerate(models):
            check_reward_model_ready(member, name=f"ensemble member {i}")
        if config is not None and config.member_means is not None and len(config.member_means) != len(models):
            raise ValueError(f"the config standardises {len(config.member_means)} members but {len(models)} are given")
        if tokenizers is not None and len(tokenizers) != len(models):
            raise ValueError(f"{len(tokenizers)} tokenizers for {len(models)} members; pass one tokenizer per member")
        if config is None:
            config = RewardEnsembleConfig(
                mode=mode,
                uwo_lambda=uwo_lambda,
                num_members=len(models),
                member_model_types=[getattr(getattr(m, "config", None), "model_type", "?") for m in models],
                pad_token_id=getattr(getattr(models[0], "config", None), "pad_token_id", None),
            )
        super().__init__(config)
        self.post_init()  # before the members are attached: post_init may (re)initialise weights
        self.members = nn.ModuleList(models)
        self.tokenizers = list(tokenizers) if tokenizers is not None else None
        self.reward_view = SequenceRewardView(self)
        self.score = BroadcastRewardScore()

    # ------------------------------------------------------------------------------------------------ combine
    @property
    def mode(self) -> str:
        return self.config.mode

    @property
    def is_standardized(self) -> bool:
        return self.config.member_means is not None

    def standardize(self, prompts, completions, tokenizer=None, batch_size: int = 16) -> RewardEnsemble:
        """Score reference texts with every member and store each member's mean and standard deviation, so that
        mean / WCO / UWO combine rewards on one scale. Returns the ensemble.

        Args:
            prompts, completions: the reference texts (as for :class:`~dmoerm_trl.rl.RewardScorer`: one prompt per
                completion), e.g. the members' training texts or samples of the policy to be optimised.
            tokenizer: the members' shared tokenizer (not needed when the ensemble was built with ``tokenizers=``).

        Example:
            >>> ensemble = RewardEnsemble([rm_a, rm_b], mode="wco")  # doctest: +SKIP
            >>> ensemble.standardize(["What is 2+2?"] * 2, [" 4", " 5"], tokenizer).config.member_means  # doctest: +SKIP
            [0.31, 2.87]
        """
        from .scoring import RewardScorer

        if tokenizer is None and self.tokenizers is None:
            raise ValueError("standardize() needs tokenizer= (or an ensemble built with tokenizers=[...])")
        scorers = [
            RewardScorer(
                member,
                tokenizer if tokenizer is not None else self.tokenizers[i],
                batch_size,
                name=f"ensemble member {i}",
            )
            for i, member in enumerate(self.members)
        ]
        return self.set_member_statistics(torch.stack([scorer(prompts, completions) for scorer in scorers], dim=-1))

    def set_member_statistics(self, member_rewards: torch.Tensor, min_std: float = 1e-6) -> RewardEnsemble:
        """Store each member's mean and standard deviation over ``(N, M)`` raw member rewards (e.g. cached scores
        of reference texts); see :meth:`standardize`."""
        member_rewards = torch.as_tensor(member_rewards, dtype=torch.float64)
        if member_rewards.dim() != 2 or member_rewards.shape[1] != len(self.members) or member_rewards.shape[0] < 2:
            raise ValueError(
                f"member statistics need (N >= 2, {len(self.members)}) rewards, got {tuple(member_rewards.shape)}"
            )
        if not torch.isfinite(member_rewards).all():
            raise ValueError("member rewards on the reference texts contain NaN or inf")
        self.config.member_means = member_rewards.mean(0).tolist()
        self.config.member_stds = member_rewards.std(0).clamp(min=min_std).tolist()
        self.config.num_reference_texts = int(member_rewards.shape[0])
        return self

    def combine(self, member_rewards: torch.Tensor) -> torch.Tensor:
        """``(B, M)`` member rewards -> ``(B,)`` ensemble reward, by ``config.mode`` (members standardised first when
        the ensemble has member statistics)."""
        if member_rewards.dim() != 2 or member_rewards.shape[1] != len(self.members):
            raise ValueError(f"member rewards must be (B, {len(self.members)}), got {tuple(member_rewards.shape)}")
        if self.config.member_means is not None:
            means = torch.tensor(self.config.member_means, dtype=member_rewards.dtype, device=member_rewards.device)
            stds = torch.tensor(self.config.member_stds, dtype=member_rewards.dtype, device=member_rewards.device)
            member_rewards = (member_rewards - means) / stds
        if self.config.mode == "mean":
            return member_rewards.mean(-1)
        if self.config.mode == "wco":
            return member_rewards.min(-1).values
        return member_rewards.mean(-1) - self.config.uwo_lambda * member_rewards.var(-1, unbiased=False)

    def _members_eval_if_no_grad(self) -> ExitStack:
        # TRL calls reward models under no_grad but in training mode; score them like in eval mode (no dropout).
        stack = ExitStack()
        if not torch.is_grad_enabled():
            stack.enter_context(eval_mode(self))
        return stack

    # ------------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> RewardEnsembleOutput:
        """Ensemble reward of each sequence: ``logits`` ``(B, 1)`` and ``member_rewards`` ``(B, M)``.

        Every member gets the same ``input_ids``; ``**kwargs`` (TRL's ``use_cache=``, ``margin=``) are ignored,
        except ``prompt_mask``, passed on to DMoERM members (their router reads the prompt only).
        """
        if input_ids is None:
            raise ValueError("RewardEnsemble needs input_ids")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        batch_size = input_ids.shape[0]
        with self._members_eval_if_no_grad():
            member_rewards = []
            for i, member in enumerate(self.members):
                member_kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
                if position_ids is not None:
                    member_kwargs["position_ids"] = position_ids
                if kwargs.get("prompt_mask") is not None and getattr(member.config, "model_type", None) == "dmoerm":
                    member_kwargs["prompt_mask"] = kwargs["prompt_mask"]
                output = member(**member_kwargs)
                member_rewards.append(check_reward_logits(output.logits, batch_size, f"ensemble member {i}"))
            member_rewards = torch.stack([r.float() for r in member_rewards], dim=-1)
        logits = self.combine(member_rewards).unsqueeze(-1)
        return RewardEnsembleOutput(logits=logits, member_rewards=member_rewards)

    @torch.no_grad()
    def sequence_rewards(self, input_ids, attention_mask=None, position_ids=None) -> torch.Tensor:
        """``(B,)`` ensemble rewards for TRL PPO's contract (ids may be left-padded with pads masked to 0).

        Members that meet the PPO contract themselves are called through it (so each reads its value at the last
        real token exactly as PPO would read it alone); others get their pads restored and a normal forward.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.long()
        if position_ids is None:
            position_ids = (attention_mask.cumsum(1) - attention_mask).clamp(min=0)
        last = last_attended_index(attention_mask)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        with self._members_eval_if_no_grad():
            member_rewards = []
            for i, member in enumerate(self.members):
                if _has_ppo_contract(member):
                    backbone = getattr(member, member.base_model_prefix)
                    output = backbone(
                        input_ids=input_ids,
                        attention_mask=attention_mask,
                        position_ids=position_ids,
                        return_dict=True,
                        output_hidden_states=True,
                        use_cache=False,
                    )
                    values = member.score(output.hidden_states[-1])
                    member_rewards.append(values[rows, last, 0].float())
                else:
                    pad_id = getattr(member.config, "pad_token_id", None)
                    ids = input_ids if pad_id is None else input_ids.masked_fill(attention_mask == 0, pad_id)
                    output = member(input_ids=ids, attention_mask=attention_mask)
                    member_rewards.append(check_reward_logits(output.logits, len(ids), f"ensemble member {i}").float())
        return self.combine(torch.stack(member_rewards, dim=-1))

    def get_input_embeddings(self):
        return self.members[0].get_input_embeddings()

    def as_reward_function(self):
        """A TRL reward function over text, re-tokenizing for each member (needs ``tokenizers=``)."""
        from .scoring import RewardScorer

        if self.tokenizers is None:
            raise ValueError(
                "as_reward_function() re-tokenizes text for each member and needs RewardEnsemble(..., "
                "tokenizers=[...]); with one shared tokenizer pass the ensemble itself as reward_funcs= with "
                "reward_processing_classes=tokenizer"
            )
        return RewardScorer(self, name=f"ensemble_{self.config.mode}").as_reward_function()

    # -------------------------------------------------------------------------------------------------- files
    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True, **kwargs) -> None:
        """Save each member (and its tokenizer, when given) in ``member_<i>/`` and the ensemble config last."""
        if kwargs.pop("push_to_hub", False):
            raise ValueError("push each member, or save the ensemble and upload the folder")
        if not is_main_process:
            return
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        for i, member in enumerate(self.members):
            member_folder = folder / MEMBER_DIR.format(index=i)
            member.save_pretrained(member_folder)
            if self.tokenizers is not None:
                self.tokenizers[i].save_pretrained(member_folder)
            apply_umask(member_folder)  # save_pretrained writes safetensors files 0o600
        self.config.num_members = len(self.members)
        # config.json last and atomically: a folder with a config.json is a complete ensemble.
        atomic_write_text(folder / "config.json", self.config.to_json_string())

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args, **kwargs) -> RewardEnsemble:
        """Load an ensemble saved by :meth:`save_pretrained` (each member with ``AutoModelForSequenceClassification``,
        so DMoERM members load too once ``dmoerm_trl`` is imported). Member tokenizers are loaded when saved."""
        import dmoerm_trl  # noqa: F401  (registers DMoERM with the Auto classes)

        folder = Path(pretrained_model_name_or_path)
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{folder} has no config.json: not a saved RewardEnsemble folder")
        config_dict = json.loads(config_file.read_text())
        if config_dict.get("model_type") != RewardEnsembleConfig.model_type:
            raise ValueError(
                f"{config_file} has model_type {config_dict.get('model_type')!r}, not "
                f"{RewardEnsembleConfig.model_type!r}; load it with AutoModelForSequenceClassification"
            )
        kwargs.pop("config", None)
        member_kwargs = {k: v for k, v in kwargs.items() if k in ("dtype", "torch_dtype", "device_map")}
        config = RewardEnsembleConfig.from_dict(config_dict)
        members, tokenizers = [], []
        for i in range(config.num_members):
            member_folder = folder / MEMBER_DIR.format(index=i)
            if not member_folder.is_dir():
                raise FileNotFoundError(f"{member_folder} is missing: the ensemble config lists {config.num_members}")
            members.append(AutoModelForSequenceClassification.from_pretrained(member_folder, **member_kwargs))
            tokenizers.append(_load_tokenizer_if_saved(member_folder))
        have_tokenizers = all(t is not None for t in tokenizers)
        ensemble = cls(members, tokenizers=tokenizers if have_tokenizers else None, config=config)
        ensemble.config._name_or_path = str(folder)
        return ensemble


def _load_tokenizer_if_saved(folder: Path):
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def is_saved_ensemble(path: str | os.PathLike) -> bool:
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return False
    try:
        return json.loads(config_file.read_text()).get("model_type") == RewardEnsembleConfig.model_type
    except json.JSONDecodeError:
        return False


AutoConfig.register(RewardEnsembleConfig.model_type, RewardEnsembleConfig, exist_ok=True)
AutoModelForSequenceClassification.register(RewardEnsembleConfig, RewardEnsemble, exist_ok=True)
