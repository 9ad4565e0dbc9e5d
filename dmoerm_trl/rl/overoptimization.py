"""Reward overoptimization against a gold reward model (Gao et al., 2022, arXiv 2210.10760): CSV records, Gao et al.'s
functional forms fitted by least squares, and the gold/proxy-vs-sqrt(KL) plot.

With ``d = sqrt(KL(policy || reference))`` and rewards measured relative to the reference policy (``d = 0``):

- best-of-n: ``R(d) = d (alpha - beta d)``
- RL (PPO/GRPO/RLOO): ``R(d) = d (alpha - beta log d)``

Both are linear in ``(alpha, beta)``, so they are fitted with ``numpy.linalg.lstsq``. The reward at ``d = 0`` (the
``n = 1`` row of best-of-n, the step-0 row of RL) is the baseline; without such a row an intercept is fitted too.

One CSV format serves both sources; columns: ``source`` (``bon`` | ``rl``), ``proxy`` (the proxy reward's name),
``n`` (best-of-n; empty for RL), ``step`` (RL; empty for best-of-n), ``kl``, ``sqrt_kl``, ``proxy_reward``,
``gold_reward``, ``num_samples``.

Example:
    >>> from dmoerm_trl.rl.overoptimization import fit_gao, bon_kl
    >>> import numpy as np
    >>> d = np.sqrt([bon_kl(n) for n in (1, 2, 4, 8, 16)])
    >>> fit = fit_gao(d, d * (1.0 - 0.25 * d), form="bon")
    >>> round(fit.alpha, 6), round(fit.beta, 6)
    (1.0, 0.25)
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..utils.io import atomic_path

CSV_COLUMNS = ("source", "proxy", "n", "step", "kl", "sqrt_kl", "proxy_reward", "gold_reward", "num_samples")
CSV_NAME = "overoptimization.csv"
FORMS = {"bon": "d(a - b d)", "rl": "d(a - b log d)"}


def bon_kl(n: int) -> float:
    """Analytic KL of the best-of-n policy from the base policy: ``log n - (n - 1) / n`` (nats)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


@dataclass
class GaoFit:
    """A fitted Gao et al. curve ``R(d) = r0 + d (alpha - beta d)`` (bon) or ``r0 + d (alpha - beta log d)`` (rl)."""

    form: str
    alpha: float
    beta: float
    r0: float
    r0_fitted: bool
    rmse: float
    num_points: int

    def predict(self, d) -> np.ndarray:
        d = np.asarray(d, dtype=np.float64)
        return self.r0 + _design(d, self.form) @ np.array([self.alpha, self.beta])

    @property
    def peak_sqrt_kl(self) -> float | None:
        """Where the fitted curve peaks (``alpha / 2 beta`` for bon, ``exp(alpha / beta - 1)`` for rl); None if not."""
        if self.beta <= 0:
            return None
        if self.form == "bon":
            return self.alpha / (2 * self.beta)
        return math.exp(self.alpha / self.beta - 1)

    def describe(self) -> str:
        r0 = f"{self.r0:+.4f}{' (fitted)' if self.r0_fitted else ''}"
        return f"R(d) = {r0} + {FORMS[self.form].replace('a', f'{self.alpha:.4f}', 1).replace('b', f'{self.beta:.4f}', 1)}"


def _design(d: np.ndarray, form: str) -> np.ndarray:
    if form == "bon":
        return np.stack([d, -d * d], axis=-1)
    if form == "rl":
        with np.errstate(divide="ignore", invalid="ignore"):
            d_log_d = np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)
        return np.stack([d, -d_log_d], axis=-1)
    raise ValueError(f"form must be 'bon' or 'rl', got {form!r}")


