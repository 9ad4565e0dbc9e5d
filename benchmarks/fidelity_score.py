"""Every fidelity method as a reward, scored against the gold (``benchmarks/fidelity.py`` step 4): the trained models
loaded as proxies (single RMs, the per-category RMs picked by the true category, DMoERM routed and with the true
category, the standardised ensembles), each model scoring the texts once, the pairwise accuracy against the gold test
split and the router accuracy.

Example:
    >>> from fidelity_score import build_proxies, gold_accuracy  # doctest: +SKIP
    >>> proxies = build_proxies(args, out / "run", world, paths)  # doctest: +SKIP
    >>> accuracy, per_pair = gold_accuracy(proxies, paths["test"], categories_yaml, 192)  # doctest: +SKIP
    >>> 0.0 <= accuracy["DMoERM"]["overall"] <= 1.0  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from fidelity_report import stderr


class CategoryRoutedReward:
    """(b) as a reward function: the prompt's TRUE category (from the world) picks that category's single RM."""

    def __init__(self, scorers: dict, world):
        from dmoerm_trl.synthetic import GoldReward

        self.scorers, self.gold = scorers, GoldReward(world, on_unknown="nan")
        self.__name__ = "single_rm_per_category"

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float]:
        categories = self.gold.categories_of(prompts)
        out = [0.0] * len(prompts)
        for category, scorer in self.scorers.items():
            rows = [i for i, c in enumerate(categories) if c == category]
            if rows:
                values = scorer([prompts[i] for i in rows], [completions[i] for i in rows]).tolist()
                for i, v in zip(rows, values):
                    out[i] = v
        return out


class DMoERMWithTrueCategory:
    """DMoERM with the prompt's TRUE category given (``categories=``: the router bypassed), as a reward function.

    Tells routing errors apart from expert quality: DMoERM (routed) vs this row. :meth:`score_both` gives both in
    one go: the true-category scores, the router's choice per text, and the routed scores (re-scored only where the
    router picked another category).
    """

    def __init__(self, model, tokenizer, world, batch_size: int = 32):
        from dmoerm_trl.synthetic import GoldReward

        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.max_length = getattr(model.config, "max_position_embeddings", None)
        self.gold = GoldReward(world, on_unknown="nan")
        self.__name__ = "dmoerm_true_category"

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float]:
        return self._forward(prompts, completions, self.gold.categories_of(prompts))[0]

    def _forward(self, prompts, completions, categories, route: bool = False):
        import torch

        from dmoerm_trl.rl.scoring import build_reward_texts, eval_mode, is_conversational_prompt
        from dmoerm_trl.truncation import encode_keep_end

        texts = build_reward_texts(self.tokenizer, prompts, completions)
        conversational = bool(prompts) and is_conversational_prompt(prompts[0])
        values, routed = [], []
        with eval_mode(self.model), torch.no_grad():
            for start in range(0, len(texts), self.batch_size):  # tokenized exactly as RewardScorer does
                # over-long texts keep their end, as RewardScorer and `dmoerm eval` do
                encoded, _ = encode_keep_end(
                    self.tokenizer, texts[start : start + self.batch_size], self.max_length, not conversational
                )
                batch = self.tokenizer.pad(
                    {"input_ids": encoded}, padding=True, padding_side="right", return_tensors="pt"
                )
                ids, mask = batch["input_ids"], batch["attention_mask"]
                if route:
                    routed += self.model.route(ids, mask).argmax(-1).tolist()
                    continue
                out = self.model(
                    input_ids=ids, attention_mask=mask, categories=categories[start : start + self.batch_size]
                )
                values += out.logits.reshape(-1).float().tolist()
        return values, routed

    def score_both(self, prompts, completions) -> dict:
        names = self.model.config.category_names
        true = [names.index(c) for c in self.gold.categories_of(prompts)]
        true_scores = self._forward(prompts, completions, true)[0]
        routed = self._forward(prompts, completions, None, route=True)[1]
        wrong = [i for i, (r, t) in enumerate(zip(routed, true)) if r != t]
        routed_scores = list(true_scores)
        if wrong:
            rescored = self._forward(
                [prompts[i] for i in wrong], [completions[i] for i in wrong], [routed[i] for i in wrong]
            )[0]
            for i, value in zip(wrong, rescored):
                routed_scores[i] = value
        return {"true": true_scores, "routed": routed_scores, "routed_ids": routed, "true_ids": true}


def reference_texts(paths, run_dir: Path, limit: int = 128) -> tuple[list, list]:
    """Prompts and responses (chosen and rejected) of up to ``limit`` training pairs of the single RMs' splits: the
    reference texts on which each ensemble member is standardised."""
    from dmoerm_trl.data import load_preference_pairs

    splits = json.loads((run_dir / "splits.json").read_text(encoding="utf-8"))
    train_ids = {pid for split in splits.values() for part in ("task", "aggregator") for pid in split.get(part, [])}
    pairs = load_preference_pairs(paths["train"])
    rows = [i for i, pid in enumerate(pairs["pair_id"]) if pid in train_ids][:limit]
    prompts = [pairs[i]["prompt"] for i in rows]
    return prompts + prompts, [pairs[i]["chosen"] for i in rows] + [pairs[i]["rejected"] for i in rows]


def build_proxies(args, run_dir: Path, world, paths=None) -> dict:
    """``{method: reward}`` for every method; rewards are (model, tokenizer) pairs or callables."""
    from dmoerm_trl.evaluation import load_reward_model
    from dmoerm_trl.rl import RewardEnsemble, RewardScorer

    dmoerm, dmoerm_tokenizer = load_reward_model(run_dir)
    members = [load_reward_model(run_dir / "baseline")]
    if args.ensemble_of_seed_runs:
        members += [
            load_reward_model(run_dir.with_name(f"run_seed{i}") / "baseline") for i in range(1, args.dmoerm_seeds)
        ]
    else:
        members += [load_reward_model(run_dir / "single_rms" / f"seed{i}") for i in range(1, args.seeds)]
    tokenizer = members[0][1]
    per_category = {}
    if not args.skip_per_category_rms:
        for category in dmoerm.config.category_names:
            model, tok = load_reward_model(run_dir / "single_rms" / f"category_{category}")
            per_category[category] = RewardScorer(model, tok, name=f"rm_{category}")
    models = [m for m, _ in members]
    ensembles = {mode: RewardEnsemble(models, mode=mode, uwo_lambda=0.5) for mode in ("mean", "wco", "uwo")}
    if paths is not None:
        # Each member standardised on the same reference texts (training texts), so that no member's offset decides.
        prompts, completions = reference_texts(paths, run_dir)
        statistics = RewardEnsemble(models, mode="mean").standardize(prompts, completions, tokenizer, batch_size=32)
        for ensemble in ensembles.values():
            ensemble.config.member_means = list(statistics.config.member_means)
            ensemble.config.member_stds = list(statistics.config.member_stds)
            ensemble.config.num_reference_texts = statistics.config.num_reference_texts
    proxies = {
        "single RM (all data)": (models[0], tokenizer),
        "single RM per category": CategoryRoutedReward(per_category, world) if per_category else None,
        "DMoERM": (dmoerm, dmoerm_tokenizer),
        "DMoERM (true category)": DMoERMWithTrueCategory(dmoerm, dmoerm_tokenizer, world),
        "ensemble mean": (ensembles["mean"], tokenizer),
        "ensemble WCO": (ensembles["wco"], tokenizer),
        "ensemble UWO": (ensembles["uwo"], tokenizer),
    }
    if args.raw_ensembles:
        proxies["ensemble WCO (raw members)"] = (RewardEnsemble(models, mode="wco"), tokenizer)
        proxies["ensemble UWO (raw members)"] = (RewardEnsemble(models, mode="uwo", uwo_lambda=0.5), tokenizer)
    for i in range(1, args.dmoerm_seeds):
        seed_dir = run_dir.with_name(f"run_seed{i}")
        proxies[f"DMoERM (seed {i})"] = load_reward_model(seed_dir)
        # The same model with the router bypassed: what routing costs this seed.
        proxies[f"DMoERM (true category, seed {i})"] = DMoERMWithTrueCategory(*proxies[f"DMoERM (seed {i})"], world)
        proxies[f"single RM (seed {i})"] = (
            members[i] if args.ensemble_of_seed_runs else load_reward_model(seed_dir / "baseline")
        )
    return {name: reward for name, reward in proxies.items() if reward is not None}


def run_parallel(tasks: list, workers: int = 4) -> list:
    """Run zero-argument callables several at a time (threads: torch releases the GIL) and return their results."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(tasks)))) as pool:
        return [future.result() for future in [pool.submit(task) for task in tasks]]


