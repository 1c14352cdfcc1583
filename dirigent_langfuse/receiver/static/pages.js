// The receiver's pages: selecting an observation shows its panel without reloading the page.
// Without this script every link still works (the page itself renders the selected panel).
"use strict";
(function () {
  function rows() {
    return Array.prototype.slice.call(document.querySelectorAll("table.waterfall tr.obs"));
  }

  function show(row) {
    var link = row && row.querySelector("a.obs-link");
    var panel = document.getElementById("detail");
    if (!link || !panel) {
      return;
    }
    fetch(link.getAttribute("data-detail"), { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (answer) {
        if (!answer.ok) {
          throw new Error("HTTP " + answer.status);
        }
        return answer.text();
      })
      .then(function (html) {
        // The receiver escaped every value in it; the page's policy runs no script inside it.
        var parsed = new DOMParser().parseFromString(html, "text/html");
        panel.replaceChildren.apply(panel, Array.prototype.slice.call(parsed.body.childNodes));
        rows().forEach(function (other) { other.classList.remove("selected"); });
        row.classList.add("selected");
        history.replaceState(null, "", link.getAttribute("href"));
      })
      .catch(function () {
        window.location.href = link.href; // the page renders the panel itself
      });
  }

  document.addEventListener("click", function (event) {
    var link = event.target.closest && event.target.closest("a.obs-link");
    if (!link || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) {
      return;
    }
    event.preventDefault();
    show(link.closest("tr"));
  });

  document.addEventListener("keydown", function (event) {
    if (event.target.closest && event.target.closest("input, textarea")) {
      return;
    }
    var step = { ArrowDown: 1, j: 1, ArrowUp: -1, k: -1 }[event.key];
    if (!step) {
      return;
    }
    var all = rows();
    var at = all.findIndex(function (row) { return row.classList.contains("selected"); });
    var next = all[Math.min(all.length - 1, Math.max(0, at + step))];
    if (next && next !== all[at]) {
      event.preventDefault();
      show(next);
      next.scrollIntoView({ block: "nearest" });
      next.querySelector("a.obs-link").focus({ preventScroll: true });
    }
  });
})();
