// Live-connection indicator for pages that hold a websocket (htmx ws extension).
// The extension reconnects by itself; the server re-sends current state on every
// (re)connect, so this only has to tell the reader whether updates are flowing.
(function () {
  function indicator() { return document.getElementById("live"); }
  function show(state, text) {
    const el = indicator();
    if (!el) return;
    el.dataset.state = state;
    el.textContent = text;
  }
  document.addEventListener("htmx:wsConnecting", () => show("connecting", "connecting…"));
  document.addEventListener("htmx:wsOpen", () => show("live", "live"));
  document.addEventListener("htmx:wsClose", () => show("down", "live updates down, reconnecting…"));
  document.addEventListener("htmx:wsError", () => show("down", "live updates down, reconnecting…"));
})();
