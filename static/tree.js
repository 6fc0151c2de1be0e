// The call tree: expand/collapse all, deep links to a row, honest loading and error
// states for "show more", and live refreshes that keep what the reader did.
// Collapsing one subtree is the browser's own <details>, so it works without this file.
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

  // ---- live refresh
  // The socket only says that the tree changed (#inv-changed, with the URL to fetch);
  // the header and tree come over HTTP, one request at a time (a change announced
  // meanwhile is fetched once the current request is done).

  // "show more" rows the reader opened, as parent:offset:exclude: the server draws them opened.
  var opened = {};
  document.addEventListener("htmx:afterRequest", function (ev) {
    var link = ev.detail.elt;
    if (!ev.detail.successful || !link.classList || !link.classList.contains("more-link")) return;
    var url = new URL(link.getAttribute("hx-get"), location.href);
    var m = url.pathname.match(/\/invocations\/([^/]+)\/children\/$/);
    if (m) {
      opened[decodeURIComponent(m[1]) + ":" + (url.searchParams.get("offset") || "0") + ":" +
        (url.searchParams.get("exclude") || "")] = true;
    }
  });

  var loading = false;
  var queued = null;
  function refresh(href) {
    if (loading) { queued = href; return; }
    loading = true;
    var url = new URL(href, location.href);
    Object.keys(opened).forEach(function (key) { url.searchParams.append("expand", key); });
    fetch(url, { headers: { "HX-Request": "true" }, credentials: "same-origin" })
      .then(function (r) { return r.ok && !r.redirected ? r.text() : null; })
      .then(function (html) {
        if (!html) return;
        var tree = document.getElementById("inv-tree");
        var anchor = tree && scrollAnchor(tree); // before the header above it changes too
        htmx.swap(document.body, html, { swapStyle: "none", ignoreTitle: true });
        restoreScroll(anchor);
      })
      .catch(function () { /* the next change, or the socket's reconnect, asks again */ })
      .then(function () {
        loading = false;
        if (queued) { var next = queued; queued = null; refresh(next); }
      });
  }
  document.addEventListener("htmx:load", function (ev) {
    var el = ev.target;
    if (el.id === "inv-changed" && el.dataset.url) refresh(el.dataset.url);
  });

  // What the reader sees stays put: the row at the top of the viewport keeps its
  // place (or, with the tree scrolled past, what lies below it).
  function scrollAnchor(tree) {
    var box = tree.getBoundingClientRect();
    if (box.top >= window.innerHeight) return null; // below the viewport: nothing the reader sees moves
    if (box.bottom <= 0) return { bottom: box.bottom };
    var hit = document.elementFromPoint(box.left + box.width / 4, Math.max(box.top, 0) + 2);
    var row = hit && hit.closest && hit.closest("[id^='node-']");
    if (!row) return { id: tree.id, top: box.top }; // the tree's heading is at the top
    return { id: row.id, top: row.getBoundingClientRect().top };
  }
  function restoreScroll(anchor) {
    if (!anchor) return;
    if (anchor.id) {
      var row = document.getElementById(anchor.id);
      if (row) window.scrollBy(0, row.getBoundingClientRect().top - anchor.top);
    } else {
      var tree = document.getElementById("inv-tree");
      if (tree) window.scrollBy(0, tree.getBoundingClientRect().bottom - anchor.bottom);
    }
  }

  // Collapsed subtrees stay collapsed: closed in the new tree before it is shown.
  document.addEventListener("htmx:oobBeforeSwap", function (ev) {
    var old = ev.detail.target;
    if (!old || old.id !== "inv-tree") return;
    var collapsed = {};
    old.querySelectorAll("details.wf-sub:not([open])").forEach(function (d) { collapsed[d.id] = true; });
    ev.detail.fragment.querySelectorAll("details.wf-sub").forEach(function (d) {
      if (collapsed[d.id]) d.open = false;
    });
  });
})();