def fit_gao(sqrt_kl: Sequence[float], reward: Sequence[float], form: str) -> GaoFit:
    """Least-squares fit of Gao et al.'s form to ``reward`` against ``sqrt_kl`` (``d``).

    The baseline ``r0`` is the mean reward of the ``d == 0`` points; without any, ``r0`` is fitted as an intercept.
    """
    d = np.asarray(sqrt_kl, dtype=np.float64)
    y = np.asarray(reward, dtype=np.float64)
    if d.shape != y.shape or d.ndim != 1:
        raise ValueError(f"sqrt_kl and reward must be 1-D of the same length, got {d.shape} and {y.shape}")
    keep = np.isfinite(d) & np.isfinite(y)
    d, y = d[keep], y[keep]
    if np.any(d < 0):
        raise ValueError("sqrt_kl must be >= 0")
    at_zero = d == 0
    design = _design(d, form)
    if at_zero.any():
        r0, r0_fitted = float(y[at_zero].mean()), False
        needed = 2
    else:
        design = np.concatenate([np.ones((len(d), 1)), design], axis=1)
        r0, r0_fitted = 0.0, True
        needed = 3
    if (~at_zero).sum() < 2 or len(d) < needed:
        raise ValueError(
            f"fitting {FORMS[form]} needs at least 2 points with KL > 0 (got {(~at_zero).sum()}); evaluate more n "
            "values or more steps"
        )
    target = y - r0
    coefficients, *_ = np.linalg.lstsq(design, target, rcond=None)
    if r0_fitted:
        r0, (alpha, beta) = float(coefficients[0]), coefficients[1:]
    else:
        alpha, beta = coefficients
    fit = GaoFit(form, float(alpha), float(beta), r0, r0_fitted, 0.0, len(d))
    fit.rmse = float(np.sqrt(np.mean((fit.predict(d) - y) ** 2)))
    return fit


# ---------------------------------------------------------------------------------------------------------- CSV
def write_records_csv(records: Iterable[dict], path: str | os.PathLike) -> Path:
    """Write records (dicts with :data:`CSV_COLUMNS`) to ``path`` atomically (tmp file + ``os.replace``)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for record in records:
            writer.writerow({k: ("" if record.get(k) is None else record.get(k)) for k in CSV_COLUMNS})
    return path


def read_records_csv(path: str | os.PathLike) -> list[dict]:
    """Read an overoptimization CSV (a file, or a run folder containing ``overoptimization.csv``)."""
    path = Path(path)
    if path.is_dir():
        path = path / CSV_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass a CSV written by best-of-n or GoldRewardCallback")
    records = []
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"source", "kl", "proxy_reward", "gold_reward"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path} lacks the column(s) {sorted(missing)}; expected {list(CSV_COLUMNS)}")
        for line, row in enumerate(reader, start=2):
            try:
                record = {
                    "source": row["source"],
                    "proxy": row.get("proxy") or "proxy",
                    "n": int(row["n"]) if row.get("n") else None,
                    "step": int(row["step"]) if row.get("step") else None,
                    "kl": float(row["kl"]),
                    "proxy_reward": float(row["proxy_reward"]),
                    "gold_reward": float(row["gold_reward"]),
                    "num_samples": int(row["num_samples"]) if row.get("num_samples") else None,
                }
            except (TypeError, ValueError) as err:
                raise ValueError(f"{path}, line {line}: {err}") from None
            if record["source"] not in FORMS:
                raise ValueError(f"{path}, line {line}: source must be 'bon' or 'rl', got {record['source']!r}")
            record["sqrt_kl"] = math.sqrt(max(record["kl"], 0.0))
            records.append(record)
    if not records:
        raise ValueError(f"{path} has no rows")
    return records


# ------------------------------------------------------------------------------------------------------ fitting
@dataclass
class CurveFits:
    """Fits of one (source, proxy) group: ``gold`` and ``proxy`` :class:`GaoFit` (None when too few points)."""

    source: str
    proxy: str
    gold: GaoFit | None
    proxy_fit: GaoFit | None
    records: list[dict]

    def summary(self) -> dict:
        return {
            "source": self.source,
            "proxy": self.proxy,
            "form": FORMS[self.source],
            "gold": asdict(self.gold) if self.gold else None,
            "proxy_fit": asdict(self.proxy_fit) if self.proxy_fit else None,
            "num_points": len(self.records),
        }


def fit_records(records: Sequence[dict]) -> list[CurveFits]:
    """Group records by (source, proxy) and fit gold and proxy rewards with the source's Gao form."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        groups.setdefault((record["source"], record.get("proxy") or "proxy"), []).append(record)
    fits = []
    for (source, proxy), group in groups.items():
        group = sorted(group, key=lambda r: r["kl"])
        d = [math.sqrt(max(r["kl"], 0.0)) for r in group]
        if source == "rl":  # KL estimated from samples can be slightly negative at step 0: that row is d = 0
            d = [0.0 if r.get("step") == 0 else x for r, x in zip(group, d)]
        fitted = {}
        for key in ("gold_reward", "proxy_reward"):
            try:
                fitted[key] = fit_gao(d, [r[key] for r in group], source)
            except ValueError:
                fitted[key] = None
        fits.append(CurveFits(source, proxy, fitted["gold_reward"], fitted["proxy_reward"], group))
    return fits