def score_once(
    proxies: dict, prompts: list, completions: list, check_rows: int = 4, cache: dict | None = None
) -> dict:
    """``{method: (2n,) scores}``: every model scores the texts ONCE; ensembles combine their members' cached scores
    with :meth:`RewardEnsemble.combine` (the same mean / min / mean - lambda var), checked against the ensemble's own
    forward on ``check_rows`` texts."""
    import torch

    from dmoerm_trl.rl import RewardEnsemble, RewardScorer

    cache = {} if cache is None else cache  # id(model) -> scores

    def model_scores(model, tokenizer, name):
        if id(model) not in cache:
            cache[id(model)] = RewardScorer(model, tokenizer, batch_size=32, name=name)(prompts, completions).float()
        return cache[id(model)]

    # Score every distinct model in parallel threads first (torch releases the GIL: on a shared machine the
    # scoring of several models then proceeds side by side); the loop below reads the cache.
    jobs = {}
    for name, reward in proxies.items():
        if isinstance(reward, tuple) and isinstance(reward[0], RewardEnsemble):
            for i, member in enumerate(reward[0].members):
                jobs.setdefault(id(member), (member, reward[1], f"{name}[{i}]"))
        elif isinstance(reward, tuple) and not (
            name == "DMoERM" and isinstance(proxies.get("DMoERM (true category)"), DMoERMWithTrueCategory)
        ):
            jobs.setdefault(id(reward[0]), (reward[0], reward[1], name))
    true_category = proxies.get("DMoERM (true category)")
    tasks = [lambda job=job: model_scores(*job) for job in jobs.values()]
    if isinstance(true_category, DMoERMWithTrueCategory):
        tasks.insert(0, lambda: true_category.score_both(prompts, completions))
    done = run_parallel(tasks)
    scores, routing, checked = {}, (done[0] if isinstance(true_category, DMoERMWithTrueCategory) else None), False
    for name, reward in proxies.items():
        start = time.perf_counter()
        # (other seeds' true-category rows are DMoERMWithTrueCategory too: they score through their own __call__)
        if name in ("DMoERM", "DMoERM (true category)") and isinstance(
            proxies.get("DMoERM (true category)"), DMoERMWithTrueCategory
        ):
            # Both DMoERM rows from one pass with the true category + the router + re-scoring the misrouted texts;
            # the routed scores are checked against the model's own forward (router inside) on check_rows texts.
            if routing is None:
                routing = proxies["DMoERM (true category)"].score_both(prompts, completions)
            if not checked:
                checked = True
                model, tokenizer = proxies["DMoERM"]
                direct = RewardScorer(model, tokenizer, batch_size=check_rows)(
                    prompts[:check_rows], completions[:check_rows]
                )
                if not torch.allclose(direct, torch.tensor(routing["routed"][:check_rows]), atol=1e-4, rtol=1e-4):
                    raise AssertionError(
                        f"DMoERM routed scores {routing['routed'][:check_rows]} != its forward {direct.tolist()}"
                    )
            scores[name] = torch.tensor(routing["true" if name != "DMoERM" else "routed"], dtype=torch.float32)
        elif isinstance(reward, tuple) and isinstance(reward[0], RewardEnsemble):
            ensemble, tokenizer = reward
            members = [model_scores(m, tokenizer, f"{name}[{i}]") for i, m in enumerate(ensemble.members)]
            scores[name] = ensemble.combine(torch.stack(members, dim=-1)).float()
            direct = RewardScorer(ensemble, tokenizer, batch_size=check_rows)(
                prompts[:check_rows], completions[:check_rows]
            )
            if not torch.allclose(direct, scores[name][:check_rows], atol=1e-4, rtol=1e-4):
                raise AssertionError(
                    f"{name}: cached member scores {scores[name][:check_rows].tolist()} != "
                    f"RewardEnsemble forward {direct.tolist()}"
                )
        elif isinstance(reward, tuple):
            scores[name] = model_scores(reward[0], reward[1], name)
        else:
            scores[name] = torch.tensor(reward(prompts=prompts, completions=completions), dtype=torch.float32)
        print(f"scored {len(prompts)} texts with {name} in {time.perf_counter() - start:.1f} s", flush=True)
    return scores


