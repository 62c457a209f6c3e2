// Live rating session: token streaming (server-sent events) and keyboard shortcuts.
// The page works without this file, minus live tokens and keys.
(function () {
  "use strict";
  let source = null;
  // How long to wait before opening a stream the server refused (as its 503's Retry-After: core.middleware).
  const STREAM_RETRY_MS = 5000;

  const STATE = { pending: "waiting for a worker…", streaming: "writing…", done: "", failed: "failed" };

  function refreshSession() {
    // The candidates are done: reload the composer (the vote, enabled), not the whole session.
    const composer = document.getElementById("composer");
    if (composer && window.htmx) {
      htmx.ajax("GET", composer.dataset.fragmentUrl, { target: "#composer", swap: "outerHTML" });
    }
  }

  function noteText(stateEl) {
    const seconds = Math.round((Date.now() - Number(stateEl.dataset.since)) / 1000);
    return stateEl.dataset.note + "… " + seconds + " s";
  }

  function tickNotes() {
    document.querySelectorAll(".candidate .state[data-note]").forEach(function (stateEl) {
      stateEl.textContent = noteText(stateEl);
    });
  }
  window.setInterval(tickNotes, 1000);

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
      const stateEl = card.querySelector(".state");
      if (data.note && !data.text && (data.status === "pending" || data.status === "streaming")) {
        // e.g. the model is loading: said with the seconds waited so far (ticked by `tickNotes`)
        stateEl.dataset.note = data.note;
        stateEl.dataset.since = stateEl.dataset.since || String(Date.now());
        state = noteText(stateEl);
      } else {
        delete stateEl.dataset.note;
        delete stateEl.dataset.since;
      }
      stateEl.textContent = state;
      card.querySelector(".cand-error").textContent = data.status === "failed" ? data.error : "";
      // For bench/ and tests: when the browser showed the text the worker stamped at data.t.
      window.cgLastToken = { id: data.id, t: data.t, shownAt: Date.now() / 1000, length: data.text.length };
    });
    source.addEventListener("end", function () {
      source.close();
      source = null;
      refreshSession();
    });
    // EventSource reconnects by itself after a dropped connection or a stream the server ended early, but gives
    // up for good on an HTTP error (a 503 while the database is busy or restarting): try again, as Retry-After says.
    const mine = source;
    mine.addEventListener("error", function () {
      if (mine.readyState !== EventSource.CLOSED || source !== mine) return;
      source = null;
      window.setTimeout(connectStream, STREAM_RETRY_MS);
    });
  }

  function typing(target) {
    return target && (target.tagName === "TEXTAREA" || (target.tagName === "INPUT" && target.type === "text"));
  }

  function pick(form, value) {
    const input = form.querySelector('input[name="choice"][value="' + value + '"]');
    if (input && !input.disabled) {
      input.checked = true;
      tieFollowUp(form);
    }
  }

  // After "tie" or "both bad" nothing was preferred: the study says what the conversation goes on from, a reply
  // the rater picks (the "go on from" radios become required) or the rater's rewrite (its box opens).
  function tieFollowUp(form) {
    const choice = form.querySelector('input[name="choice"]:checked');
    const tie = !!choice && (choice.value === "tie" || choice.value === "all_bad");
    const box = form.querySelector(".tie-continue");
    if (!box) return;
    const picks = box.querySelectorAll('input[name="continue_from"]');
    picks.forEach(function (input) {
      input.required = tie;
    });
    if (tie && box.dataset.policy === "rewrite") {
      const details = form.querySelector("details.rewrite");
      details.open = true;
      form.querySelector('input[name="use_rewrite"]').checked = true;
      form.querySelector('textarea[name="rewrite"]').required = true;
    } else if (box.dataset.policy === "rewrite") {
      form.querySelector('textarea[name="rewrite"]').required = false;
    }
  }

  // Long text is never cut silently: a box with data-max counts its characters and refuses to send beyond them.
  function countChars(area) {
    const max = Number(area.dataset.max);
    if (!max) return;
    let counter = area.parentElement.querySelector(".char-count[data-for='" + area.name + "']");
    if (!counter) {
      counter = document.createElement("span");
      counter.className = "char-count";
      counter.dataset.for = area.name;
      counter.setAttribute("aria-live", "polite");
      area.insertAdjacentElement("afterend", counter);
    }
    const length = Array.from(area.value).length;
    const over = length - max;
    area.setCustomValidity(over > 0 ? "This is " + over + " characters too long (at most " + max + ")." : "");
    counter.textContent = over > 0 ? length + " / " + max + ": " + over + " too many" : length > max * 0.8 ? length + " / " + max : "";
    counter.classList.toggle("over", over > 0);
  }

  document.addEventListener("input", function (event) {
    if (event.target.matches && event.target.matches("textarea[data-max]")) countChars(event.target);
  });
  document.addEventListener("change", function (event) {
    const form = event.target.form;
    if (form && form.id === "vote-form" && event.target.name === "choice") tieFollowUp(form);
  });

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const message = document.getElementById("message");
    if (event.target === message && event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      if (message.reportValidity()) message.form.requestSubmit();
      return;
    }
    if (typing(event.target)) return;
    const form = document.getElementById("vote-form");
    if (!form) return;
    const key = event.key.toLowerCase();
    if (/^[1-9]$/.test(key)) {
      const card = form.querySelector('.candidate[data-index="' + key + '"] input[name="choice"]');
      if (card) pick(form, card.value);
    } else if (key === "t" || key === "b") {
      pick(form, key === "t" ? "tie" : "all_bad");
      // The keyboard goes on where the next decision is: which reply to go on from (Space or arrows, then Enter).
      const goOn = form.querySelector('.tie-continue input[name="continue_from"]');
      if (goOn && !form.querySelector('input[name="continue_from"]:checked')) goOn.focus();
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
      // Enter is the vote wherever the focus is (a radio, a tag chip…), except on a button, which it presses.
      if (event.target.tagName === "BUTTON" || event.target.tagName === "SUMMARY" || event.target.tagName === "SELECT") return;
      if (event.target !== document.body && !form.contains(event.target)) return; // a link elsewhere: its own
      event.preventDefault();
      const button = document.getElementById("vote-submit");
      if (button.closest("fieldset").disabled) return;
      if (!form.querySelector('input[name="choice"]:checked')) {
        const errors = document.getElementById("errors");
        if (errors) errors.innerHTML = '<p class="error" role="alert">Choose a reply first: 1, 2, t (tie) or b (both bad).</p>';
        return;
      }
      form.requestSubmit(button);
    } else {
      return;
    }
  });

  // The vote form holds other buttons (tags, suggestions, retries) with their own URLs; htmx sends a form to the
  // last button clicked in it, so a vote submitted by Enter after a click on a tag went to the tag's URL.
  document.addEventListener("htmx:configRequest", function (event) {
    const form = event.detail.elt;
    if (form && form.id === "vote-form" && event.detail.verb === "post") {
      event.detail.path = form.getAttribute("hx-post");
    }
  });

  // A page restored from the back/forward cache shows what was true when it was left: load it afresh.
  window.addEventListener("pageshow", function (event) {
    if (event.persisted) window.location.reload();
  });

  document.addEventListener("DOMContentLoaded", function () {
    if (window.matchMedia("(max-width: 700px)").matches) {
      document.querySelectorAll("details.help").forEach(function (help) {
        help.open = false;
      });
    }
  });
  document.addEventListener("DOMContentLoaded", connectStream);
  document.addEventListener("htmx:afterSettle", connectStream);
})();
