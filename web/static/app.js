// cxr-triage: the worklist refreshes itself; the heatmap overlay toggles. No build step.
"use strict";

function refreshWorklist(table) {
  const body = document.getElementById("worklist-rows");
  const url = table.dataset.rowsUrl + window.location.search;
  fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
    .then((response) => {
      if (response.redirected || !response.ok) { throw new Error(String(response.status)); }
      return response.text();
    })
    .then((html) => {
      body.innerHTML = html;
      document.getElementById("updated").textContent = new Date().toLocaleTimeString();
    })
    .catch(() => { document.getElementById("updated").textContent = "failed; retrying"; });
}

document.addEventListener("DOMContentLoaded", () => {
  const table = document.getElementById("worklist");
  if (table) {
    const seconds = Math.max(1, parseFloat(table.dataset.refreshS || "10"));
    window.setInterval(() => refreshWorklist(table), seconds * 1000);
  }
  document.querySelectorAll(".overlay-toggle").forEach((toggle) => {
    toggle.addEventListener("change", () => {
      const heatmap = toggle.closest("figure").querySelector(".heatmap");
      if (heatmap) { heatmap.hidden = !toggle.checked; }
    });
  });
});
