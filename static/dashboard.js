// Times in the reader's time zone, relative times that stay fresh, countdowns,
// and one-click copy of ids. Pages are complete without this file: the server
// already writes relative text and the UTC time in each <time>'s title.
(function () {
  "use strict";

  // Same wording as the server's `duration` filter (invocations/templatetags/dashboard.py).
  function duration(ms) {
    var s = ms / 1000;
    if (s < 1) return Math.round(ms) + " ms";
    if (s < 60) return s.toFixed(1) + " s";
    var min = Math.floor(s / 60), sec = Math.floor(s % 60);
    if (min < 60) return min + " min " + sec + " s";
    var h = Math.floor(min / 60);
    if (h < 48) return h + " h " + (min % 60) + " min";
    return Math.floor(h / 24) + " d " + (h % 24) + " h";
  }

  function relative(date, now) {
    var delta = now - date;
    return delta < 0 ? "in " + duration(-delta) : duration(delta) + " ago";
  }

  var zone = "";
  try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) { /* old browser */ }

  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function localText(d) {
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }
  function utcText(d) { return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "") + " UTC"; }

  function parse(el) {
    if (el._dt === undefined) {
      var d = new Date(el.getAttribute("datetime"));
      el._dt = isNaN(d.getTime()) ? null : d;
      if (el._dt) {
        // Hover: the reader's local time and the exact UTC time.
        el.title = localText(el._dt) + (zone ? " (" + zone + ")" : "") + " · " + utcText(el._dt);
        if (el.classList.contains("abs")) el.textContent = localText(el._dt) + (zone ? " " + zone : "");
      }
    }
    return el._dt;
  }

  function countdown(el, now) {
    var d = parse(el);
    if (!d) return;
    var left = d - now;
    // Whole seconds: a countdown that flickers tenths is hard to read.
    var whole = Math.max(Math.round(Math.abs(left) / 1000), 1) * 1000;
    el.textContent = left > 0 ? "in " + duration(whole).replace(".0 s", " s") : "due " + duration(whole).replace(".0 s", " s") + " ago";
    el.classList.toggle("due", left <= 0);
  }

  function refresh(root, all) {
    var now = new Date();
    var els = (root || document).querySelectorAll("time[datetime]");
    for (var i = 0; i < els.length; i++) {
      var el = els[i], d = parse(el);
      if (!d || el.classList.contains("abs")) continue;
      if (el.classList.contains("countdown")) countdown(el, now);
      else if (all) el.textContent = relative(d, now);
    }
  }

  function tickCountdowns() {
    var now = new Date(), els = document.querySelectorAll("time.countdown[datetime]");
    for (var i = 0; i < els.length; i++) countdown(els[i], now);
  }

  function copy(button) {
    var text = button.getAttribute("data-copy");
    var done = function () {
      var label = button.textContent;
      button.classList.add("copied");
      button.textContent = "copied";
      setTimeout(function () { button.classList.remove("copied"); button.textContent = label; }, 1200);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { fallbackCopy(text); done(); });
    } else { fallbackCopy(text); done(); }
  }

  function fallbackCopy(text) {
    // http:// pages have no clipboard API: a hidden textarea and execCommand still work.
    var ta = document.createElement("textarea");
    ta.value = text; ta.setAttribute("readonly", ""); ta.style.position = "absolute"; ta.style.left = "-9999px";
    document.body.appendChild(ta); ta.select();
    try { document.execCommand("copy"); } catch (e) { /* nothing more we can do */ }
    document.body.removeChild(ta);
  }

  document.addEventListener("click", function (ev) {
    var button = ev.target.closest && ev.target.closest("button[data-copy]");
    if (button) { ev.preventDefault(); copy(button); }
  });
  document.addEventListener("DOMContentLoaded", function () { refresh(document, true); });
  // Fragments swapped in by htmx (show more, live updates) get the same treatment.
  document.addEventListener("htmx:load", function (ev) { refresh(ev.target, true); });
  setInterval(tickCountdowns, 1000);
  setInterval(function () { refresh(document, true); }, 15000);
  window.dashboardTimes = { refresh: refresh, duration: duration };
})();

// Forms marked data-drop-empty (the list's filters) send only the fields that are
// set, so the URL pushed to the history is the short, shareable one. Without
// JavaScript the server redirects to the same clean URL.
(function () {
  "use strict";
  document.addEventListener("htmx:configRequest", function (ev) {
    var elt = ev.detail.elt;
    if (!elt || !elt.matches || !elt.matches("form[data-drop-empty]")) return;
    var data = ev.detail.formData;  // htmx 2: the FormData the request is built from
    var kept = [];
    data.forEach(function (value, key) { if (value !== "") kept.push([key, value]); });
    Array.from(new Set(Array.from(data.keys()))).forEach(function (key) { data.delete(key); });
    kept.forEach(function (pair) { data.append(pair[0], pair[1]); });
  });
})();
