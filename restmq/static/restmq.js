// RestMQ pages: the queue dashboard (index.html) and the JSON protocol form (help.html).
// Plain browser JavaScript, no dependencies.
"use strict";

(function () {
  const POLICY_NAMES = { 1: "broadcast", 2: "roundrobin" };
  const ROUTES = [
    ["q", "/q/", "pop a message"],
    ["c", "/c/", "stream (COMET)"],
    ["p", "/p/", "policy"],
    ["control", "/control/", "start / stop"],
    ["stats", "/stats/", "length"],
    ["j", "/j/", "queue page"],
  ];

  function byId(id) {
    return document.getElementById(id);
  }

  function cell(className, text) {
    const td = document.createElement("td");
    td.className = className;
    td.textContent = text;
    return td;
  }

  function routeLinks(name) {
    const td = document.createElement("td");
    td.className = "routes";
    for (const [id, prefix, title] of ROUTES) {
      const a = document.createElement("a");
      a.className = "route-" + id;
      a.href = prefix + encodeURIComponent(name);
      a.title = title;
      a.textContent = prefix.slice(0, -1);
      td.appendChild(a);
    }
    const watch = document.createElement("a");
    watch.className = "route-watch";
    watch.href = "/static/watch.html?queue=" + encodeURIComponent(name);
    watch.title = "consume live in this browser";
    watch.textContent = "watch";
    td.appendChild(watch);
    return td;
  }

  function queueRow(name, info) {
    const tr = document.createElement("tr");
    tr.dataset.queue = name;
    const nameCell = document.createElement("td");
    nameCell.className = "name";
    const link = document.createElement("a");
    link.href = "/j/" + encodeURIComponent(name);
    link.textContent = name;
    nameCell.appendChild(link);
    tr.appendChild(nameCell);
    tr.appendChild(cell("len num", String(info.len)));
    const status = cell("status", "");
    const badge = document.createElement("span");
    const started = Number(info.status) === 1;
    badge.className = "badge " + (started ? "started" : "stopped");
    badge.textContent = started ? "started" : "stopped";
    status.appendChild(badge);
    tr.appendChild(status);
    tr.appendChild(cell("policy", POLICY_NAMES[info.policy] || String(info.policy)));
    tr.appendChild(cell("consumers num", String(info.consumers ?? 0)));
    tr.appendChild(routeLinks(name));
    return tr;
  }

  function showStats(stats) {
    const names = Object.keys(stats.queues).sort();
    const rows = names.map((name) => queueRow(name, stats.queues[name]));
    byId("queue-rows").replaceChildren(...rows);
    byId("empty").hidden = names.length > 0;
    byId("queue-count").textContent = String(stats.count);
    byId("redis").textContent = stats.redis;
    byId("updated").textContent = new Date().toLocaleTimeString();
    byId("error").hidden = true;
  }

  async function refreshDashboard() {
    try {
      const response = await fetch("/stats/", { cache: "no-store" });
      const body = await response.json();
      if (!response.ok) {
        throw new Error(body.error || "HTTP " + response.status);
      }
      showStats(body);
    } catch (err) {
      const error = byId("error");
      error.textContent = "cannot read /stats/: " + err.message;
      error.hidden = false;
    }
  }

  async function postMessage(event) {
    event.preventDefault();
    const queue = byId("post-queue").value;
    const result = byId("post-result");
    try {
      const response = await fetch("/q/" + encodeURIComponent(queue), {
        method: "POST",
        body: new URLSearchParams({ value: byId("post-value").value }),
      });
      const text = (await response.text()).trim();
      result.className = response.ok ? "" : "error";
      result.textContent = response.ok ? "stored as " + text : "HTTP " + response.status + ": " + text;
    } catch (err) {
      result.className = "error";
      result.textContent = err.message;
    }
    refreshDashboard();
  }

  function startDashboard() {
    const every = Number(byId("queues").dataset.refreshMs) || 3000;
    byId("post-form").addEventListener("submit", postMessage);
    refreshDashboard();
    setInterval(refreshDashboard, every);
  }

  async function sendCommand(event) {
    event.preventDefault();
    const status = byId("json-status");
    const answer = byId("json-answer");
    status.textContent = "sending…";
    try {
      const response = await fetch("/queue", {
        method: "POST",
        body: new URLSearchParams({ body: byId("json-command").value }),
      });
      const text = await response.text();
      status.textContent = "HTTP " + response.status;
      status.className = response.ok ? "" : "error";
      try {
        answer.textContent = JSON.stringify(JSON.parse(text), null, 2);
      } catch (_) {
        answer.textContent = text;
      }
    } catch (err) {
      status.textContent = "failed";
      status.className = "error";
      answer.textContent = err.message;
    }
  }

  function startJsonForm() {
    byId("json-form").addEventListener("submit", sendCommand);
    for (const button of document.querySelectorAll("button.example")) {
      button.addEventListener("click", () => {
        byId("json-command").value = button.dataset.command;
      });
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (byId("queues")) startDashboard();
    if (byId("json-form")) startJsonForm();
  });
})();
