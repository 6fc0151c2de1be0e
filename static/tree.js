// The call tree: expand/collapse all, deep links to a row, and honest loading
// and error states for "show more". Collapsing one subtree is the browser's
// own <details>, so it works without this file.
(function () {
  "use strict";

  function setAll(open) {
    var subs = document.querySelectorAll("#inv-tree details.wf-sub, .inv-tree details.wf-sub");
    for (var i = 0; i < subs.length; i++) subs[i].open = open;
  }

  function reveal(id) {
    var el = document.getElementById(id);
    if (!el) return;
    // Open every collapsed ancestor so the row is visible, then point at it.
    for (var p = el.parentElement; p; p = p.parentElement) if (p.tagName === "DETAILS") p.open = true;
    var row = el.tagName === "DETAILS" ? el.querySelector("summary") : el;
    row.classList.add("flash");
    row.scrollIntoView({ block: "center" });
    setTimeout(function () { row.classList.remove("flash"); }, 2000);
  }

  document.addEventListener("click", function (ev) {
    var toggle = ev.target.closest && ev.target.closest("button.tree-toggle");
    if (toggle) setAll(toggle.getAttribute("data-open") === "1");
  });

  function fromHash() {
    if (location.hash.indexOf("#node-") === 0) reveal(decodeURIComponent(location.hash.slice(1)));
  }
  window.addEventListener("hashchange", fromHash);
  document.addEventListener("DOMContentLoaded", fromHash);

  // "show more": htmx toggles .htmx-request on the link; mark the row while it loads
  // and say so when it fails instead of leaving a dead link.
  document.addEventListener("htmx:beforeRequest", function (ev) {
    var row = ev.target.closest && ev.target.closest(".more-row");
    if (row) { row.classList.add("htmx-request"); row.classList.remove("load-failed"); }
  });
  function failed(ev, why) {
    var row = ev.target.closest && ev.target.closest(".more-row");
    if (!row) return;
    row.classList.remove("htmx-request");
    row.classList.add("load-failed");
    var note = row.querySelector(".loading");
    if (note) { note.textContent = " " + why + ": click to retry"; note.style.display = "inline"; }
  }
  document.addEventListener("htmx:responseError", function (ev) {
    failed(ev, "could not load (HTTP " + ev.detail.xhr.status + ")");
  });
  document.addEventListener("htmx:sendError", function (ev) { failed(ev, "the dashboard is unreachable"); });
})();
