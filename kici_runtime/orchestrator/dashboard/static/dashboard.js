// KiCI dashboard: theme toggle, live page regions, live job logs (server-sent events), log search.
// Everything received is inserted as text (textContent) or as nodes parsed from our own escaped pages;
// nothing from a log line or an event ever becomes markup.
"use strict";
(function () {
  var root = document.documentElement;

  // ---------------------------------------------------------------- theme
  try {
    var saved = localStorage.getItem("kici-theme");
    if (saved === "light" || saved === "dark") root.dataset.theme = saved;
  } catch (e) { /* storage disabled */ }
  function isDark() {
    if (root.dataset.theme) return root.dataset.theme === "dark";
    return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
  }
  document.addEventListener("click", function (ev) {
    var button = ev.target.closest && ev.target.closest("[data-theme-toggle]");
    if (!button) return;
    root.dataset.theme = isDark() ? "light" : "dark";
    try { localStorage.setItem("kici-theme", root.dataset.theme); } catch (e) { /* ignore */ }
  });

  // ---------------------------------------------------------------- live regions
  // Elements with data-live (and an id) are refreshed from a fresh copy of the page every few seconds
  // while the tab is visible, until the page marks them data-live-done.
  var LIVE_MS = 2500;
  function refreshLive() {
    var regions = document.querySelectorAll("[data-live][id]:not([data-live-done])");
    if (!regions.length) return;
    if (document.hidden) { setTimeout(refreshLive, LIVE_MS); return; }
    fetch(location.href, { credentials: "same-origin", headers: { "X-Kici-Live": "1" } }).then(function (r) {
      if (!r.ok || r.redirected) return null;  // signed out or gone: stop refreshing
      return r.text();
    }).then(function (html) {
      if (html === null) return;
      var fresh = new DOMParser().parseFromString(html, "text/html");
      regions.forEach(function (old) {
        var next = fresh.getElementById(old.id);
        if (!next || next.innerHTML === old.innerHTML) return;
        if (old.contains(document.activeElement) && document.activeElement !== document.body) return;
        old.replaceWith(document.importNode(next, true));
      });
      setTimeout(refreshLive, LIVE_MS);
    }).catch(function () { setTimeout(refreshLive, LIVE_MS * 2); });
  }

  // ---------------------------------------------------------------- logs
  var CLASS_OK = /^[a-z0-9 ]*$/;
  function lineNode(number, segments) {
    var div = document.createElement("div");
    div.className = "line";
    div.id = "L" + number;
    var a = document.createElement("a");
    a.className = "ln";
    a.href = "#L" + number;
    a.setAttribute("aria-label", "line " + number);
    a.textContent = String(number);
    var tx = document.createElement("span");
    tx.className = "tx";
    (segments || []).forEach(function (seg) {
      var cls = String(seg[0] || ""), text = String(seg[1] || "");
      if (cls && CLASS_OK.test(cls)) {
        var s = document.createElement("span");
        s.className = cls;
        s.textContent = text;
        tx.appendChild(s);
      } else {
        tx.appendChild(document.createTextNode(text));
      }
    });
    div.appendChild(a);
    div.appendChild(tx);
    return div;
  }

  function startLog(log) {
    var url = log.getAttribute("data-stream");
    if (!url || !window.EventSource) return;
    var count = parseInt(log.getAttribute("data-line-count"), 10) || 0;
    var pending = [];
    var scheduled = false;
    function atBottom() {
      return window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 60;
    }
    function section(step, title) {
      var sections = log.querySelectorAll(":scope > details.section");
      var last = sections[sections.length - 1];
      if (last && last.getAttribute("data-step") === String(step)) return last;
      var d = document.createElement("details");
      d.className = "section";
      d.open = true;
      d.setAttribute("data-step", String(step));
      var summary = document.createElement("summary");
      summary.textContent = String(title || "");
      d.appendChild(summary);
      log.appendChild(d);
      return d;
    }
    function flush() {
      scheduled = false;
      var follow = atBottom();
      var empty = document.getElementById("log-empty");
      if (empty) empty.remove();
      pending.splice(0).forEach(function (chunk) {
        var target = section(chunk.step, chunk.title);
        var frag = document.createDocumentFragment();
        (chunk.lines || []).forEach(function (segments) {
          count += 1;
          frag.appendChild(lineNode(count, segments));
        });
        target.appendChild(frag);
      });
      log.setAttribute("data-line-count", String(count));
      if (follow) window.scrollTo(0, document.documentElement.scrollHeight);
    }
    var source = new EventSource(url);
    source.addEventListener("chunk", function (ev) {
      try { pending.push(JSON.parse(ev.data)); } catch (e) { return; }
      if (!scheduled) { scheduled = true; setTimeout(flush, 40); }
    });
    source.addEventListener("end", function (ev) {
      source.close();
      var status = "";
      try { status = String(JSON.parse(ev.data).status || ""); } catch (e) { /* ignore */ }
      var note = document.getElementById("live-note");
      if (note) note.textContent = status === "signed-out" ? "stopped: signed out" : "finished";
      var badge = document.querySelector("#job-status .badge");
      if (badge && /^[a-z_]+$/.test(status) && status !== "signed-out") {
        badge.textContent = status;
        badge.className = "badge s-" + status;
      }
      log.setAttribute("data-ended", status);
    });
  }

  // ---------------------------------------------------------------- search
  function startSearch(input, log) {
    var hits = [], current = -1, timer = null;
    var counter = document.getElementById("search-count");
    function clear() {
      hits.forEach(function (l) { l.classList.remove("hit", "current"); });
      hits = []; current = -1;
    }
    function run() {
      clear();
      var q = input.value.toLowerCase();
      if (q) {
        log.querySelectorAll(".line").forEach(function (line) {
          var tx = line.lastChild;
          if (tx && tx.textContent.toLowerCase().indexOf(q) !== -1) { line.classList.add("hit"); hits.push(line); }
        });
      }
      if (counter) counter.textContent = q ? hits.length + " match" + (hits.length === 1 ? "" : "es") : "";
    }
    function go(step) {
      if (!hits.length) return;
      if (current >= 0) hits[current].classList.remove("current");
      current = (current + step + hits.length) % hits.length;
      var line = hits[current];
      var details = line.closest("details");
      if (details) details.open = true;
      line.classList.add("current");
      line.scrollIntoView({ block: "center" });
      if (counter) counter.textContent = (current + 1) + " of " + hits.length;
    }
    input.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(run, 120); });
    input.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter") { ev.preventDefault(); clearTimeout(timer); if (!hits.length) run(); go(ev.shiftKey ? -1 : 1); }
      if (ev.key === "Escape") { input.value = ""; clear(); if (counter) counter.textContent = ""; }
    });
    document.addEventListener("keydown", function (ev) {
      var tag = (ev.target && ev.target.tagName) || "";
      if (ev.key === "/" && tag !== "INPUT" && tag !== "TEXTAREA" && tag !== "SELECT") { ev.preventDefault(); input.focus(); }
    });
  }

  function showTarget() {
    var id = decodeURIComponent(location.hash.slice(1));
    var el = id && document.getElementById(id);
    if (!el) return;
    var details = el.closest("details");
    if (details) details.open = true;
    el.scrollIntoView({ block: "center" });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var log = document.getElementById("log");
    if (log) {
      startLog(log);
      var input = document.getElementById("log-search");
      if (input) startSearch(input, log);
      showTarget();
      window.addEventListener("hashchange", showTarget);
    }
    setTimeout(refreshLive, LIVE_MS);
  });
})();
