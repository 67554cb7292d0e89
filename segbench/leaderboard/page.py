"""The leaderboard page: sections of paragraphs, tables and figures, rendered by the run report's renderers
(:mod:`segbench.report.render`), so the Markdown and the self-contained HTML say the same thing."""

from __future__ import annotations

from segbench.leaderboard.bootstrap import ACROSS
from segbench.leaderboard.build import Leaderboard
from segbench.leaderboard.figures import blob_plot, cd_diagram
from segbench.leaderboard.runs import DatasetRun
from segbench.leaderboard.tables import (
    comparability_table,
    dagger_note,
    dataset_table,
    model_label,
    nemenyi_table,
    rankings_table,
    stability_table,
    values_matrix,
)
from segbench.report import verdict_sentences
from segbench.report.recipe import recipe_sentence
from segbench.report.render import Bullets, FigureBlock, Paragraph, Report, Section, TableBlock
from segbench.report.stats import format_p

METHODS = (
    "rank-then-aggregate: the models are ranked on each dataset by their mean {metric} (1 = best, ties share the "
    "average rank), then each model's ranks are averaged over its datasets and the averages ranked.",
    "aggregate-then-rank: each model's mean {metric} is averaged over its datasets, then the averages are ranked.",
    "test-then-rank: on each dataset every pair of models is compared with the run report's tests and verdict rule "
    "(paired Wilcoxon signed-rank test on the cases, Holm-corrected over all pairs of the dataset; with repeats also "
    "the job-level test); a model scores one win per model it beats; wins are summed over the datasets and ranked.",
    "consensus: the mean of the three ranks above, ranked again (ties share the average rank).",
)


def consensus_line(board: Leaderboard) -> str:
    """``"1 unet, 2 fcn_w8, 3 fcn"``: the consensus ranking in one line (daggers included)."""
    ranked = board.rankings.dropna(subset=["consensus"])
    return ", ".join(f"{r['consensus']:g} {model_label(board, r['model'])}" for _, r in ranked.iterrows())


def _direction(board: Leaderboard) -> str:
    metric = board.metric
    better = "higher" if metric.higher_is_better else "lower"
    penalty = "" if metric.miss_penalty is None else " (misses count as the run reports' stated penalty)"
    return f"{metric.display()}, {better} is better{penalty}"


def _summary_section(board: Leaderboard) -> Section:
    note = dagger_note(board)
    return Section("Ranking across datasets", (
        Paragraph(f"{len(board.runs)} datasets ({', '.join(board.datasets)}), {len(board.models)} models, ranked by "
                  f"{_direction(board)}: each model's pooled mean over its out-of-fold cases on each dataset, as its "
                  f"run report states it. Consensus ranking: {consensus_line(board)}."),
        TableBlock(rankings_table(board), "Rankings; the rank columns give 1 to the best (ties average)"),
        *((Paragraph(note),) if note else ()),
        Bullets(tuple(line.format(metric=board.metric.label) for line in METHODS)),
        TableBlock(values_matrix(board), f"Mean {board.metric.display()} per dataset (rank on the dataset)"),
    ))  # fmt: skip


def _dataset_section(board: Leaderboard, run: DatasetRun) -> Section:
    blocks: list = [
        Paragraph(f"Run {board.place(run)}. {recipe_sentence(run.manifest, run.jobs)}"),
        TableBlock(dataset_table(board, run), "Means over each model's out-of-fold cases (* = misses count as "
                   "the stated penalty); costs from the done jobs; 'vs best': the verdict against the best model by "
                   "mean Dice (reference), as the run's report states it in the sentences below"),
    ]  # fmt: skip
    if run.comparisons:
        blocks.append(Bullets(verdict_sentences(run.manifest, list(run.comparisons))))
    wins = board.wins.loc[run.dataset].reindex(list(board.models)).dropna()
    if not wins.empty:
        counts = ", ".join(f"{m} {int(n)}" for m, n in wins.items())
        blocks.append(Paragraph(f"Significant wins by {board.metric.label} over all pairs (test-then-rank): {counts}."))
    return Section(f"Dataset {run.dataset}", tuple(blocks))


