"""RestMQ over XML-RPC, with nothing but Python's standard library.

    python examples/test_xmlrpc.py [URL [QUEUE]]

URL defaults to $RESTMQ_URL/xmlrpc, else http://127.0.0.1:8888/xmlrpc (/RPC2 works too).
When acl.conf asks for a password, put it in the URL: http://user:password@localhost:8888/xmlrpc
QUEUE defaults to a new queue name, so that earlier runs do not get in the way. The queue
is purged at the end (``DELETE /q/<queue>``: XML-RPC has no purge method). It stays listed,
empty, in ``/stats/`` and on the dashboard, because the protocol has no way to remove a
queue: the purge deletes its messages, not its name. So each run without QUEUE leaves one
such empty queue behind.
"""

from __future__ import annotations

import base64
import os
import sys
import time
import urllib.parse
import urllib.request
import xmlrpc.client


def show(call: str, result) -> None:
    print(f"{call:<40} -> {result!r}")


def purge(url: str, queue: str) -> None:
    """Empty the queue over REST, with the credentials of the XML-RPC URL if it has any."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]  # host and port, without user:password
    target = f"{parts.scheme}://{netloc}/q/{urllib.parse.quote(queue, safe='')}"
    headers = {}
    if parts.username is not None:
        pair = (
            f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        )
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    request = urllib.request.Request(target, method="DELETE", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        show(f"DELETE /q/{queue} (clean up)", response.read().decode().strip())


def main(url: str, queue: str) -> None:
    try:
        walk(url, queue)
    finally:
        purge(url, queue)


def walk(url: str, queue: str) -> None:
    server = xmlrpc.client.ServerProxy(url)

    # the original 2009 pair: set() adds, get() takes the oldest value
    key = server.set(queue, "tuna-boy")
    show(f"set({queue!r}, 'tuna-boy')", key)
    show(f"get({queue!r})", server.get(queue))

    # add() returns the key; a third argument is a ttl in seconds
    first = server.add(queue, "first")
    show(f"add({queue!r}, 'first')", first)
    second = server.add(queue, "second", 3600)
    show(f"add({queue!r}, 'second', 3600)", second)
    show(f"len({queue!r})", server.len(queue))
    # "del" is a Python keyword: reach the method with getattr
    show(f"del({queue!r}, {first!r})", getattr(server, "del")(queue, first))
    show(f"take({queue!r})", server.take(queue))

    # an empty queue is a fault with code 404
    try:
        server.take(queue)
    except xmlrpc.client.Fault as fault:
        show(f"take({queue!r})", f"Fault {fault.faultCode}: {fault.faultString}")

    # delivery to streaming consumers (/c/<queue>, /ws/<queue>)
    show(f"policy_set({queue!r}, 'roundrobin')", server.policy_set(queue, "roundrobin"))
    show(f"policy_get({queue!r})", server.policy_get(queue))
    show(f"stop({queue!r})", server.stop(queue))
    show(f"status({queue!r})", server.status(queue))
    show(f"start({queue!r})", server.start(queue))

    show("queues() has the queue", queue in server.queues())
    show(f"stats({queue!r})", server.stats(queue))
    show("stats()['count']", server.stats()["count"])

    # introspection, and several calls in one request
    show("system.listMethods()", server.system.listMethods())
    show("system.methodHelp('add')", server.system.methodHelp("add"))
    show("system.methodSignature('add')", server.system.methodSignature("add"))
    batch = xmlrpc.client.MultiCall(server)
    batch.add(queue, "in a batch")
    batch.len(queue)
    batch.take(queue)
    show("multicall(add, len, take)", list(batch()))

    # a bad argument is a fault with code 400
    try:
        server.policy_set(queue, "fifo")
    except xmlrpc.client.Fault as fault:
        show(f"policy_set({queue!r}, 'fifo')", f"Fault {fault.faultCode}: {fault.faultString}")


if __name__ == "__main__":
    main(
        sys.argv[1]
        if len(sys.argv) > 1
        else os.environ.get("RESTMQ_URL", "http://127.0.0.1:8888").rstrip("/") + "/xmlrpc",
        sys.argv[2] if len(sys.argv) > 2 else f"xmlrpc-example-{int(time.time() * 1000)}",
    )
