// Live updates over a websocket (htmx ws extension): how a message is applied, the
// rows a list page follows, and the connection indicator. The extension reconnects
// by itself; the server re-sends current state on every (re)connect.
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
})();