# ------------------------------------------------------------------------------------------------------ plotting
def plot_overoptimization(
    records: Sequence[dict], path: str | os.PathLike, title: str | None = None, relative: bool | None = None
) -> list[CurveFits]:
    """Plot gold and proxy reward against sqrt(KL) with the fitted curves; save a PNG atomically; return the fits.

    One (source, proxy) group: one panel, absolute rewards. Several groups (e.g. DMoERM vs a single RM vs
    ensembles): two panels, gold and proxy, each as the gain over its KL = 0 value (``relative``), since proxies
    live on different scales.
    """
    try:
        import matplotlib
    except ImportError:
        raise ImportError('plotting needs matplotlib: pip install "dmoerm-trl[plots]"') from None

    # A Figure with its own Agg canvas: no pyplot, the user's global backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fits = fit_records(records)
    relative = len(fits) > 1 if relative is None else relative
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    figure = Figure(figsize=(12, 4.5) if relative else (7, 4.5))
    FigureCanvasAgg(figure)
    if relative:
        axes = figure.subplots(1, 2)
        panels = [(axes[0], "gold_reward", "gold", "o", "-"), (axes[1], "proxy_reward", "proxy_fit", "x", "--")]
    else:
        axis = figure.subplots()
        panels = [(axis, "gold_reward", "gold", "o", "-"), (axis, "proxy_reward", "proxy_fit", "x", "--")]
    for i, curve in enumerate(fits):
        color = colors[i % len(colors)]
        d = np.array([math.sqrt(max(r["kl"], 0.0)) for r in curve.records])
        if curve.source == "rl":
            d = np.array([0.0 if r.get("step") == 0 else x for r, x in zip(curve.records, d)])
        label = f"{curve.proxy} ({curve.source})"
        grid = np.linspace(0, max(d.max(), 1e-6) * 1.05, 100)
        for axis, key, fit_name, marker, style in panels:
            fit = getattr(curve, fit_name)
            offset = (fit.r0 if fit is not None else curve.records[0][key]) if relative else 0.0
            which = "gold" if key == "gold_reward" else "proxy"
            axis.plot(
                d,
                [r[key] - offset for r in curve.records],
                marker,
                color=color,
                label=label if relative else f"{which}, {label}",
            )
            if fit is not None:
                axis.plot(grid, fit.predict(grid) - offset, style, color=color, alpha=0.8)
    for axis, key, _, _, _ in panels[:: 1 if relative else 2]:
        axis.set_xlabel("sqrt(KL(policy || reference))  [sqrt nats]")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
        if relative:
            axis.set_ylabel(f"{key.split('_')[0]} reward gain over KL = 0")
            axis.set_title(f"{key.split('_')[0]} reward (points) and fitted curve")
        else:
            axis.set_ylabel("reward")
    figure.suptitle(title or "Reward overoptimization: gold (o, solid) vs proxy (x, dashed)")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".tmp" + path.suffix) as tmp:
        figure.savefig(tmp, dpi=120)
    return fits


def format_fits_table(fits: Sequence[CurveFits]) -> str:
    """A plain-text table of fitted coefficients (printed by ``dmoerm overopt``)."""
    header = (
        f"{'source':6} {'proxy':24} {'reward':6} {'form':16} {'alpha':>9} {'beta':>9} {'r0':>9} {'rmse':>8} "
        f"{'peak d':>8}"
    )
    lines = [header]
    for curve in fits:
        for which, fit in (("gold", curve.gold), ("proxy", curve.proxy_fit)):
            if fit is None:
                lines.append(f"{curve.source:6} {curve.proxy[:24]:24} {which:6} {'(too few points)':16}")
                continue
            peak = fit.peak_sqrt_kl
            lines.append(
                f"{curve.source:6} {curve.proxy[:24]:24} {which:6} {FORMS[curve.source]:16} {fit.alpha:9.4f} "
                f"{fit.beta:9.4f} {fit.r0:9.4f} {fit.rmse:8.4f} {'' if peak is None else f'{peak:8.3f}'}"
            )
    return "\n".join(lines)
