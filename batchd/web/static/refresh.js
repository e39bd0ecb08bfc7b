// Refreshes the page's <main> every few seconds while the tab is shown. The page works the
// same without it: reloading shows the same thing.
(function () {
  "use strict";
  var main = document.querySelector("main[data-refresh]");
  if (!main || !window.fetch || !window.DOMParser) { return; }
  var every = Number(main.getAttribute("data-refresh")) * 1000;
  function later() { window.setTimeout(tick, every); }
  function tick() {
    if (document.hidden) { later(); return; }
    window.fetch(window.location.href, { headers: { Accept: "text/html" }, cache: "no-store" })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (!html) { return; }
        // Parsed, not executed: the server escaped everything in it.
        var fresh = new DOMParser().parseFromString(html, "text/html").querySelector("main");
        if (fresh) { main.replaceWith(fresh); main = fresh; }
      })
      .catch(function () { /* the next tick tries again */ })
      .then(later);
  }
  later();
})();
