// Tagging turns (labeling/_tag_bar.html), by keyboard and mouse, in the live session and the review pass.
// A label's key tags the "tag focus": the turn whose tag bar is outlined. Text selected inside that turn
// becomes the tag's span, for labels that take spans. Vote keys (session.js) are never handled here.
(function () {
  "use strict";
  const VOTE_KEYS = new Set(["1", "2", "3", "4", "5", "6", "7", "8", "9", "t", "b", "s", "r"]);
  const SCOPE = "[data-tag-scope], .candidate, .msg"; // a turn: its text and its tag bar
  const TEXT = "[data-tag-text], .cand-text, .text";
  let focusTurn = null; // the focused bar's turn id; survives htmx swaps of the fragment
  let pending = Promise.resolve(); // the tag requests in flight, chained

  function scopeOf(bar) {
    return bar.closest(SCOPE) || bar.parentElement;
  }

  function barIn(element) {
    const scope = element && element.closest(SCOPE);
    return scope ? scope.querySelector(".tag-bar") : null;
  }

  function defaultBar() {
    const chosen = document.querySelector('.candidate input[name="choice"]:checked');
    const bars = document.querySelectorAll(".tag-bar");
    return barIn(chosen) || document.querySelector(".candidate .tag-bar") || bars[bars.length - 1] || null;
  }

  function focusedBar() {
    return (focusTurn && document.getElementById("tags-" + focusTurn)) || defaultBar();
  }

  function showFocus() {
    const bar = focusedBar();
    document.querySelectorAll(".tag-focus").forEach(function (el) {
      el.classList.remove("tag-focus");
    });
    if (bar) scopeOf(bar).classList.add("tag-focus");
  }

  function setFocus(bar) {
    if (!bar) return;
    focusTurn = bar.dataset.turn;
    showFocus();
  }

  function move(step) {
    const bars = Array.from(document.querySelectorAll(".tag-bar"));
    if (!bars.length) return;
    const at = bars.indexOf(focusedBar());
    setFocus(bars[(at + step + bars.length) % bars.length]);
  }

  // The selection inside the turn's text, as [start, end) in characters (code points, as Python counts
  // them) of the text shown; null when nothing of it is selected. The element holds only the text.
  function selectedSpan(bar) {
    const selection = window.getSelection();
    const textEl = scopeOf(bar).querySelector(TEXT);
    if (!textEl || !selection || selection.isCollapsed || !selection.rangeCount) return null;
    const range = selection.getRangeAt(0);
    if (!range.intersectsNode(textEl)) return null;
    const whole = document.createRange();
    whole.selectNodeContents(textEl);
    const text = whole.toString();
    function offset(node, at) {
      const where = whole.comparePoint(node, at);
      if (where < 0) return 0;
      if (where > 0) return text.length;
      const head = document.createRange();
      head.setStart(textEl, 0);
      head.setEnd(node, at);
      return head.toString().length;
    }
    let start = offset(range.startContainer, range.startOffset);
    let end = offset(range.endContainer, range.endOffset);
    while (start < end && /\s/.test(text[start])) start++; // a double-click may take the space after a word
    while (end > start && /\s/.test(text[end - 1])) end--;
    if (start >= end) return null;
    const points = function (units) {
      return Array.from(text.slice(0, units)).length;
    };
    return [points(start), points(end)];
  }

  function apply(button) {
    const bar = button.closest(".tag-bar");
    if (!bar || !window.htmx) return;
    setFocus(bar);
    const values = { turn: bar.dataset.turn, task: bar.dataset.task, label: button.value };
    const span = button.hasAttribute("data-span") ? selectedSpan(bar) : null;
    if (span) {
      values.span_start = span[0];
      values.span_end = span[1];
    }
    const link = bar.querySelector('select[name="linked_turn"]');
    if (button.hasAttribute("data-links") && link && link.value) values.linked_turn = link.value;
    // One tag request at a time, in the order pressed: htmx keeps only the last of several requests queued on
    // one element, so keys pressed quickly (c, a, f) would lose the middle tags.
    const target = "#" + bar.id;
    pending = pending
      .then(function () {
        return htmx.ajax("POST", bar.dataset.addUrl, { target: target, swap: "outerHTML", values: values });
      })
      .then(function () {
        if (span) window.getSelection().removeAllRanges();
      })
      .catch(function () {}); // a refusal is shown in #errors by htmx; the next tag still goes
  }

  function typing(target) {
    return (
      target &&
      (target.isContentEditable ||
        target.tagName === "TEXTAREA" ||
        target.tagName === "SELECT" ||
        (target.tagName === "INPUT" && !["radio", "checkbox", "button", "submit"].includes(target.type)))
    );
  }

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
    const key = event.key.length === 1 ? event.key.toLowerCase() : "";
    if (!key) return;
    if (VOTE_KEYS.has(key)) {
      // session.js (loaded first) has just picked a reply by its number: the tag focus follows it.
      if (/^[1-9]$/.test(key)) {
        focusTurn = null;
        showFocus();
      }
      return;
    }
    if (key === "[" || key === "]") {
      event.preventDefault();
      move(key === "]" ? 1 : -1);
      return;
    }
    const bar = focusedBar();
    const button = bar && bar.querySelector('button.tag-label[data-key="' + CSS.escape(key) + '"]');
    if (!button) return;
    event.preventDefault();
    apply(button);
  });

  // Pressing a label button must not take away the text selection it is about to tag.
  document.addEventListener("mousedown", function (event) {
    if (event.button !== 0) return;
    if (event.target.closest("button.tag-label")) event.preventDefault();
    const bar = barIn(event.target);
    if (bar) setFocus(bar);
  });

  document.addEventListener(
    "click",
    function (event) {
      const button = event.target.closest("button.tag-label");
      if (button) {
        event.preventDefault();
        apply(button);
        return;
      }
      // Selecting text in a candidate card is for tagging: don't let the card's <label> pick it as the vote.
      const selection = window.getSelection();
      if (event.target.closest(TEXT) && selection && !selection.isCollapsed) event.preventDefault();
    },
    true,
  );

  document.addEventListener("change", function (event) {
    if (event.target.matches('.candidate input[name="choice"]')) setFocus(barIn(event.target));
  });

  document.addEventListener("DOMContentLoaded", showFocus);
  document.addEventListener("htmx:afterSettle", showFocus);
})();
