#!/usr/bin/env bash
# A walk through RestMQ's REST routes and its JSON protocol, with curl.
#
#   examples/test_rest.sh [BASE_URL]
#
# BASE_URL defaults to $RESTMQ_URL, then to http://127.0.0.1:8888. The walk uses the queue
# $RESTMQ_QUEUE (default "rest_walk") and empties it first and last. The queue stays listed,
# empty, in /stats/ and on the dashboard: the protocol has no way to remove a queue (DELETE
# /q/<queue> deletes its messages, not its name). Each call prints the command,
# the answer and its HTTP status; the script stops with a non-zero exit status as soon as a
# call fails or answers with a status other than the one expected.
set -euo pipefail

BASE="${1:-${RESTMQ_URL:-http://127.0.0.1:8888}}"
BASE="${BASE%/}"
Q="${RESTMQ_QUEUE:-rest_walk}"
JSON=(-H "Content-Type: application/json")

# call EXPECTED_STATUS TITLE CURL_ARGUMENTS...
call() {
  local expected=$1 title=$2
  shift 2
  printf '\n== %s\n$ curl %s\n' "$title" "$*"
  local out status
  out=$(curl --silent --show-error --max-time 10 --write-out '\n[HTTP %{http_code}]' "$@")
  status=${out##*\[HTTP }
  status=${status%\]}
  printf '%s\n' "$out" | tr -d '\r' | sed '/^$/d'
  if [[ "$status" != "$expected" ]]; then
    printf '!! %s: expected HTTP %s, got %s\n' "$title" "$expected" "$status" >&2
    exit 1
  fi
}

echo "RestMQ at $BASE, queue $Q"
call 200 "start from an empty queue" -X DELETE "$BASE/q/$Q"

# producing
call 200 "POST /q/<queue> with value=" -d value=hello "$BASE/q/$Q"
call 200 "POST /q/<queue> with msg=" -d msg=world "$BASE/q/$Q"
call 200 "POST / (the original's route)" -d queue="$Q" -d value=classic "$BASE/"
call 200 "POST with a ttl of 60 seconds" -d value=perishable -d ttl=60 "$BASE/q/$Q"
call 200 "POST a JSON body" "${JSON[@]}" -d '{"value": {"order": 42}}' "$BASE/q/$Q"
call 200 "POST a batch as one atomic add" "${JSON[@]}" -d '{"values": ["b1", "b2", "b3"]}' "$BASE/q/$Q"
call 200 "POST with JSONP" -d value=wrapped "$BASE/q/$Q?callback=onKey"

# consuming
call 200 "GET /q/<queue> pops the oldest message" "$BASE/q/$Q"
call 200 "GET /?queue= (the original's route)" "$BASE/?queue=$Q"
call 200 "GET /q/<queue>?n=3 pops a batch" "$BASE/q/$Q?n=3"
call 200 "GET with JSONP" "$BASE/q/$Q?callback=onMessage"

# the JSON protocol
call 302 "GET /queue leads to the help page" "$BASE/queue"
call 200 "JSON protocol: add" --data-urlencode "body={\"cmd\": \"add\", \"queue\": \"$Q\", \"value\": \"oi\"}" "$BASE/queue"
call 200 "JSON protocol: get (peek)" --data-urlencode "body={\"cmd\": \"get\", \"queue\": \"$Q\"}" "$BASE/queue"
call 200 "JSON protocol: take" "${JSON[@]}" -d "{\"cmd\": \"take\", \"queue\": \"$Q\"}" "$BASE/queue"
call 200 "JSON protocol: del" "${JSON[@]}" -d "{\"cmd\": \"del\", \"key\": \"$Q:9\"}" "$BASE/queue/$Q"

# policy, start/stop, figures
call 200 "GET /p/<queue>" "$BASE/p/$Q"
call 200 "POST /p/<queue> policy=roundrobin" -d policy=roundrobin "$BASE/p/$Q"
call 200 "GET /p/<queue> again" "$BASE/p/$Q?callback=onPolicy"
call 200 "POST /p/<queue> policy=broadcast" -d policy=broadcast "$BASE/p/$Q"
call 200 "POST /control/<queue> status=stop" -d status=stop "$BASE/control/$Q"
call 200 "GET /control/<queue>" "$BASE/control/$Q"
call 200 "POST /control/<queue> status=start" -d status=start "$BASE/control/$Q"
call 200 "GET /control/ (every queue)" "$BASE/control/"
call 200 "GET /stats/<queue>" "$BASE/stats/$Q"
call 200 "GET /stats/ (every queue)" "$BASE/stats/"

# pages
call 200 "GET /q/ lists the queues" "$BASE/q/"
call 200 "GET /j/<queue> shows one queue" "$BASE/j/$Q"
call 302 "GET / leads to the dashboard" "$BASE/"
call 200 "GET /static/index.html" --output /dev/null "$BASE/static/index.html"
call 200 "GET /static/help.html" --output /dev/null "$BASE/static/help.html"

# purging, and what bad requests get
call 200 "DELETE /q/<queue> purges it" -X DELETE "$BASE/q/$Q"
call 204 "GET on an empty queue" "$BASE/q/$Q"
call 404 "GET / on an empty queue" "$BASE/?queue=$Q"
call 400 "a bad queue name" -d value=x "$BASE/q/no+plus"
call 400 "a bad batch size" "$BASE/q/$Q?n=0"
call 400 "a bad policy" -d policy=random "$BASE/p/$Q"
call 404 "an unknown route" "$BASE/nowhere"

printf '\nall calls answered as expected\n'