def gold_accuracy(
    proxies: dict, test_path, categories_yaml, max_length: int, eval_pairs_per_category: int | None = None
) -> tuple[dict, dict]:
    """Accuracy against the gold per method (with standard errors) and the per-pair correctness (for the tests)."""
    from dmoerm_trl.data import load_preference_pairs
    from dmoerm_trl.evaluation import pairwise_accuracy
    from dmoerm_trl.rl.scoring import build_reward_texts

    pairs = load_preference_pairs(test_path, categories=str(categories_yaml))
    if eval_pairs_per_category:
        seen: dict[str, int] = {}
        keep_rows = []
        for i, category in enumerate(pairs["category"]):
            seen[category] = seen.get(category, 0) + 1
            if seen[category] <= eval_pairs_per_category:
                keep_rows.append(i)
        pairs = pairs.select(keep_rows)
    prompts, categories = list(pairs["prompt"]), list(pairs["category"])
    chosen, rejected = list(pairs["chosen"]), list(pairs["rejected"])
    # Pairs longer than the backbone accepts are scored on their end (oldest prompt tokens dropped, the response
    # kept), as `dmoerm eval` and every scorer of the package do; they are counted.
    model, tokenizer = proxies["DMoERM"]
    limit = min(x for x in (max_length, getattr(model.config, "max_position_embeddings", None)) if x)
    lengths = [
        len(tokenizer(text, add_special_tokens=False)["input_ids"])
        for text in build_reward_texts(tokenizer, prompts + prompts, chosen + rejected)
    ]
    truncated = sum(max(lengths[i], lengths[len(prompts) + i]) > limit for i in range(len(prompts)))
    n = len(prompts)
    scores = score_once(proxies, prompts + prompts, chosen + rejected)
    result, correct = {}, {}
    for name, values in scores.items():
        values = values.tolist()
        report = pairwise_accuracy(values[:n], values[n:], categories)
        correct[name] = [int(values[i] > values[n + i]) for i in range(n)]
        result[name] = {
            "overall": report["overall"]["accuracy"],
            "pairs": report["overall"]["total"],
            "stderr": stderr(report["overall"]["accuracy"], report["overall"]["total"]),
            "per_category": {c: v["accuracy"] for c, v in report["per_category"].items()},
            "per_category_pairs": {c: v["total"] for c, v in report["per_category"].items()},
            "per_category_stderr": {c: stderr(v["accuracy"], v["total"]) for c, v in report["per_category"].items()},
            "reward_ties": report["overall"]["reward_ties"],
            "test_pairs_truncated": truncated,
        }
    return result, {"categories": categories, "correct": correct}


