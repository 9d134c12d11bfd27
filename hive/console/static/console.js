// Keyboard triage for the console's lists: j/k move, o or Enter open, a approve,
// d deny (each asks first), / filter, r reload, g then o/a/i/e/c/n/r/p goes to a page, ? help.
// Rows are the <tr data-href> of the table marked data-nav; approve/deny are the row's
// button.approve / button.deny (their forms carry hx-confirm, so htmx asks).
(function () {
  "use strict";
  var pages = {o: "/", a: "/alerts", i: "/incidents", e: "/events", c: "/actions", n: "/agents", r: "/rules",
               p: "/playbooks"};
  var pendingG = false;

  function rows() {
    var table = document.querySelector("table[data-nav]");
    return table ? Array.prototype.slice.call(table.querySelectorAll("tbody tr")) : [];
  }
  function current(list) {
    for (var i = 0; i < list.length; i++) if (list[i].classList.contains("sel")) return i;
    return -1;
  }
  function select(list, i) {
    if (!list.length) return;
    i = Math.max(0, Math.min(list.length - 1, i));
    list.forEach(function (r) { r.classList.remove("sel"); });
    list[i].classList.add("sel");
    list[i].scrollIntoView({block: "nearest"});
  }
  function press(selector) {
    var list = rows(), i = current(list);
    if (i < 0) return;
    var button = list[i].querySelector(selector);
    if (button) button.click();
  }

  document.addEventListener("keydown", function (ev) {
    var t = ev.target;
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA")) {
      if (ev.key === "Escape") t.blur();
      return;
    }
    var list = rows(), i = current(list);
    if (pendingG) {
      pendingG = false;
      if (pages[ev.key]) { location.href = pages[ev.key]; ev.preventDefault(); }
      return;
    }
    switch (ev.key) {
      case "j": select(list, i + 1); break;
      case "k": select(list, i < 0 ? 0 : i - 1); break;
      case "o": case "Enter":
        if (i >= 0 && list[i].dataset.href) location.href = list[i].dataset.href; else return;
        break;
      case "a": press("button.approve"); break;
      case "d": press("button.deny"); break;
      case "/":
        var f = document.querySelector("[data-filter]");
        if (!f) return;
        f.focus(); f.select && f.select();
        break;
      case "r": location.reload(); break;
      case "g": pendingG = true; break;
      case "?": document.getElementById("help").classList.toggle("open"); break;
      default: return;
    }
    ev.preventDefault();
  });

  // A form with data-confirm asks before it is sent (the users page's changes).
  document.addEventListener("submit", function (ev) {
    var message = ev.target.dataset && ev.target.dataset.confirm;
    if (message && !window.confirm(message)) ev.preventDefault();
  });

  // A click on a row selects it; a click on its link still follows the link.
  document.addEventListener("click", function (ev) {
    var tr = ev.target.closest && ev.target.closest("table[data-nav] tbody tr");
    if (!tr) return;
    var list = rows();
    select(list, list.indexOf(tr));
  });
})();
