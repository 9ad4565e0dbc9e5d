"""Gao et al.'s functional forms fitted by least squares, the CSV format and the plot."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dmoerm_trl.rl.overoptimization import (
    bon_kl,
    fit_gao,
    fit_records,
    format_fits_table,
    plot_overoptimization,
    read_records_csv,
    write_records_csv,
)


def test_fit_recovers_bon_coefficients_with_noise():
    rng = np.random.default_rng(0)
    d = np.sqrt([bon_kl(n) for n in (1, 2, 4, 8, 16, 32, 64, 128, 256)])
    reward = 0.3 + d * (1.2 - 0.4 * d) + rng.normal(0, 0.005, d.shape)
    fit = fit_gao(d, reward, "bon")
    assert fit.alpha == pytest.approx(1.2, abs=0.03) and fit.beta == pytest.approx(0.4, abs=0.02)
    assert fit.r0 == pytest.approx(reward[0]) and not fit.r0_fitted  # the n = 1 point is the baseline
    assert fit.peak_sqrt_kl == pytest.approx(1.2 / 0.8, rel=0.05)
    assert fit.rmse < 0.01


def test_fit_recovers_rl_coefficients_and_fits_an_intercept_without_kl_zero():
    d = np.linspace(0.2, 4.0, 12)
    fit = fit_gao(d, -0.5 + d * (0.9 - 0.6 * np.log(d)), "rl")
    assert fit.r0_fitted and fit.r0 == pytest.approx(-0.5, abs=1e-9)
    assert (fit.alpha, fit.beta) == pytest.approx((0.9, 0.6), abs=1e-9)
    assert fit.peak_sqrt_kl == pytest.approx(math.exp(0.9 / 0.6 - 1))


def test_fit_needs_points_with_positive_kl():
    with pytest.raises(ValueError, match="at least 2 points with KL > 0"):
        fit_gao([0.0, 0.5], [0.1, 0.2], "bon")
    with pytest.raises(ValueError, match="form must be"):
        fit_gao([0.0, 0.5, 1.0], [0.1, 0.2, 0.3], "ppo")


def records(source="bon", proxy="p"):
    rows = []
    for i, n in enumerate((1, 2, 4, 8, 16)):
        kl = bon_kl(n) if source == "bon" else 0.5 * i
        d = math.sqrt(kl)
        rows.append(
            {
                "source": source,
                "proxy": proxy,
                "n": n if source == "bon" else None,
                "step": None if source == "bon" else 10 * i,
                "kl": kl,
                "sqrt_kl": d,
                "proxy_reward": d * 1.0,
                "gold_reward": d * (0.8 - 0.5 * d),
                "num_samples": 4,
            }
        )
    return rows


def test_csv_round_trip_fit_and_plot(tmp_path):
    rows = records("bon", "single") + records("bon", "ensemble")
    path = write_records_csv(rows, tmp_path / "run" / "overoptimization.csv")
    loaded = read_records_csv(tmp_path / "run")  # a run folder works too
    assert len(loaded) == 10 and loaded[3]["n"] == 8 and loaded[3]["kl"] == pytest.approx(bon_kl(8))
    fits = fit_records(loaded)
    assert [f.proxy for f in fits] == ["single", "ensemble"]
    assert fits[0].gold.alpha == pytest.approx(0.8) and fits[0].gold.beta == pytest.approx(0.5)
    assert "0.8000" in format_fits_table(fits)
    png = tmp_path / "plot.png"
    plot_overoptimization(loaded, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert not list(tmp_path.glob("*.tmp*"))
    assert path.is_file()


def test_bad_csv_is_reported_with_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("source,proxy,n,step,kl,sqrt_kl,proxy_reward,gold_reward,num_samples\nbon,p,1,,zero,,0.1,0.2,4\n")
    with pytest.raises(ValueError, match="bad.csv, line 2"):
        read_records_csv(bad)
    bad.write_text("source,kl\nbon,0.1\n")
    with pytest.raises(ValueError, match="lacks the column"):
        read_records_csv(bad)
    with pytest.raises(FileNotFoundError):
        read_records_csv(tmp_path / "missing")


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"dmoerm-trl\[plots\]"):
        plot_overoptimization(records(), tmp_path / "plot.png")
