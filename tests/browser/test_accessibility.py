"""Accessibility: axe-core on every rater, reviewer and survey page, in headless Chromium against the real
server (no model: candidates are finished by the test), and the vote form operated by the keyboard alone.

Each page must have no violation of impact "serious" or "critical" (axe-core's WCAG 2.x A/AA rules and best
practices). With A11Y_COUNTS=<file> every page's counts (all impacts; serious + critical) are appended to the
file as JSON lines, which is how docs/benchmarks.md ("Accessibility (issue 12)") was measured.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe

from annotate import services
from annotate.models import Comparison, Conversation, Study
from labeling import services as labeling
from labeling.models import GoldItem
from labeling.selectors import labels_for
from tests.helpers import PASSWORD, choose, finish_candidates, finished_conversation, log_in
from workers.models import ModelConfig

pytestmark = [pytest.mark.browser]

BLOCKING = ("serious", "critical")
PID = "5f0a1b2c3d4e5f60718293a4"


def axe_violations(page: Any, name: str) -> list[dict[str, Any]]:
    """Run axe-core on the page as it is now; record the counts (A11Y_COUNTS) and return the violations."""
    page.wait_for_load_state("load")
    page.wait_for_function("() => !document.querySelector('.htmx-request, .htmx-swapping, .htmx-settling')")
    violations = Axe().run(page).response["violations"]
    if os.environ.get("A11Y_COUNTS"):
        counts = {
            "page": name,
            "violations": len(violations),
            "nodes": sum(len(v["nodes"]) for v in violations),
            "serious_critical": sum(1 for v in violations if v["impact"] in BLOCKING),
            "serious_critical_nodes": sum(len(v["nodes"]) for v in violations if v["impact"] in BLOCKING),
            "rules": {v["id"]: [v["impact"], len(v["nodes"])] for v in violations},
        }
        with open(os.environ["A11Y_COUNTS"], "a", encoding="utf-8") as out:
            out.write(json.dumps(counts) + "\n")
    return violations


def describe(violations: list[dict[str, Any]]) -> str:
    """One block per rule: id, impact, what it means, and every node's target and HTML."""
    lines = []
    for v in violations:
        lines.append(f"- {v['id']} ({v['impact']}): {v['help']} [{len(v['nodes'])} node(s)]")
        for node in v["nodes"][:10]:
            target = " ".join(str(t) for t in node["target"])
            lines.append(f"    {target}: {node['html'][:160]}")
            summary = (node.get("failureSummary") or "").replace("\n", " ")
            if summary:
                lines.append(f"      {summary[:240]}")
    return "\n".join(lines)


def assert_accessible(page: Any, name: str) -> None:
    blocking = [v for v in axe_violations(page, name) if v["impact"] in BLOCKING]
    assert not blocking, f"axe-core: {len(blocking)} serious/critical rule(s) on the {name} page ({page.url}):\n" + (
        describe(blocking)
    )


# --- the pages ------------------------------------------------------------------------------------


@dataclass
class Setup:
    base_url: str
    page: Any
    make_user: Callable[..., Any]
    make_study: Callable[..., Study]


def _rater_session(setup: Setup, *, voted: bool) -> Conversation:
    """A rater's live session: one vote cast, the second message's two replies done (not enqueued)."""
    rater = setup.make_user(password=PASSWORD)
    study = setup.make_study(slug=f"a11y-{rater.pk}", name="Under-specified requests")
    conversation = services.conversation_start(study=study, rater=rater)
    first = services.message_send(conversation=conversation, text="Can you plan a party?")
    reply, _ = finish_candidates(first, ("Sure: what kind of party?", "Here is a plan: cake."))
    choose(conversation, first.pk, choice="candidate", chosen_id=reply.pk)
    second = services.message_send(conversation=conversation, text="No, I meant a party for kids.")
    finish_candidates(second, ("Do you mean a birthday party?", "Kids love cake."))
    log_in(setup.page, setup.base_url, rater.username)
    setup.page.goto(f"{setup.base_url}/c/{conversation.pk}/")
    setup.page.wait_for_selector("#vote-form .candidate[data-status=done]")
    if voted:
        setup.page.locator("#vote-form .candidate input[name=choice]").first.check()
        setup.page.locator("#vote-submit").click()
        setup.page.wait_for_selector("#message-form #message")
        setup.page.locator("details.finish > summary").click()
        setup.page.wait_for_selector("#finish-form", state="visible")
    return conversation


def login_page(setup: Setup) -> None:
    setup.page.goto(f"{setup.base_url}/accounts/login/?next=/")
    setup.page.wait_for_selector("form input[name=username]")


