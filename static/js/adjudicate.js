/* ragloop adjudication page: one key takes a curator's value for the focused row (a for the
 * first curator's column, b for the second's, ...), j/k move between rows. Plain JS, no build. */
(function () {
  "use strict";

  function rows() { return Array.prototype.slice.call(document.querySelectorAll("#comparison .adj-row")); }

  function take(row, letter) {
    var button = row.querySelector('.adj-take[data-letter="' + letter + '"]');
    var select = row.querySelector("select");
    if (!button || !select) return false;
    select.value = button.dataset.take;
    select.dispatchEvent(new Event("change", { bubbles: true }));
    return true;
  }

  function move(row, delta) {
    var list = rows();
    var next = list[list.indexOf(row) + delta];
    if (next) { next.focus(); next.scrollIntoView({ block: "nearest" }); }
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest(".adj-take") : null;
    if (!button) return;
    take(button.closest(".adj-row"), button.dataset.letter);
  });

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.defaultPrevented) return;
    var target = event.target;
    if (target.tagName === "TEXTAREA" || target.tagName === "SELECT" || (target.tagName === "INPUT" && target.type !== "checkbox")) return;
    var row = target.closest ? target.closest(".adj-row") : null;
    if (event.key === "j" || event.key === "k") {
      if (!row) { var first = rows()[0]; if (first) first.focus(); }
      else move(row, event.key === "j" ? 1 : -1);
      event.preventDefault();
      return;
    }
    if (row && /^[a-h]$/.test(event.key) && take(row, event.key)) {
      move(row, 1);
      event.preventDefault();
    }
  });
})();
