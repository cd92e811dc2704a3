// hookfleet console: confirmations, select-all, live overview and replay progress.
// Every action also works without this script (plain forms).
"use strict";
(function () {
  // Bulk and destructive buttons ask first.
  document.querySelectorAll("button[data-confirm]").forEach(function (b) {
    b.addEventListener("click", function (e) {
      if (!window.confirm(b.getAttribute("data-confirm"))) { e.preventDefault(); }
    });
  });
  var all = document.getElementById("all");
  if (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll("input[name=id]").forEach(function (c) { c.checked = all.checked; });
    });
  }

  function poll(url, every, apply) {
    function tick() {
      fetch(url, { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (d) { if (d) { apply(d); } })
        .catch(function () {})
        .finally(function () { setTimeout(tick, every); });
    }
    tick();
  }
  function set(sel, v) {
    document.querySelectorAll(sel).forEach(function (el) { el.textContent = v; });
  }

  // Overview: figures and a rate chart from counter deltas between polls.
  var live = document.querySelector("[data-live]");
  if (live) {
    var last = null, points = [], keep = 150;
    poll(live.getAttribute("data-live"), 2000, function (d) {
      set("[data-f=ready]", d.ready ? "ready" : "not ready");
      set("[data-f=reason]", d.reason || "");
      set("[data-f=outbox_pending]", d.outbox_pending == null ? "?" : d.outbox_pending);
      set("[data-f=outbox_oldest_pending_age_seconds]",
        d.outbox_oldest_pending_age_seconds == null ? "?" : Math.round(d.outbox_oldest_pending_age_seconds) + " s");
      set("[data-f=outbox_published_last_minute]", d.outbox_published_last_minute == null ? "?" : d.outbox_published_last_minute);
      set("[data-f=in_flight]", d.in_flight);
      set("[data-f=relay_rate]", !d.relay_here ? "not running here"
        : d.relay_rate == null ? "measuring\u2026" : d.relay_rate.toFixed(1) + "/s");
      set("[data-f=relay_window]", d.relay_rate_window_seconds == null ? ""
        : "over the last " + Math.round(d.relay_rate_window_seconds) + " s");
      set("[data-f=uptime]", d.uptime);
      var now = Date.now(), h = 0, f = 0;
      d.kinds.forEach(function (k) {
        ["work", "consumers", "retry", "dead", "in_flight"].forEach(function (x) { set('[data-k="' + k.kind + "." + x + '"]', k[x]); });
        var prev = last && last.kinds[k.kind];
        if (prev) {
          var secs = (now - last.at) / 1000;
          var hr = Math.max(0, (k.handled_total - prev.handled_total) / secs);
          var fr = Math.max(0, (k.failed_total - prev.failed_total) / secs);
          set('[data-k="' + k.kind + '.handled_rate"]', hr.toFixed(1));
          set('[data-k="' + k.kind + '.failed_rate"]', fr.toFixed(1));
          h += hr; f += fr;
        }
      });
      if (last) { points.push([h, f]); if (points.length > keep) { points.shift(); } draw(); }
      last = { at: now, kinds: {} };
      d.kinds.forEach(function (k) { last.kinds[k.kind] = k; });
    });
    var draw = function () {
      var max = 1;
      points.forEach(function (p) { max = Math.max(max, p[0], p[1]); });
      ["chart-handled", "chart-failed"].forEach(function (id, i) {
        var line = points.map(function (p, x) {
          return (x * 300 / (keep - 1)).toFixed(1) + "," + (58 - p[i] * 56 / max).toFixed(1);
        }).join(" ");
        document.getElementById(id).setAttribute("points", line);
      });
    };
  }

  // Outbox: replay progress while one runs.
  var replay = document.querySelector("[data-replay=running]");
  if (replay) {
    poll("/console/api/replay", 1000, function (d) {
      set("#replay-state", d.state);
      set("#replay-done", d.done);
      set("#replay-total", d.total);
      set("#replay-error", d.error || "");
      var bar = document.getElementById("replay-bar");
      if (bar) { bar.max = d.total || 1; bar.value = d.done; }
      if (d.state !== "running") { window.location.reload(); }
    });
  }
})();