def router_accuracy(
    run_dir: Path, test_path, categories_yaml, proxies: dict, max_length: int, cross_check: bool, name: str = "DMoERM"
) -> dict:
    """Router accuracy of the DMoERM ``proxies[name]`` on the test prompts alone and with a response.
    ``cross_check``: through ``evaluate_reward_models`` on ``run_dir`` (which also re-scores DMoERM on every pair: the
    test compares it with this script's number); otherwise ``evaluate_router`` only (one router pass per sequence)."""
    if cross_check:
        from dmoerm_trl.evaluation import evaluate_reward_models

        report = evaluate_reward_models(run_dir, test_path)
        router = report.get("router") or {}
        accuracy = (report.get("dmoerm") or {}).get("overall", {}).get("accuracy")
    else:
        from dmoerm_trl.data import load_preference_pairs
        from dmoerm_trl.evaluation import evaluate_router, prepare_pairs

        model, tokenizer = proxies[name]
        pairs = load_preference_pairs(test_path, categories=str(categories_yaml))
        router = evaluate_router(model, tokenizer, prepare_pairs(pairs, tokenizer, max_length, "test pairs", {}), 32)
        accuracy = None
    return {
        "prompt": (router.get("prompt") or {}).get("accuracy"),
        "full": (router.get("full") or {}).get("accuracy"),
        "per_category_prompt": {
            c: v["accuracy"] for c, v in (router.get("prompt") or {}).get("per_category", {}).items()
        },
        "dmoerm_accuracy_via_evaluation_module": accuracy,
    }