def login_page_with_error(setup: Setup) -> None:
    login_page(setup)
    setup.page.get_by_label("Username").fill("nobody")
    setup.page.get_by_label("Password").fill("wrong-password")
    setup.page.get_by_role("button", name="Log in").click()
    setup.page.wait_for_selector("p.error")


def home_page(setup: Setup) -> None:
    rater = setup.make_user(password=PASSWORD)
    study = setup.make_study(name="Under-specified requests")
    gold(setup.make_study(name="Needs a qualification"), GoldItem.Kind.QUALIFICATION)
    finished_conversation(study, rater)
    services.conversation_start(study=setup.make_study(name="Second study"), rater=rater)
    log_in(setup.page, setup.base_url, rater.username)


def session_vote(setup: Setup) -> None:
    _rater_session(setup, voted=False)


def session_after_vote(setup: Setup) -> None:
    _rater_session(setup, voted=True)


def transcript_page(setup: Setup) -> None:
    rater = setup.make_user(password=PASSWORD)
    conversation = finished_conversation(setup.make_study(), rater)
    log_in(setup.page, setup.base_url, rater.username)
    setup.page.goto(f"{setup.base_url}/c/{conversation.pk}/transcript/")
    setup.page.wait_for_selector("ol.transcript.full")


def _reviewable(setup: Setup, **study_fields: Any) -> tuple[Study, Any]:
    """A study with two finished conversations of another rater, and a reviewer logged in."""
    study = setup.make_study(**study_fields)
    author = setup.make_user()
    finished_conversation(study, author)
    finished_conversation(study, author, texts=("Book a table", "For two, tonight"))
    reviewer = setup.make_user(password=PASSWORD)
    log_in(setup.page, setup.base_url, reviewer.username)
    return study, reviewer


def review_home(setup: Setup) -> None:
    study, reviewer = _reviewable(setup)
    labeling.review_finish(rater=reviewer, assignment_id=labeling.review_claim(rater=reviewer, study=study).pk)
    setup.page.goto(f"{setup.base_url}/review/")


def review_detail(setup: Setup) -> None:
    study, reviewer = _reviewable(setup)
    assignment = labeling.review_claim(rater=reviewer, study=study)
    setup.page.goto(f"{setup.base_url}/review/{assignment.pk}/")
    setup.page.wait_for_selector("button.tag-label")


def review_attention_check(setup: Setup) -> None:
    study, reviewer = _reviewable(setup)
    gold(study, GoldItem.Kind.ATTENTION)
    labeling.review_finish(rater=reviewer, assignment_id=labeling.review_claim(rater=reviewer, study=study).pk)
    setup.page.goto(f"{setup.base_url}/review/studies/{study.slug}/check/")
    setup.page.wait_for_url(re.compile(r"/check/$"))


def qualification_page(setup: Setup) -> None:
    study = setup.make_study(name="Needs a qualification", qualification_pass_mark=0.5)
    gold(study, GoldItem.Kind.QUALIFICATION)
    gold(study, GoldItem.Kind.QUALIFICATION, n=2)
    rater = setup.make_user(password=PASSWORD)
    log_in(setup.page, setup.base_url, rater.username)
    setup.page.goto(f"{setup.base_url}/studies/{study.slug}/qualify/")
    setup.page.wait_for_selector("form input[name=labels]")


def qualification_result(setup: Setup) -> None:
    study = setup.make_study(name="Needs a qualification", qualification_pass_mark=0.5)
    item = gold(study, GoldItem.Kind.QUALIFICATION)
    rater = setup.make_user(password=PASSWORD)
    labeling.qualification_answer(
        study=study, rater=rater, item_id=item.pk, label_ids=[label.pk for label in item.expected_labels.all()]
    )
    log_in(setup.page, setup.base_url, rater.username)
    setup.page.goto(f"{setup.base_url}/studies/{study.slug}/qualify/")


def _panel_study(setup: Setup) -> Study:
    return setup.make_study(
        name="Under-specified requests (crowd)",
        consent_text="You will chat with AI assistants and judge their replies.\n\nYou may stop at any time.",
        instructions="Play the situation you are given. At each turn, pick the reply that helps you most.",
        completion_code="C0MPL3TE",
        returned_code="RETURN3D",
    )


def panel_entry(setup: Setup) -> None:
    study = _panel_study(setup)
    setup.page.goto(f"{setup.base_url}/p/{study.slug}/?PROLIFIC_PID={PID}&STUDY_ID=s1&SESSION_ID=x1")
    setup.page.wait_for_url(f"{setup.base_url}/p/{study.slug}/consent/")


