// Every diode console (diode-recv, diode-send, diode-chat): polls state.json every 2 s and swaps in the
// sections the server rendered (and escaped); filters the rows marked data-search by the search box, where
// the page has one; copies a replay line. No inline script anywhere (the page's CSP is default-src 'self').
"use strict";
(function () {
  const live = document.getElementById("live");
  const search = document.getElementById("search");
  const conn = document.getElementById("conn");

  function filter() {
    if (!search) return;
    const q = search.value.trim().toLowerCase();
    for (const tr of live.querySelectorAll("tr[data-search]")) {
      tr.hidden = q !== "" && !tr.dataset.search.includes(q);
    }
  }

  async function poll() {
    try {
      const r = await fetch("/state.json", { cache: "no-store" });
      if (!r.ok) {
        conn.textContent = "the console answered " + r.status;
        return;
      }
      const j = await r.json();
      live.innerHTML = j.html;
      filter();
      conn.textContent = "live, " + j.now;
    } catch (e) {
      conn.textContent = "the console cannot be reached";
    }
  }

  document.addEventListener("click", function (ev) {
    const b = ev.target.closest("button[data-copy]");
    if (!b) return;
    const text = b.dataset.copy;
    const done = function () { b.textContent = "copied"; };
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(text).then(done, function () { b.textContent = "select and copy"; });
    } else {
      const code = b.parentElement.querySelector("code");
      if (code) {
        const range = document.createRange();
        range.selectNodeContents(code);
        const sel = window.getSelection();
        sel.removeAllRanges();
        sel.addRange(range);
        b.textContent = "selected: Ctrl+C";
      }
    }
  });
  if (search) search.addEventListener("input", filter);
  setInterval(poll, 2000);
})();
