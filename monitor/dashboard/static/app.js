// nonqueue dashboard: refresh the page's content every data-refresh ms by
// fetching the same URL and swapping <main id="content">, so scroll
// position and the header (login form) stay. Refreshing pauses while a
// form is being filled in or the tab is hidden.
(function () {
  "use strict";
  var every = parseInt(document.body.getAttribute("data-refresh"), 10) || 5000;
  var dirty = false;
  document.addEventListener("input", function (e) {
    if (e.target && e.target.closest && e.target.closest("form[method=post]")) { dirty = true; }
  });
  document.addEventListener("submit", function () { dirty = true; });
  // A flash message belongs to one load: drop it from the URL.
  if (/[?&]msg=/.test(location.search)) {
    var u = new URL(location.href);
    u.searchParams.delete("msg");
    u.searchParams.delete("n");
    history.replaceState(null, "", u.toString());
  }
  function busy() {
    var a = document.activeElement;
    return dirty || document.hidden || (a && a.closest && a.closest("form[method=post]") && a.tagName !== "BUTTON");
  }
  function stamp(text) {
    var el = document.getElementById("updated");
    if (el) { el.textContent = text; }
  }
  function tick() {
    if (busy()) { return schedule(); }
    fetch(location.href, { credentials: "same-origin", headers: { "X-Nonqueue-Refresh": "1" } })
      .then(function (res) { return res.text().then(function (body) { return { ok: res.ok, body: body }; }); })
      .then(function (r) {
        var doc = new DOMParser().parseFromString(r.body, "text/html");
        var fresh = doc.getElementById("content");
        var cur = document.getElementById("content");
        if (fresh && cur && !busy()) {
          var flash = cur.querySelector("#flash");
          cur.replaceWith(fresh);
          if (flash && !fresh.querySelector("#flash")) { flash.remove(); }
        }
        stamp((r.ok ? "updated " : "error, retrying · ") + new Date().toLocaleTimeString());
      })
      .catch(function () { stamp("offline, retrying · " + new Date().toLocaleTimeString()); })
      .then(schedule);
  }
  function schedule() { setTimeout(tick, every); }
  stamp("auto-refresh every " + Math.round(every / 1000) + "s");
  schedule();
})();
