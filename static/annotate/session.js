// Live rating session: token streaming (server-sent events) and keyboard shortcuts.
// The page works without this file, minus live tokens and keys.
(function () {
  "use strict";
  let source = null;

  const STATE = { pending: "waiting for a worker…", streaming: "writing…", done: "", failed: "failed" };

  function refreshSession() {
    // The candidates are done: reload the composer (the vote, enabled), not the whole session.
    const composer = document.getElementById("composer");
    if (composer && window.htmx) {
      htmx.ajax("GET", composer.dataset.fragmentUrl, { target: "#composer", swap: "outerHTML" });
    }
  }

  function connectStream() {
    const box = document.querySelector("[data-stream-url]");
    if (source && (!box || source.url.indexOf(box.dataset.streamUrl) === -1)) {
      source.close();
      source = null;
    }
    if (!box || source) return;
    source = new EventSource(box.dataset.streamUrl);
    source.addEventListener("turn", function (event) {
      const data = JSON.parse(event.data);
      const card = document.getElementById("cand-" + data.id);
      const text = card && card.querySelector(".cand-text");
      if (!text) return; // the fragment was swapped out while this event was on its way
      text.textContent = data.text;
      card.dataset.status = data.status;
      // attempt > 1: the reply was started again (its worker stopped); say so while it is rewritten.
      const again = data.attempt > 1 && (data.status === "pending" || data.status === "streaming");
      let state = again ? "started again after a worker stopped…" : STATE[data.status] || "";
      if (data.status === "pending" && data.ahead > 0) {
        state = "waiting for a worker: " + data.ahead + " repl" + (data.ahead === 1 ? "y" : "ies") + " before it…";
      }
      card.querySelector(".state").textContent = state;
      card.querySelector(".cand-error").textContent = data.status === "failed" ? data.error : "";
      // For bench/ and tests: when the browser showed the text the worker stamped at data.t.
      window.cgLastToken = { id: data.id, t: data.t, shownAt: Date.now() / 1000, length: data.text.length };
    });
    source.addEventListener("end", function () {
      source.close();
      source = null;
      refreshSession();
    });
  }

  function typing(target) {
    return target && (target.tagName === "TEXTAREA" || (target.tagName === "INPUT" && target.type === "text"));
  }

  function pick(form, value) {
    const input = form.querySelector('input[name="choice"][value="' + value + '"]');
    if (input && !input.disabled) input.checked = true;
  }

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const message = document.getElementById("message");
    if (event.target === message && event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      message.form.requestSubmit();
      return;
    }
    if (typing(event.target)) return;
    const form = document.getElementById("vote-form");
    if (!form) return;
    const key = event.key.toLowerCase();
    if (/^[1-9]$/.test(key)) {
      const card = form.querySelector('.candidate[data-index="' + key + '"] input[name="choice"]');
      if (card) pick(form, card.value);
    } else if (key === "t") {
      pick(form, "tie");
    } else if (key === "b") {
      pick(form, "all_bad");
    } else if (key === "s") {
      const slight = form.querySelector('input[name="strength"][value="slight"]');
      const clear = form.querySelector('input[name="strength"][value="clear"]');
      (slight.checked ? clear : slight).checked = true;
    } else if (key === "r") {
      const details = form.querySelector("details.rewrite");
      const chosen = form.querySelector('.candidate input[name="choice"]:checked');
      details.open = true;
      form.querySelector('input[name="use_rewrite"]').checked = true;
      const area = form.querySelector('textarea[name="rewrite"]');
      const chosenText = chosen && chosen.closest(".candidate").querySelector(".cand-text");
      if (!area.value && chosenText) area.value = chosenText.textContent.trim();
      area.focus();
      event.preventDefault();
    } else if (key === "enter") {
      const button = document.getElementById("vote-submit");
      if (form.querySelector('input[name="choice"]:checked') && !button.closest("fieldset").disabled) {
        event.preventDefault();
        form.requestSubmit(button);
      }
    } else {
      return;
    }
  });

  document.addEventListener("DOMContentLoaded", connectStream);
  document.addEventListener("htmx:afterSettle", connectStream);
})();
