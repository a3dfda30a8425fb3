// The TAs' grading page (grading/manual_server.py): math with the vendored KaTeX, and saving a
// student's points and comment to the gradebook through POST /api/grade.
"use strict";

function renderMath(root) {
  if (!window.katex) return;
  root.querySelectorAll(".math").forEach(function (el) {
    var tex = el.textContent.trim(), display = el.tagName === "DIV";
    tex = tex.replace(/^\$\$|\$\$$/g, "").replace(/^\\\(|\\\)$/g, "").replace(/^\\\[|\\\]$/g, "");
    try {
      // trust: false (KaTeX's default) refuses \href, \url and HTML in a student's formula
      katex.render(tex, el, {displayMode: display, throwOnError: false, trust: false,
                             maxSize: 50, maxExpand: 500});
    } catch (e) { el.textContent = tex; }
  });
}

var TOKEN = document.querySelector('meta[name="grading-token"]').content;

// One save at a time per card, in order: a comment's blur and a point click right after it
// must not land (or report) the other way round.
var queues = new WeakMap();
function save(card, moveOn) {
  var prev = queues.get(card) || Promise.resolve();
  var next = prev.then(function () { return send(card, moveOn); });
  queues.set(card, next);
  return next;
}

function send(card, moveOn) {
  var main = card.closest(".answers");
  var pts = card.querySelector(".points"), com = card.querySelector(".comment");
  var out = card.querySelector(".saved");
  var body = {student: card.dataset.student, assignment: main.dataset.assignment,
              notebook: main.dataset.notebook, question: main.dataset.question,
              points: pts.value.trim(), comment: com.value};
  out.textContent = "saving…";
  out.className = "saved";
  return fetch("/api/grade", {method: "POST", credentials: "same-origin",
                              headers: {"Content-Type": "application/json", "X-Grading-Token": TOKEN},
                              body: JSON.stringify(body)})
    .then(function (r) { return r.json().then(function (j) { return [r.ok, j]; }); })
    .then(function (res) {
      var ok = res[0], j = res[1];
      if (!ok || !j.ok) {
        out.textContent = (j && j.error) || "not saved";
        out.className = "saved error";
        return false;
      }
      com.dataset.saved = com.value;
      out.textContent = j.written ? "saved" : "nothing to save (no points)";
      card.querySelector(".status").textContent = j.status;
      card.classList.toggle("graded", j.points !== "");
      card.querySelectorAll(".step").forEach(function (b) {
        b.classList.toggle("on", b.dataset.points === j.points);
      });
      var p = document.getElementById("progress");
      if (p) p.textContent = j.graded + " / " + j.total + " graded";
      if (moveOn) focusNext(card);
      return true;
    })
    .catch(function (e) { out.textContent = "not saved: " + e; out.className = "saved error"; });
}

function focusNext(card) {
  var n = card.nextElementSibling;
  while (n && !n.classList.contains("card")) n = n.nextElementSibling;
  if (n) {
    n.scrollIntoView({block: "start"});
    n.querySelector(".points").focus();
  }
}

document.querySelectorAll(".md").forEach(renderMath);
document.querySelectorAll(".card").forEach(function (card) {
  var pts = card.querySelector(".points"), com = card.querySelector(".comment");
  com.dataset.saved = com.value;
  card.querySelectorAll(".step").forEach(function (b) {
    b.addEventListener("click", function () { pts.value = b.dataset.points; save(card, true); });
  });
  card.querySelector("form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    save(card, true);
  });
  com.addEventListener("blur", function () {
    if (com.value === com.dataset.saved) return;
    if (pts.value.trim() === "") {  // saved with the points: a comment alone is not a grade
      var out = card.querySelector(".saved");
      out.textContent = "give points to save the comment";
      out.className = "saved error";
      return;
    }
    save(card, false);
  });
  pts.addEventListener("change", function () { if (pts.value.trim() !== "") save(card, false); });
});
