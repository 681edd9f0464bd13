// A live consumer in the browser: EventSource on /c/<queue> or a WebSocket on /ws/<queue>.
(function () {
  "use strict";
  const params = new URLSearchParams(location.search);
  const form = document.getElementById("watch-form");
  const list = document.getElementById("messages");
  const state = document.getElementById("state");
  const count = document.getElementById("count");
  let source = null;

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

  function watch(queue, transport) {
    stop();
    document.getElementById("queue-name").textContent = queue;
    const path = encodeURIComponent(queue);
    state.textContent = "connecting";
    if (transport === "ws") {
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      const socket = new WebSocket(`${scheme}//${location.host}/ws/${path}`);
      socket.onopen = () => { state.textContent = "open"; };
      socket.onmessage = (event) => show(JSON.parse(event.data));
      socket.onclose = () => { if (source === socket) state.textContent = "closed"; };
      source = socket;
    } else {
      const events = new EventSource(`/c/${path}`);
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
    history.replaceState(null, "", `?queue=${encodeURIComponent(queue)}&transport=${transport}`);
    watch(queue, transport);
  });

  if (params.get("queue")) {
    document.getElementById("queue").value = params.get("queue");
    document.getElementById("transport").value = params.get("transport") === "ws" ? "ws" : "sse";
    watch(params.get("queue"), document.getElementById("transport").value);
  }
})();
