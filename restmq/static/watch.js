// A live consumer in the browser: EventSource on /c/<queue> or a WebSocket on /ws/<queue>,
// leased (?lease=S&prefetch=P) when a lease is given: each message is then acked, with
// DELETE /q/<queue>?receipt=R for Server-Sent Events or an {"ack": R} frame on a WebSocket.
(function () {
  "use strict";
  const params = new URLSearchParams(location.search);
  const form = document.getElementById("watch-form");
  const list = document.getElementById("messages");
  const state = document.getElementById("state");
  const count = document.getElementById("count");
  const figures = document.getElementById("lease-figures");
  const ackedText = document.getElementById("acked");
  const unackedText = document.getElementById("unacked");
  const ackError = document.getElementById("ack-error");
  let source = null;
  let queuePath = "";
  let acked = 0;
  const unacked = new Set();

  function leaseFigures() {
    ackedText.textContent = String(acked);
    unackedText.textContent = String(unacked.size);
  }

  function settled(item, receipt) {
    unacked.delete(receipt);
    acked += 1;
    item.classList.add("acked");
    item.querySelector("button.ack")?.remove();
    leaseFigures();
  }

  function ack(item, receipt) {
    if (source instanceof WebSocket) {
      if (source.readyState !== WebSocket.OPEN) return;
      // The broker answers only a refused ack (an "error" frame, see onFrame).
      source.send(JSON.stringify({ ack: receipt }));
      settled(item, receipt);
      return;
    }
    fetch(`/q/${queuePath}?receipt=${encodeURIComponent(receipt)}`, { method: "DELETE" })
      .then((answer) => answer.json().then((body) => {
        if (answer.ok) settled(item, receipt);
        else ackError.textContent = `${receipt}: ${body.error}`;
      }))
      .catch((error) => { ackError.textContent = `${receipt}: ${error}`; });
  }

  function show(message) {
    const item = document.createElement("li");
    item.dataset.key = message.key;
    const key = document.createElement("code");
    key.textContent = message.key;
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = message.value;
    item.append(key, " ", value);
    list.append(item);
    count.textContent = String(list.children.length);
    if (message.receipt === undefined) return;
    item.dataset.receipt = message.receipt;
    unacked.add(message.receipt);
    leaseFigures();
    if (document.getElementById("auto-ack").checked) {
      ack(item, message.receipt);
    } else {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "ack";
      button.textContent = "ack";
      button.addEventListener("click", () => ack(item, message.receipt));
      item.append(" ", button);
    }
  }

  function onFrame(data) {
    const frame = JSON.parse(data);
    if (frame.error !== undefined) {
      ackError.textContent = frame.receipt ? `${frame.receipt}: ${frame.error}` : frame.error;
      return;
    }
    show(frame);
  }

  function stop() {
    if (source) {
      source.close();
      state.textContent = "stopped";
    }
    source = null;
  }

  document.getElementById("stop").addEventListener("click", stop);
  // Leaving the page ends the stream, also when the browser keeps the page in its cache.
  window.addEventListener("pagehide", stop);

  function leaseQuery(lease, prefetch) {
    if (!lease) return "";
    return `?lease=${encodeURIComponent(lease)}` + (prefetch ? `&prefetch=${encodeURIComponent(prefetch)}` : "");
  }

  function watch(queue, transport, lease, prefetch) {
    stop();
    document.getElementById("queue-name").textContent = queue;
    const path = encodeURIComponent(queue);
    const query = leaseQuery(lease, prefetch);
    queuePath = path;
    acked = 0;
    unacked.clear();
    ackError.textContent = "";
    figures.hidden = !lease;
    leaseFigures();
    state.textContent = "connecting";
    if (transport === "ws") {
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      const socket = new WebSocket(`${scheme}//${location.host}/ws/${path}${query}`);
      socket.onopen = () => { state.textContent = "open"; };
      socket.onmessage = (event) => onFrame(event.data);
      socket.onclose = () => { if (source === socket) state.textContent = "closed"; };
      source = socket;
    } else {
      const events = new EventSource(`/c/${path}${query}`);
      events.onopen = () => { state.textContent = "open"; };
      events.onmessage = (event) => show(JSON.parse(event.data));
      events.addEventListener("end", () => { state.textContent = "ended (queue purged)"; });
      events.onerror = () => { if (state.textContent !== "ended (queue purged)") state.textContent = "reconnecting"; };
      source = events;
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const queue = document.getElementById("queue").value;
    const transport = document.getElementById("transport").value;
    const lease = document.getElementById("lease").value;
    const prefetch = document.getElementById("prefetch").value;
    const autoAck = document.getElementById("auto-ack").checked;
    const leased = lease ? `&lease=${lease}` + (prefetch ? `&prefetch=${prefetch}` : "") + (autoAck ? "" : "&ack=0") : "";
    history.replaceState(null, "", `?queue=${encodeURIComponent(queue)}&transport=${transport}${leased}`);
    watch(queue, transport, lease, prefetch);
  });

  if (params.get("queue")) {
    document.getElementById("queue").value = params.get("queue");
    document.getElementById("transport").value = params.get("transport") === "ws" ? "ws" : "sse";
    document.getElementById("lease").value = params.get("lease") || "";
    document.getElementById("prefetch").value = params.get("prefetch") || "";
    document.getElementById("auto-ack").checked = params.get("ack") !== "0";
    watch(params.get("queue"), document.getElementById("transport").value,
          params.get("lease"), params.get("prefetch"));
  }
})();