def _stability_section(board: Leaderboard) -> Section:
    draws = board.draws
    png = blob_plot(
        draws.frequencies(),
        draws.summary(),
        panels=[*board.datasets, ACROSS],
        models=board.models,
        labels=[model_label(board, m) for m in board.models],
    )
    return Section("Rank stability", (
        Paragraph(f"{draws.n_resamples} case-bootstrap draws per dataset (seed {draws.seed}); the cases are paired, "
                  "so one draw resamples the same cases for every model. On each draw the models are ranked on each "
                  f"dataset by mean {board.metric.label}; '{ACROSS}' aggregates each draw's ranks as "
                  "rank-then-aggregate does. Cells: median rank [2.5 %–97.5 % quantiles]."),
        TableBlock(stability_table(board)),
        FigureBlock("rank_stability.png", png, "Rank distributions: dot area ∝ share of draws, black dash = median, "
                    "black line = 95 % interval"),
    ))  # fmt: skip


def _friedman_section(board: Leaderboard) -> Section:
    result = board.friedman
    if not result.ran:
        return Section("Friedman test and Nemenyi diagram", (Paragraph(result.reason),))
    left_out = f" Left out (missing from a dataset): {', '.join(result.left_out)}." if result.left_out else ""
    blocks: list = [Paragraph(
        f"Datasets as blocks, models as treatments, each model's mean {board.metric.label} as the observation; "
        f"{len(result.models)} models on all {result.n_datasets} datasets.{left_out} Friedman χ² = "
        f"{result.statistic:.3f}, {format_p(result.p_value)} (scipy.stats.friedmanchisquare); Nemenyi all-pairs test "
        f"(scikit-posthocs), critical difference of mean ranks {result.critical_difference:.2f} at α = 0.05."
    )]  # fmt: skip
    if result.caveat:
        blocks.append(Paragraph(result.caveat))
    caption = ("Critical-difference diagram: mean ranks (1 = best); a bar joins models the Nemenyi test does not "
               f"separate; critical difference {result.critical_difference:.2f}")  # fmt: skip
    blocks += [FigureBlock("critical_difference.png", cd_diagram(result), caption),
               TableBlock(nemenyi_table(board), "Nemenyi p-values (p < 0.05 marked)")]  # fmt: skip
    return Section("Friedman test and Nemenyi diagram", tuple(blocks))


def _comparability_section(board: Leaderboard) -> Section:
    check = board.comparability
    if check.comparable:
        intro = Paragraph("All runs share recipe, budget, precision and hardware.")
    else:
        intro = Paragraph(f"Warning: the runs differ in {', '.join(check.differing)} (marked ≠): rankings across them "
                          "mix the models' quality with these differences.")  # fmt: skip
    blocks = [intro, *((Bullets(check.sentences()),) if check.sentences() else ())]
    return Section("Comparability", (*blocks, TableBlock(comparability_table(board))))


def leaderboard_report(board: Leaderboard) -> Report:
    """The whole page."""
    title = f"segbench leaderboard — {len(board.runs)} datasets by {board.metric.label}"
    sections = [_summary_section(board), *(_dataset_section(board, run) for run in board.runs),
                _stability_section(board), _friedman_section(board), _comparability_section(board)]  # fmt: skip
    return Report(title, tuple(sections))


def figure_blocks(report: Report) -> list[FigureBlock]:
    """Every figure of ``report`` (written to ``figures/`` next to the Markdown)."""
    return [b for s in report.sections for b in s.blocks if isinstance(b, FigureBlock)]


def title_of(board: Leaderboard) -> str:
    """What a run report's link to this leaderboard says."""
    return f"{len(board.runs)} datasets by {board.metric.label}: {', '.join(board.datasets)}"
