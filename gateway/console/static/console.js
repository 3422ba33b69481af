// container-triggers console: the live stream, pausing, copy buttons. The pages work
// without it; this only adds what HTML cannot do by itself.
"use strict";

function liveView(table) {
  const body = table.tBodies[0];
  const pause = document.getElementById("pause");
  const held = document.getElementById("held");
  const status = document.getElementById("live-status");
  const empty = document.getElementById("empty");
  const maxRows = Number(table.dataset.maxRows || 500);
  const waiting = []; // rows that came while paused, oldest first
  let paused = false;

  function say(text) { if (status.textContent !== text) status.textContent = text; }

  function show(data) {
    const old = body.querySelector(`tr[data-job="${CSS.escape(data.job)}"]`);
    const holder = document.createElement("tbody");
    holder.innerHTML = data.row; // rendered (and escaped) by the server
    const row = holder.firstElementChild;
    if (!row) return;
    row.classList.add("fresh");
    if (old) { old.replaceWith(row); } else { body.insertBefore(row, body.firstChild); }
    while (body.rows.length > maxRows) body.deleteRow(body.rows.length - 1);
    if (empty) empty.hidden = true;
  }

  function flush() {
    while (waiting.length) show(waiting.shift());
    held.hidden = true;
  }

  pause.addEventListener("click", () => {
    paused = !paused;
    pause.setAttribute("aria-pressed", String(paused));
    pause.textContent = paused ? "Resume" : "Pause";
    if (!paused) flush();
  });

  const source = new EventSource(table.dataset.stream);
  source.addEventListener("ready", () => say("Live: new results appear at the top."));
  source.addEventListener("unavailable", () => say("Live results unavailable: the broker cannot be reached (retrying)."));
  source.addEventListener("result", (message) => {
    const data = JSON.parse(message.data);
    if (!data.row) return;
    if (paused) {
      waiting.push(data);
      held.hidden = false;
      held.textContent = `${waiting.length} new while paused`;
    } else {
      show(data);
    }
  });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      say("Disconnected. Reload the page to sign in again.");
    } else {
      say("Reconnecting…");
    }
  });
}

function copyButtons() {
  const note = document.querySelector(".copied");
  for (const button of document.querySelectorAll("button.copy")) {
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.dataset.copy);
      const text = source.textContent;
      try {
        await navigator.clipboard.writeText(text);
      } catch {
        // Outside a secure context (plain HTTP to a remote host) there is no clipboard
        // API: select the text so that Ctrl-C copies it.
        const range = document.createRange();
        range.selectNodeContents(source);
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        if (note) note.textContent = "Selected: press Ctrl-C (⌘-C) to copy.";
        return;
      }
      if (note) note.textContent = "Copied.";
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const table = document.getElementById("live");
  if (table) liveView(table);
  copyButtons();
});