def panel_done(setup: Setup) -> None:
    panel_entry(setup)
    setup.page.locator("#consent-decline").click()
    setup.page.wait_for_selector("#panel-done")
    setup.page.evaluate("() => { for (const m of document.querySelectorAll('meta[http-equiv=refresh]')) m.remove(); }")


def panel_message(setup: Setup) -> None:
    setup.page.goto(f"{setup.base_url}/p/no-such-study/?PROLIFIC_PID={PID}")
    setup.page.wait_for_selector("#panel-message")


def forbidden_page(setup: Setup) -> None:
    rater = setup.make_user(password=PASSWORD)
    study = setup.make_study()
    log_in(setup.page, setup.base_url, rater.username)
    setup.page.goto(f"{setup.base_url}/studies/{study.slug}/dashboard/")
    setup.page.wait_for_selector("h1")


def refused_page(setup: Setup) -> None:
    """A refusal on a page of its own: starting a study whose qualification the rater has not passed (403)."""
    study = setup.make_study(name="Needs a qualification")
    gold(study, GoldItem.Kind.QUALIFICATION)
    rater = setup.make_user(password=PASSWORD)
    log_in(setup.page, setup.base_url, rater.username)
    setup.page.evaluate(
        """slug => {
          const form = Object.assign(document.createElement("form"), {method: "post"});
          form.action = `/studies/${slug}/start/`;
          const token = JSON.parse(document.body.getAttribute("hx-headers"))["x-csrftoken"];
          const field = {type: "hidden", name: "csrfmiddlewaretoken", value: token};
          form.append(Object.assign(document.createElement("input"), field));
          document.body.append(form);
          form.submit();
        }""",
        study.slug,
    )
    setup.page.wait_for_selector("p.error")


def _arena_votes(setup: Setup) -> Study:
    """An arena study of three models with a dozen voted messages from four raters (battles for every pair)."""
    configs = [ModelConfig.objects.create(name=f"arena-a11y-{i}", model_path="/m") for i in range(3)]
    study = setup.make_study(configs=configs, arena=True, scenarios=5)  # one left for a rater of the page
    for n in range(4):
        conversation = services.conversation_start(study=study, rater=setup.make_user())
        for m in range(3):
            turn = services.message_send(conversation=conversation, text=f"Question {n}.{m}")
            a, b = finish_candidates(turn, ("One answer.", "Another answer."))
            choose(conversation, turn.pk, choice="candidate", chosen_id=(a if (n + m) % 3 else b).pk)
    return study


def leaderboard_page(setup: Setup) -> None:
    study = _arena_votes(setup)
    researcher = setup.make_user(password=PASSWORD, is_staff=True, is_superuser=True)
    log_in(setup.page, setup.base_url, researcher.username)
    setup.page.goto(f"{setup.base_url}/studies/{study.slug}/leaderboard/")
    setup.page.wait_for_selector("#ratings-table")


def arena_after_vote(setup: Setup) -> None:
    """An arena session right after the vote: the names revealed in the notice and on the lived path."""
    study = _arena_votes(setup)
    rater = setup.make_user(password=PASSWORD)
    conversation = services.conversation_start(study=study, rater=rater)
    turn = services.message_send(conversation=conversation, text="Which of you plans parties best?")
    finish_candidates(turn)
    log_in(setup.page, setup.base_url, rater.username)
    setup.page.goto(f"{setup.base_url}/c/{conversation.pk}/")
    setup.page.wait_for_selector("#vote-form .candidate")
    setup.page.keyboard.press("1")
    setup.page.keyboard.press("Enter")
    setup.page.wait_for_selector("#notice")


def gold(study: Study, kind: str, n: int = 1) -> GoldItem:
    item = GoldItem.objects.create(
        study=study, kind=kind, context=f"Plan a party {n}", reply=f"What kind of party? {n}", order=n,
        explanation="It asks before answering.",
    )  # fmt: skip
    item.expected_labels.set([label for label in labels_for(study) if label.name == "clarification"])
    return item


