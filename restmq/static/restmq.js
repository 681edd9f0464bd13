// RestMQ pages: the live queue dashboard (index.html) and the JSON protocol form (help.html).
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
  // The figures the broker pushed last, by queue name.
  let figures = {};

  function byId(id) {
    return document.getElementById(id);
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function routeLinks(name) {
    const td = element("td", "routes");
    for (const [id, prefix, title] of ROUTES) {
      const a = element("a", "route-" + id, prefix.slice(0, -1));
      a.href = prefix + encodeURIComponent(name);
      a.title = title;
      td.appendChild(a);
    }
    const watch = element("a", "route-watch", "watch");
    watch.href = "/static/watch.html?queue=" + encodeURIComponent(name);
    watch.title = "consume live in this browser (takes the messages)";
    td.appendChild(watch);
    return td;
  }

  function actionButton(action, text, title) {
    const button = element("button", "small " + (action === "purge" ? "danger" : "secondary"), text);
    button.type = "button";
    button.dataset.action = action;
    button.title = title;
    return button;
  }

  // The column titles, shown in each cell when a narrow page lays the queues out as cards.
  let columnTitles = null;

  function labelCells(tr) {
    columnTitles ??= [...document.querySelectorAll("#queues thead th")].map((th) => th.textContent);
    [...tr.children].forEach((td, i) => {
      td.dataset.label = columnTitles[i];
    });
  }

  // A row is built once per queue; later figures only change its texts, so that a
  // button being clicked is never replaced under the pointer.
  function newRow(name) {
    const tr = document.createElement("tr");
    tr.dataset.queue = name;
    const nameCell = element("td", "name");
    const link = element("a", "");
    // a long name may break after its separators (as in "orders.eu:dead") first
    for (const part of name.split(/(?<=[._:@-])/)) {
      if (link.firstChild) link.appendChild(document.createElement("wbr"));
      link.appendChild(document.createTextNode(part));
    }
    link.href = "/j/" + encodeURIComponent(name);
    nameCell.appendChild(link);
    tr.appendChild(nameCell);
    for (const column of ["len", "leased", "dead", "consumers"]) {
      tr.appendChild(element("td", column + " num"));
    }
    const status = element("td", "status");
    status.appendChild(element("span", "badge"));
    tr.appendChild(status);
    tr.appendChild(element("td", "policy"));
    const actions = element("td", "actions");
    actions.append(
      actionButton("pop", "pop", "take the oldest message (GET /q/<queue>)"),
      actionButton("status", "", ""),
      actionButton("policy", "", ""),
      actionButton("purge", "purge…", "delete every pending message (asks first)"),
    );
    tr.appendChild(actions);
    tr.appendChild(routeLinks(name));
    labelCells(tr);
    return tr;
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function fillRow(tr, info) {
    const cell = (name) => tr.querySelector("td." + name);
    setText(cell("len"), String(info.len));
    setText(cell("leased"), info.leased === undefined ? "–" : String(info.leased));
    setText(cell("dead"), info.dead === undefined ? "–" : String(info.dead));
    setText(cell("consumers"), String(info.consumers ?? 0));
    const started = Number(info.status) === 1;
    const badge = cell("status").firstChild;
    badge.className = "badge " + (started ? "started" : "stopped");
    setText(badge, started ? "started" : "stopped");
    const policy = POLICY_NAMES[info.policy] || String(info.policy);
    setText(cell("policy"), policy);
    const toggle = tr.querySelector('button[data-action="status"]');
    toggle.dataset.word = started ? "stop" : "start";
    setText(toggle, toggle.dataset.word);
    toggle.title = started ? "stop delivery to streaming consumers" : "start delivery again";
    const other = policy === "broadcast" ? "roundrobin" : "broadcast";
    const switcher = tr.querySelector('button[data-action="policy"]');
    switcher.dataset.policy = other;
    setText(switcher, "→ " + other);
    switcher.title = "switch the delivery policy to " + other;
  }

  function showStats(stats) {
    figures = stats.queues;
    const body = byId("queue-rows");
    const rows = new Map([...body.children].map((tr) => [tr.dataset.queue, tr]));
    const names = Object.keys(stats.queues).sort();
    const ordered = names.map((name) => rows.get(name) || newRow(name));
    names.forEach((name, i) => fillRow(ordered[i], stats.queues[name]));
    const same = ordered.length === body.children.length && ordered.every((tr, i) => body.children[i] === tr);
    if (!same) body.replaceChildren(...ordered);
    byId("empty").hidden = names.length > 0;
    setText(byId("queue-count"), String(stats.count));
    showStorage(stats);
    byId("updated").textContent = new Date().toLocaleTimeString();
    byId("error").hidden = true;
  }

  // The kind of storage, its address, the pool's connections and up or down; a broker
  // whose figures lack "storage" has only the original's text ("redis") to show.
  function showStorage(stats) {
    const storage = stats.storage;
    if (!storage) {
      setText(byId("storage-kind"), stats.redis);
      return;
    }
    setText(byId("storage-kind"), storage.kind);
    setText(byId("storage-address"), storage.address);
    const connections = storage.connections === 1 ? "1 connection" : storage.connections + " connections";
    setText(byId("storage-connections"), connections);
    byId("storage-where").hidden = false;
    showStorageUp(storage.up);
  }

  function showStorageUp(up) {
    const badge = byId("storage-state");
    badge.className = "badge " + (up ? "up" : "down");
    setText(badge, up ? "up" : "down");
    badge.hidden = false;
  }

  function setLive(state, text) {
    const live = byId("live");
    live.className = "live " + state;
    live.textContent = text;
  }

  function showError(text) {
    const error = byId("error");
    error.textContent = text;
    error.hidden = false;
  }

  // Server-Sent Events: the broker pushes the figures when they change; the browser
  // reconnects by itself (and sends the page's credentials, same origin).
  function followStats() {
    const events = new EventSource(brokerUrl("/stats/"));
    events.onopen = () => setLive("open", "live");
    events.addEventListener("stats", (event) => {
      setLive("open", "live");
      showStats(JSON.parse(event.data));
    });
    events.addEventListener("unavailable", (event) => {
      setLive("trouble", "storage unavailable");
      showStorageUp(false);
      showError(JSON.parse(event.data).error);
    });
    events.addEventListener("end", () => setLive("trouble", "broker stopping"));
    events.onerror = () => {
      if (events.readyState === EventSource.CLOSED) {
        setLive("trouble", "disconnected");
        showError("the broker refused the stats stream; reload the page to try again");
      } else {
        setLive("connecting", "reconnecting…");
      }
    };
    window.addEventListener("pagehide", () => events.close());
  }

  function report(text, ok) {
    const result = byId("action-result");
    result.className = ok ? "" : "error";
    result.textContent = text;
  }

  // A URL of this broker without the page's user:password@ (opened that way, a page
  // cannot fetch relative URLs; the browser still sends the credentials it has cached).
  function brokerUrl(path) {
    return new URL(path, location.origin).href;
  }

  // One request to the broker; the answer's text, or an Error saying what went wrong.
  async function call(method, path, form) {
    const options = { method, cache: "no-store" };
    if (form) options.body = new URLSearchParams(form);
    const response = await fetch(brokerUrl(path), options);
    const text = (await response.text()).trim();
    if (!response.ok) {
      let message = text;
      try {
        message = JSON.parse(text).error || text;
      } catch (_) {
        // not JSON: show the text as it came
      }
      throw new Error("HTTP " + response.status + ": " + message);
    }
    return { status: response.status, text };
  }

  const ACTIONS = {
    async pop(queue) {
      const answer = await call("GET", "/q/" + encodeURIComponent(queue));
      if (answer.status === 204) return "queue " + queue + " is empty";
      const message = JSON.parse(answer.text);
      return "popped " + message.key + ": " + message.value;
    },
    async status(queue, button) {
      const word = button.dataset.word;
      await call("POST", "/control/" + encodeURIComponent(queue), { status: word });
      return (word === "stop" ? "stopped " : "started ") + queue;
    },
    async policy(queue, button) {
      const policy = button.dataset.policy;
      await call("POST", "/p/" + encodeURIComponent(queue), { policy });
      return queue + " is now " + policy;
    },
    purge(queue) {
      const dialog = byId("purge-dialog");
      byId("purge-queue").textContent = queue;
      byId("purge-count").textContent = String(figures[queue] ? figures[queue].len : 0);
      dialog.returnValue = "";
      dialog.dataset.queue = queue;
      dialog.showModal();
      return null; // the dialog's answer decides (purgeConfirmed)
    },
  };

  async function act(event) {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const queue = button.closest("tr").dataset.queue;
    try {
      const done = await ACTIONS[button.dataset.action](queue, button);
      if (done !== null) report(done, true);
    } catch (err) {
      report(button.dataset.action + " " + queue + ": " + err.message, false);
    }
  }

  async function purgeConfirmed() {
    const dialog = byId("purge-dialog");
    const queue = dialog.dataset.queue;
    if (dialog.returnValue !== "purge") {
      report("purge of " + queue + " cancelled", true);
      return;
    }
    try {
      await call("DELETE", "/q/" + encodeURIComponent(queue));
      report("purged " + queue, true);
    } catch (err) {
      report("purge " + queue + ": " + err.message, false);
    }
  }

  async function postMessage(event) {
    event.preventDefault();
    const queue = byId("post-queue").value;
    const result = byId("post-result");
    try {
      const answer = await call("POST", "/q/" + encodeURIComponent(queue), {
        value: byId("post-value").value,
      });
      result.className = "";
      result.textContent = "stored as " + answer.text;
    } catch (err) {
      result.className = "error";
      result.textContent = err.message;
    }
  }

  function startDashboard() {
    byId("post-form").addEventListener("submit", postMessage);
    byId("queue-rows").addEventListener("click", act);
    byId("purge-dialog").addEventListener("close", purgeConfirmed);
    followStats();
    // followStats closes its stream when the page is hidden; a page the browser
    // brings back from its cache follows the figures again.
    window.addEventListener("pageshow", (event) => {
      if (event.persisted) followStats();
    });
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
