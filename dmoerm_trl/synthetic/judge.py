"""The capability judge of the synthetic world: an OpenAI-compatible HTTP server on 127.0.0.1 that answers the
labeler's prompts (``per_capability`` and ``joint``, English and Chinese built-in templates) by measuring the two
responses in the prompt and saying which is better on the asked capability.

Like a real LLM judge it is imperfect, in a known way:

- each verdict is flipped with probability ``flip_rate`` (default 0.1), decided by a hash of
  (seed, item, capability, response shown first, response shown second): the same question always gets the same
  answer, and the two orders of a pair are flipped independently, so the labeler's position-swap filter removes
  real noise (``P(consistent) = (1 - p)^2 + p^2`` on capabilities where the responses differ);
- on a tie (both responses score the same on the capability) it prefers the response shown first (position
  bias), so both orders say "1" and the swap filter discards the pair (unless a flip makes them agree by chance,
  ``P = 2 p (1 - p)``).

The server is :class:`~dmoerm_trl.labeling.scripted_judge_server.ScriptedJudgeServer` (real HTTP, asyncio) with
:class:`CapabilityJudge` as its answer function.

Example:
    >>> from dmoerm_trl.synthetic.judge import capability_judge_server
    >>> with capability_judge_server(flip_rate=0.1, seed=0) as server:                       # doctest: +SKIP
    ...     config = LabelingConfig(data="synthetic/train.jsonl", categories="synthetic/categories.yaml",
    ...                             output="labels", model="synthetic-judge", base_url=server.base_url)
    ...     run_labeling(config)

    $ python -m dmoerm_trl.synthetic.judge --port 8000 --flip-rate 0.1     # prints "READY http://127.0.0.1:8000/v1"
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import signal
import threading
from collections import Counter
from collections.abc import Mapping

from .world import PromptInfo, SyntheticWorld

__all__ = ["CapabilityJudge", "capability_judge_server", "expected_consistency", "main"]

_EN_LAYOUT = re.compile(
    r"\[Conversation\]\n(?P<conversation>.*?)\n\[End of Conversation\].*?"
    r"\[Response 1\]\n(?P<first>.*?)\n\[End of Response 1\].*?\[Response 2\]\n(?P<second>.*?)\n\[End of Response 2\]",
    re.DOTALL,
)
_ZH_LAYOUT = re.compile(
    r"【提问】：(?P<conversation>.*?)\n【回复1】：(?P<first>.*?)\n【回复2】：(?P<second>.*?)(?=\n请只输出|$)",
    re.DOTALL,
)
_EN_SINGLE = re.compile(r"^Capability:\s*(.+?)\s*$", re.MULTILINE)
_ZH_SINGLE = re.compile(r"在【(.+?)】方面")
_LIST_ITEM = re.compile(r"^\s*[-*•]\s*([^:：\n]+?)\s*(?:[:：].*)?$", re.MULTILINE)


def _fold(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().casefold())


def expected_consistency(flip_rate: float, tie_fraction: float = 0.0) -> float:
    """The position-swap consistency rate this judge should show, given the fraction of tied (pair, capability)."""
    p = flip_rate
    return (1 - tie_fraction) * ((1 - p) ** 2 + p**2) + tie_fraction * 2 * p * (1 - p)


class CapabilityJudge:
    """Answers a chat completion body from the measured attributes of the two responses it compares.

    Args:
        world: the :class:`SyntheticWorld` (default: all categories).
        flip_rate: probability that a verdict is reversed (per pair, capability and order).
        seed: changes which verdicts are flipped.
        style: per_capability answers as ``"digit"`` (``"2"``) or ``"sentence"`` (``"Response 2 is better."``).

    ``stats`` counts ``answered``, ``flipped``, ``ties`` and what could not be answered (``unparsed`` prompts,
    ``unknown_capability``, ``unknown_conversation``).

    Example:
        >>> from dmoerm_trl.labeling.prompts import load_template
        >>> judge = CapabilityJudge(flip_rate=0.0)
        >>> messages = load_template("per_capability", "en").render(
        ...     prompt=[{"role": "user", "content": "What is the capital of France?"}],
        ...     response_1="It is Lyon, I think.", response_2="The capital of France is Paris.",
        ...     capabilities=["correctness"], spec=judge.world.category_spec())
        >>> judge({"messages": messages})
        '2'
    """

    def __init__(
        self, world: SyntheticWorld | None = None, *, flip_rate: float = 0.1, seed: int = 0, style: str = "digit"
    ):
        if not 0.0 <= flip_rate <= 1.0:
            raise ValueError(f"flip_rate={flip_rate}: must be in [0, 1].")
        if style not in ("digit", "sentence"):
            raise ValueError(f"style={style!r}: use 'digit' or 'sentence'.")
        self.world = world or SyntheticWorld()
        self.flip_rate, self.seed, self.style = flip_rate, seed, style
        self.stats: Counter = Counter()
        self._lock = threading.Lock()
        self._cache: dict[tuple[PromptInfo, str], dict[str, float]] = {}
        spec = self.world.category_spec()
        self._names: dict[str, dict[str, str]] = {}  # category -> {folded name: capability}
        for category, capabilities in self.world.categories.items():
            names = {}
            for capability in capabilities:
                for language in ("en", "zh"):
                    names[_fold(spec.capability_name(capability, language))] = capability
                names[_fold(capability)] = capability
            self._names[category] = names

    # -- the verdict --------------------------------------------------------------------------------------------------
    def is_flipped(self, item: str, capability: str, first: str, second: str) -> bool:
        """Whether the verdict on (``first``, ``second``) in this order is reversed (deterministic)."""
        payload = json.dumps([self.seed, item, capability, first, second], ensure_ascii=False)
        draw = int(hashlib.sha256(payload.encode("utf-8")).hexdigest()[:13], 16) / 16**13
        return draw < self.flip_rate

    def verdict(self, conversation, capability: str, first: str, second: str) -> int:
        """1 or 2: which response the judge calls better on ``capability`` (flips and position bias included)."""
        info = conversation if isinstance(conversation, PromptInfo) else self.world.identify(conversation)
        score_first, score_second = self._scores(info, first)[capability], self._scores(info, second)[capability]
        tie = score_first == score_second
        winner = 1 if tie or score_first > score_second else 2  # a tie: the first shown wins (position bias)
        flipped = self.is_flipped(f"{info.category}/{info.item}", capability, first, second)
        with self._lock:
            self.stats["ties"] += tie
            self.stats["flipped"] += flipped
        return 3 - winner if flipped else winner

    def _scores(self, info: PromptInfo, text: str) -> dict[str, float]:
        # Every response is asked about k capabilities in 2 orders: measure it once.
        key = (info, text)
        scores = self._cache.get(key)
        if scores is None:
            if len(self._cache) >= 100_000:
                self._cache.clear()
            scores = self._cache[key] = self.world.capability_scores(info, text)
        return scores

    # -- reading the prompt -------------------------------------------------------------------------------------------
    def _capability(self, category: str, name: str) -> str | None:
        names = self._names[category]
        folded = _fold(name)
        if folded in names:
            return names[folded]
        # "correctness (states the right answer...)": the longest known name at the start
        for known in sorted(names, key=len, reverse=True):
            if folded.startswith(known):
                return names[known]
        return None

    def _say(self, winner: int) -> str:
        return str(winner) if self.style == "digit" else f"Response {winner} is better."

    def _count(self, what: str) -> None:
        with self._lock:
            self.stats[what] += 1

    def answer_text(self, user: str) -> str:
        """The answer to one judge prompt (the user message of a built-in EN or ZH template)."""
        match = _EN_LAYOUT.search(user) or _ZH_LAYOUT.search(user)
        if match is None:
            self._count("unparsed")
            return "I cannot judge this request."
        conversation, first, second = match.group("conversation", "first", "second")
        info = self.world.find(conversation)
        if info is None:
            self._count("unknown_conversation")
            return "I cannot judge this conversation."
        instructions = user[: match.start()] + "\n" + user[match.end() :]
        single = _EN_SINGLE.search(instructions) or _ZH_SINGLE.search(instructions)
        if single:
            capability = self._capability(info.category, single.group(1))
            if capability is None:
                self._count("unknown_capability")
                return "I cannot decide."
            self._count("answered")
            return self._say(self.verdict(info, capability, first, second))
        listed = {name: self._capability(info.category, name) for name in _LIST_ITEM.findall(instructions)}
        listed = {name: capability for name, capability in listed.items() if capability is not None}
        if not listed:
            self._count("unknown_capability")
            return "I cannot decide."
        self._count("answered")
        return json.dumps(
            {name: self.verdict(info, capability, first, second) for name, capability in listed.items()},
            ensure_ascii=False,
        )

    def __call__(self, body: Mapping) -> str:
        users = [m for m in body.get("messages", []) if m.get("role") == "user"]
        content = users[-1].get("content", "") if users else ""
        if isinstance(content, list):  # text parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, Mapping))
        return self.answer_text(str(content))


def capability_judge_server(
    world: SyntheticWorld | None = None,
    *,
    flip_rate: float = 0.1,
    seed: int = 0,
    style: str = "digit",
    latency: float = 0.0,
    model: str = "synthetic-judge",
    host: str = "127.0.0.1",
    port: int = 0,
    **server_options,
):
    """An unstarted OpenAI-compatible server answering with a :class:`CapabilityJudge` (``with ... as server`` or
    ``server.start()``; ``server.base_url``, ``server.answer.stats``). ``server_options`` go to
    :class:`~dmoerm_trl.labeling.scripted_judge_server.ScriptedJudgeServer` (e.g. ``faults=``)."""
    from ..labeling.scripted_judge_server import ScriptedJudgeServer

    judge = CapabilityJudge(world, flip_rate=flip_rate, seed=seed, style=style)
    return ScriptedJudgeServer(judge, latency=latency, model=model, host=host, port=port, **server_options)


def main(argv: list[str] | None = None) -> None:
    """``python -m dmoerm_trl.synthetic.judge``: serve until interrupted; prints ``READY <base_url>`` first."""
    parser = argparse.ArgumentParser(description="The synthetic world's capability judge (OpenAI-compatible).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port.")
    parser.add_argument("--flip-rate", type=float, default=0.1, help="Probability of a reversed verdict.")
    parser.add_argument("--seed", type=int, default=0, help="Which verdicts are flipped.")
    parser.add_argument("--latency", type=float, default=0.0, help="Seconds before each answer.")
    parser.add_argument("--model", default="synthetic-judge", help="The model name the server reports.")
    parser.add_argument("--categories", default=None, help="Comma-separated categories (default: all).")
    args = parser.parse_args(argv)
    world = SyntheticWorld(args.categories.split(",") if args.categories else None)
    server = capability_judge_server(
        world,
        flip_rate=args.flip_rate,
        seed=args.seed,
        latency=args.latency,
        model=args.model,
        host=args.host,
        port=args.port,
    ).start()
    print(f"READY {server.base_url}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        print(json.dumps({"judge_stats": dict(server.answer.stats)}), flush=True)


if __name__ == "__main__":
    main()