PAGES: dict[str, Callable[[Setup], None]] = {
    "login": login_page,
    "login-error": login_page_with_error,
    "home": home_page,
    "session-vote": session_vote,
    "session-after-vote-survey": session_after_vote,
    "transcript": transcript_page,
    "review-home": review_home,
    "review-detail": review_detail,
    "review-attention-check": review_attention_check,
    "qualification": qualification_page,
    "qualification-result": qualification_result,
    "panel-entry-consent": panel_entry,
    "panel-done": panel_done,
    "panel-message": panel_message,
    "forbidden-403": forbidden_page,
    "refused-error-page": refused_page,
    "leaderboard": leaderboard_page,
    "arena-after-vote": arena_after_vote,
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("name", list(PAGES))
def test_page_has_no_serious_or_critical_axe_violations(
    name, start_server, make_user, make_study, browser_page, monkeypatch
):
    # Given the page's data (replies finished by the test: nothing is enqueued) and the real server
    monkeypatch.setattr("annotate.services._enqueue", lambda *args, **kwargs: None)
    base_url = start_server()
    setup = Setup(base_url=base_url, page=browser_page.page, make_user=make_user, make_study=make_study)

    # When the page is opened as a rater, reviewer or participant would reach it
    PAGES[name](setup)

    # Then axe-core finds nothing serious or critical on it
    assert_accessible(browser_page.page, name)
    assert browser_page.page_errors == []


# --- the keyboard ---------------------------------------------------------------------------------

# Numbers every control of the vote form a keyboard user must reach (data-kb), and returns their keys. Radios
# of one group take one tab stop (arrow keys move within it), so a group is one key; hidden controls (in a
# closed <details>) are left out, the <summary> that opens them is not.
CONTROLS = """() => {
  const controls = [...document.querySelectorAll(
    "#vote-form input:not([type=hidden]), #vote-form textarea, #vote-form button, #vote-form select, #vote-form summary"
  )].filter(el => el.checkVisibility({visibilityProperty: true}));
  controls.forEach((el, n) => { el.dataset.kb = el.type === "radio" ? `radio:${el.name}` : String(n); });
  return [...new Set(controls.map(el => el.dataset.kb))];
}"""

# The focused element: its key (above) and whether the focus shows (an outline, or a box-shadow).
FOCUSED = """() => {
  const el = document.activeElement;
  if (!el || el === document.body) return null;
  const style = getComputedStyle(el);
  const outline = style.outlineStyle !== "none" && parseFloat(style.outlineWidth) > 0;
  const shadow = !!style.boxShadow && style.boxShadow !== "none";
  return {
    key: el.dataset.kb || null, visible: outline || shadow,
    what: el.outerHTML.slice(0, 120),
    style: `outline: ${style.outlineStyle} ${style.outlineWidth}; shadow: ${style.boxShadow}`,
  };
}"""


@pytest.mark.django_db(transaction=True)
def test_vote_form_is_operable_by_keyboard_with_a_visible_focus(
    start_server, make_user, make_study, browser_page, monkeypatch
):
    # Given a live session whose two replies are done (the vote form shows)
    monkeypatch.setattr("annotate.services._enqueue", lambda *args, **kwargs: None)
    base_url = start_server()
    page = browser_page.page
    setup = Setup(base_url=base_url, page=page, make_user=make_user, make_study=make_study)
    conversation = _rater_session(setup, voted=False)
    page.locator("details.rewrite > summary").wait_for()
    wanted = set(page.evaluate(CONTROLS))
    assert len(wanted) > 5, wanted

    # When the rater tabs through the page from the top
    page.evaluate("() => { document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0); }")
    reached: dict[str, dict[str, Any]] = {}
    for _ in range(400):
        page.keyboard.press("Tab")
        focused = page.evaluate(FOCUSED)
        if focused is not None and focused["key"] is not None:
            reached.setdefault(focused["key"], focused)
        if wanted <= set(reached):
            break

    # Then every control of the vote form took the focus, each with a visible focus indicator
    missing = page.evaluate(
        "keys => keys.map(k => document.querySelector(`[data-kb='${k}']`).outerHTML.slice(0, 120))",
        sorted(wanted - set(reached)),
    )
    assert not missing, f"never reached with Tab: {missing}"
    invisible = [f"{v['what']} ({v['style']})" for v in reached.values() if not v["visible"]]
    assert not invisible, "focused without a visible outline or box-shadow:\n" + "\n".join(invisible)

    # ... and the vote is cast from the keyboard: arrow keys within the choice, Enter on the submit button
    page.locator("#vote-form .candidate input[name=choice]").first.focus()
    page.keyboard.press("ArrowRight")
    assert page.locator("#vote-form .candidate input[name=choice]").nth(1).is_checked()
    page.locator("#vote-submit").focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("#message-form #message")
    assert Comparison.objects.filter(conversation=conversation).count() == 2  # the first vote, and this one
    assert browser_page.page_errors == []
