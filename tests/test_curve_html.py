"""The training curve as an HTML page (the Kubeflow train task's `curve_html` artifact)."""

from __future__ import annotations

from bridgerl.train.curve_html import render


def test_one_chart_per_numeric_column(tmp_path):
    csv = tmp_path / "curve.csv"
    csv.write_text("step,phase,reward_mean,heldout_accuracy,kl\n"
                   "0,init,,0.25,\n1,bridge,0.5,,0.0\n2,bridge,0.75,0.5,0.1\n3,bridge,nan,,0.2\n")
    out = tmp_path / "curve.html"
    assert render(csv, out, title="Training curve: bridge") == 3  # `phase` has no numbers
    page = out.read_text()
    assert page.startswith("<!doctype html>") and "Training curve: bridge" in page and "4 steps" in page
    assert page.count("<svg") == 3
    # reward has two finite points (nan and blanks are skipped), held-out accuracy two, kl three
    assert page.count("<circle") == 2 + 2 + 3
    assert "reward_mean (last 0.75)" in page and "kl (last 0.2)" in page


def test_empty_curve(tmp_path):
    csv = tmp_path / "curve.csv"
    csv.write_text("step,reward_mean\n")
    assert render(csv, tmp_path / "c.html") == 0
    assert "No numeric columns" in (tmp_path / "c.html").read_text()
