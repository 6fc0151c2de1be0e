// Live updates over a websocket (htmx ws extension): how a message is applied, the
// rows a list page follows, the connection indicator, and the sync indicator's own
// clock. The extension reconnects by itself; the server re-sends current state on
// every (re)connect.
(function () {
  "use strict";

  function indicator() { return document.getElementById("live"); }
  function show(state, text) {
    const el = indicator();
    if (!el) return;
    el.dataset.state = state;
    el.textContent = text;
  }

  // A message is a set of out-of-band swaps. The ws extension swaps each top-level
  // element on its own, so a table row sent wrapped in <template> (a bare <tr> parsed
  // outside a table loses its tags and id) would never reach its target; htmx's own
  // swap unwraps templates, so messages go through it instead.
  document.addEventListener("htmx:wsBeforeMessage", (ev) => {
    ev.preventDefault();
    if (typeof ev.detail.message !== "string") return;
    htmx.swap(document.body, ev.detail.message, { swapStyle: "none", ignoreTitle: true });
  });

  document.addEventListener("htmx:wsConnecting", () => show("connecting", "connecting…"));
  document.addEventListener("htmx:wsOpen", (ev) => {
    show("live", "live");
    // A list page names the rows it shows: the server sends only those (a row the
    // page lacks would be a swap with no target), starting with their current state.
    if (!ev.target.hasAttribute || !ev.target.hasAttribute("data-live-rows")) return;
    const ids = Array.from(ev.target.querySelectorAll("tr[id^='row-']"), (tr) => tr.id.slice(4));
    ev.detail.socketWrapper.send(JSON.stringify({ rows: ids }));
  });
  document.addEventListener("htmx:wsClose", () => show("down", "live updates down, reconnecting…"));
  document.addEventListener("htmx:wsError", () => show("down", "live updates down, reconnecting…"));

  // A sync that froze or died sends nothing, so the indicator cannot wait for a
  // message to turn stale: it counts down data-stale-in (seconds, from when this
  // indicator arrived; the reader's clock need not agree with the server's).
  function checkSync() {
    const el = document.getElementById("sync-state");
    if (!el || !el.classList.contains("ok") || !el.dataset.staleIn) return;
    if (el._staleAt === undefined) el._staleAt = Date.now() + parseFloat(el.dataset.staleIn) * 1000;
    if (Date.now() < el._staleAt) return;
    el.classList.replace("ok", "stale");
    const note = el.querySelector(".stale-note");
    if (note) {
      note.hidden = false;
      if (window.dashboardTimes) window.dashboardTimes.refresh(note, true);
    }
  }
  document.addEventListener("DOMContentLoaded", checkSync);
  document.addEventListener("htmx:load", checkSync);
  setInterval(checkSync, 1000);
})();
