"""The ``restmq`` command: push, pop, ack, tail, stats, purge, policy, start and stop a queue;
copy queues to another broker.

Built on click (options, environment variables, help, progress bar) and the Python client
(restmq.client: its timeouts, retries and Idempotency-Keys); what the client does not
express (acks of several receipts at once, the copy's lease calls) goes over httpx. It
talks to a broker over HTTP only.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass

import click

from restmq import __version__
from restmq.cli import output
from restmq.cli.connection import BrokerConnection, json_of
from restmq.cli.copy import run_copy
from restmq.cli.failures import Exit, Failure, failure_from
from restmq.cli.limits import MAX_BATCH, MAX_DELAY, MAX_LEASE, MAX_TTL, MAX_WAIT
from restmq.cli.push import push, stdin_lines
from restmq.cli.tail import tail
from restmq.client import DEFAULT_URL, Client, Message, RestMQError
from restmq.client.errors import error_text
from restmq.client.transport import check_url

EPILOG = """\b
Exit status:
  0  done
  1  nothing to take: the queue was empty, no message arrived, a lease was gone
  2  usage error, or the broker refused the request as invalid (4xx)
  3  broker unreachable, timed out, or it answered 5xx
  4  refused by the broker's acl.conf (401, 403)
"""


@dataclass
class Settings:
    """The global options; a connection is made when a command first needs it."""

    url: str
    user: str | None
    password: str | None
    timeout: float
    retries: int
    _connection: BrokerConnection | None = None
    _client: Client | None = None

    def client(self) -> Client:
        """The Python client, for every call it expresses."""
        if self._client is None:
            self._client = Client(
                self.url,
                user=self.user,
                password=self.password,
                timeout=self.timeout,
                retries=self.retries,
            )
        return self._client

    def connect(self) -> BrokerConnection:
        """Plain HTTP, for the calls the client does not express."""
        if self._connection is None:
            self._connection = BrokerConnection(
                self.url, user=self.user, password=self.password, timeout=self.timeout
            )
        return self._connection

    def close(self) -> None:
        for connection in (self._connection, self._client):
            if connection is not None:
                connection.close()


def _url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return check_url(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


class RestMQGroup(click.Group):
    """The command group: a client error ends a command with its exit status; a closed
    stdout ends it quietly."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RestMQError as error:
            raise failure_from(error, ctx.obj.url) from None
        except BrokenPipeError:
            # The reader went away (``restmq tail q | head -1``): it has what it wanted.
            # Point stdout at /dev/null so that the final flush does not complain.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return None


queue_argument = click.argument("queue")


@click.group(
    cls=RestMQGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.option(
    "--url",
    envvar="RESTMQ_URL",
    default=DEFAULT_URL,
    show_default=True,
    callback=_url,
    help="The broker's base URL (env RESTMQ_URL).",
)
@click.option("--user", envvar="RESTMQ_USER", help="Username for acl.conf (env RESTMQ_USER).")
@click.option(
    "--password",
    envvar="RESTMQ_PASSWORD",
    help="Password for acl.conf (env RESTMQ_PASSWORD; the environment keeps it out of ps).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the broker's answer.",
)
@click.option(
    "--retries",
    envvar="RESTMQ_RETRIES",
    type=click.IntRange(0, 100),
    default=3,
    show_default=True,
    help="How often a request is tried again while the broker is unavailable (503, no "
    "connection); pushes and other requests safe to repeat also after a 504 or a lost "
    "answer (env RESTMQ_RETRIES).",
)
@click.version_option(__version__, prog_name="restmq")
@click.pass_context
def cli(
    ctx: click.Context,
    url: str,
    user: str | None,
    password: str | None,
    timeout: float,
    retries: int,
):
    """Talk to a RestMQ broker: produce, consume and manage its queues over HTTP."""
    if (user is None) != (password is None):
        raise click.UsageError(
            "--user and --password go together (or RESTMQ_USER and RESTMQ_PASSWORD)"
        )
    ctx.obj = Settings(url, user, password, timeout, retries)
    ctx.call_on_close(ctx.obj.close)


@cli.command("push", epilog=EPILOG, short_help="Add messages to a queue.")
@queue_argument
@click.argument("messages", nargs=-1)
@click.option(
    "--ttl",
    type=click.IntRange(1, MAX_TTL),
    metavar="S",
    help="Drop the messages if not taken within S seconds.",
)
@click.option(
    "--delay",
    type=click.IntRange(1, MAX_DELAY),
    metavar="S",
    help="Hold the messages back for S seconds: no take sees them before then.",
)
@click.option(
    "--batch",
    "batch_size",
    type=click.IntRange(1, MAX_BATCH),
    default=500,
    show_default=True,
    help="Messages per request (each request is one atomic add).",
)
@click.option("-q", "--quiet", is_flag=True, help="Do not print the keys of the stored messages.")
@click.pass_obj
def push_command(
    settings: Settings,
    queue: str,
    messages: tuple[str, ...],
    ttl: int | None,
    delay: int | None,
    batch_size: int,
    quiet: bool,
) -> None:
    """Add MESSAGES to QUEUE, or one message per line of standard input.

    Prints the key of each stored message (QUEUE:N), one per line. Messages go in
    batches: each batch is stored atomically and in order, and carries an
    Idempotency-Key, so a batch tried again (--retries) is stored once. Reading
    standard input with a terminal on stderr shows a progress bar; empty lines are
    skipped.

    \b
      restmq push jobs "resize 1.png" "resize 2.png"
      restmq push --delay 60 reminders "call back"
      seq 100000 | restmq push -q numbers
    """
    if messages:
        values, progress = list(messages), False
    else:
        if sys.stdin.isatty():
            click.echo("reading messages from standard input, one per line (Ctrl-D ends)", err=True)
        values, progress = stdin_lines(click.get_text_stream("stdin")), sys.stderr.isatty()
    # a progress bar and keys on the same terminal would garble each other
    print_keys = not quiet and not (progress and sys.stdout.isatty())
    sent = push(
        settings.client(),
        queue,
        values,
        batch_size=batch_size,
        ttl=ttl,
        delay=delay,
        print_keys=print_keys,
        progress=progress,
    )
    if progress:
        click.echo(f"{sent} messages stored in {queue}", err=True)
    if not sent:
        raise Failure("no message to push: give them as arguments or on standard input", Exit.USAGE)


@cli.command(epilog=EPILOG, short_help="Take messages from a queue.")
@queue_argument
@click.option("-n", "count", type=click.IntRange(1, MAX_BATCH), help="Take up to N messages.")
@click.option(
    "--lease",
    type=click.IntRange(1, MAX_LEASE),
    metavar="S",
    help="Lease the messages for S seconds instead of removing them: each line starts "
    "with its receipt; ack it with 'restmq ack' or it goes back to the queue.",
)
@click.option(
    "--wait",
    type=click.IntRange(0, MAX_WAIT),
    metavar="S",
    help="When the queue is empty, wait up to S seconds for a message.",
)
@click.option("--json", "as_json", is_flag=True, help="Print each message as its JSON object.")
@click.pass_obj
def pop(
    settings: Settings,
    queue: str,
    count: int | None,
    lease: int | None,
    wait: int | None,
    as_json: bool,
) -> None:
    """Take the oldest message (or up to N) from QUEUE and print its value.

    Exits with 1 when the queue is empty. Under --lease each line is
    RECEIPT<TAB>VALUE; --json prints {"key", "value", "count", ...} per line.
    """
    messages = _take(settings.client(), queue, count, lease, wait)
    if not messages:
        raise Failure(f"queue {queue} is empty", Exit.NOTHING)
    if lease is not None and not all(message.leased for message in messages):
        click.echo(
            "Warning: the broker does not support leases: the messages were taken for good",
            err=True,
        )
    for message in messages:
        line = output.message_line(message.answer, as_json=as_json, with_receipt=lease is not None)
        click.echo(line)


def _take(
    client: Client, queue: str, count: int | None, lease: int | None, wait: int | None
) -> list[Message]:
    """The messages one take gave: one message without ``count``, else up to ``count``."""
    if lease is None:
        if count is not None:
            return client.pop_many(queue, count, wait=wait)
        taken = client.pop(queue, wait=wait)
    else:
        if count is not None:
            return client.lease_many(queue, lease, count, wait=wait)
        taken = client.lease(queue, lease, wait=wait).message
    return [] if taken is None else [taken]


@cli.command(epilog=EPILOG, short_help="Acknowledge leased messages.")
@queue_argument
@click.argument("receipts", nargs=-1, required=True)
@click.pass_obj
def ack(settings: Settings, queue: str, receipts: tuple[str, ...]) -> None:
    """Acknowledge leased messages of QUEUE by their RECEIPTS: they are deleted for good.

    Prints the key of each acknowledged message. A receipt whose lease already
    ran out (its message went back to the queue) is reported, and the exit
    status is then 1.
    """
    connection = settings.connect()
    response = connection.call(
        "DELETE",
        connection.path("q", queue),
        params=[("receipt", receipt) for receipt in receipts],
        expect=(200, 409),
    )
    if response.status_code == 409:
        raise Failure(f"{receipts[0]}: {error_text(response)}", Exit.NOTHING)
    answer = json_of(response)
    results = answer if isinstance(answer, list) else [answer]
    if any("acked" not in result for result in results):
        raise Failure("this broker does not support acks (it answered as to a purge)", Exit.USAGE)
    gone = 0
    for receipt, result in zip(receipts, results, strict=False):
        if result["acked"]:
            click.echo(result["key"])
        else:
            gone += 1
            click.echo(f"Error: {receipt}: the lease ran out; the message went back", err=True)
    if gone:
        sys.exit(Exit.NOTHING)


@cli.command("tail", epilog=EPILOG, short_help="Print a queue's messages as they arrive.")
@queue_argument
@click.option("--count", type=click.IntRange(min=1), metavar="N", help="Exit after N messages.")
@click.option("--json", "as_json", is_flag=True, help="Print each message as its JSON object.")
@click.option(
    "--timeout",
    "duration",
    type=click.FloatRange(min=0.1),
    metavar="S",
    help="Stop after S seconds.",
)
@click.pass_obj
def tail_command(
    settings: Settings, queue: str, count: int | None, as_json: bool, duration: float | None
) -> None:
    """Stream QUEUE's messages as they arrive (Server-Sent Events) and print their values.

    Like any streaming consumer this takes the messages off the queue: first its
    backlog, then each new one (under the roundrobin policy, its share). Runs
    until --count messages arrived, --timeout passed, the queue is purged, or
    Ctrl-C; exits with 1 when that came before any message (or before N).

    The broker pushes messages as fast as it can: with --count N, messages it
    had already sent past the Nth are gone with the connection. To take exactly
    N messages, use 'restmq pop -n N'.
    """
    status = tail(settings.client(), queue, count=count, as_json=as_json, timeout=duration)
    sys.exit(status)


@cli.command(epilog=EPILOG, short_help="Show queue figures as a table.")
@click.argument("queue", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the broker's JSON answer as it is.")
@click.pass_obj
def stats(settings: Settings, queue: str | None, as_json: bool) -> None:
    """Show every queue (length, status, policy, consumers), or only QUEUE."""
    answer = settings.client().stats(queue)
    if as_json:
        click.echo(json.dumps(answer))
        return
    rows = output.stats_rows(answer)
    click.echo(output.table(rows) if rows else "no queues")


@cli.command(epilog=EPILOG, short_help="Delete every pending message of a queue.")
@queue_argument
@click.pass_obj
def purge(settings: Settings, queue: str) -> None:
    """Delete every pending message of QUEUE and end its streams."""
    purged = settings.client().purge(queue)
    click.echo(f"purged {queue}" if purged else f"purged {queue} (it was empty)")


@cli.command(epilog=EPILOG, short_help="Show or set a queue's delivery policy.")
@queue_argument
@click.argument("policy", required=False, type=click.Choice(["broadcast", "roundrobin"]))
@click.pass_obj
def policy(settings: Settings, queue: str, policy: str | None) -> None:
    """Print QUEUE's delivery policy, or set it to POLICY.

    broadcast: every streaming consumer gets every message. roundrobin: each
    message goes to one consumer, in turn.
    """
    client = settings.client()
    if policy is None:
        click.echo(client.policy(queue)["value"])
        return
    client.set_policy(queue, policy)
    click.echo(policy)


@cli.command(epilog=EPILOG, short_help="Resume delivery to streaming consumers.")
@queue_argument
@click.pass_obj
def start(settings: Settings, queue: str) -> None:
    """Start delivering QUEUE's messages to streaming consumers (the backlog first)."""
    settings.client().start(queue)
    click.echo(f"{queue} started")


@cli.command(epilog=EPILOG, short_help="Hold delivery to streaming consumers.")
@queue_argument
@click.pass_obj
def stop(settings: Settings, queue: str) -> None:
    """Stop delivering QUEUE's messages to streaming consumers; they wait in the queue.

    Plain pops still work on a stopped queue.
    """
    settings.client().stop(queue)
    click.echo(f"{queue} stopped")


@cli.command(epilog=EPILOG, short_help="Check that the broker can serve.")
@click.pass_obj
def health(settings: Settings) -> None:
    """Ask the broker whether it can serve (GET /health): exit 0 when it can, 3 when not."""
    answer = settings.client().health()
    click.echo(
        f"{answer.get('status')}: storage {answer.get('storage')}, RestMQ {answer.get('version')}"
    )


@cli.command("copy", epilog=EPILOG, short_help="Move queued messages to another broker.")
@click.argument("queues", nargs=-1)
@click.option(
    "--from",
    "source_url",
    callback=lambda ctx, param, value: None if value is None else _url(ctx, param, value),
    metavar="URL",
    help="The source broker (default: --url); --user and --password (before the "
    "command) are its credentials, and the target's unless --to-user is given.",
)
@click.option(
    "--to", "target_url", required=True, metavar="URL", callback=_url, help="The target broker."
)
@click.option(
    "--batch",
    "batch_size",
    type=click.IntRange(1, MAX_BATCH),
    default=100,
    show_default=True,
    help="Messages per batch (taken, added and acked together).",
)
@click.option(
    "--lease",
    type=click.IntRange(1, MAX_LEASE),
    default=60,
    show_default=True,
    metavar="S",
    help="Seconds each batch stays leased at the source; it must outlast one batch.",
)
@click.option(
    "--to-user", envvar="RESTMQ_TO_USER", help="Username at the target (default: --user)."
)
@click.option(
    "--to-password",
    envvar="RESTMQ_TO_PASSWORD",
    help="Password at the target (env RESTMQ_TO_PASSWORD; default: --password).",
)
@click.pass_obj
def copy_command(
    settings: Settings,
    queues: tuple[str, ...],
    source_url: str | None,
    target_url: str,
    batch_size: int,
    lease: int,
    to_user: str | None,
    to_password: str | None,
) -> None:
    """Move the pending messages of QUEUES (default: every queue the source lists,
    dead-letter queues included) from one broker to another.

    \b
      restmq copy --from http://old:8888 --to http://new:8888
      restmq copy --from http://old:8888 --to http://new:8888 jobs jobs:dead

    Each queue's policy, started/stopped status and max_deliveries are set at the
    target first. Then batches are taken under a lease, added to the end of the
    target's queue in order, and acked at the source once the target stored them:
    the source is emptied of what was moved. If the copy is interrupted, the
    batch in flight comes back at the source when its leases end, and a rerun
    copies it again (the only possible duplicates). Not copied: a message's ttl
    (the copy never expires), its delivery count, and messages consumers hold
    under a lease (counted at the end). Prints a line per queue and a summary; a
    progress bar on a terminal.
    """
    if (to_user is None) != (to_password is None):
        raise click.UsageError("--to-user and --to-password go together")
    if to_user is None:
        to_user, to_password = settings.user, settings.password
    if source_url is not None:
        settings.url = source_url  # no connection was made yet: the source is this one
    target = BrokerConnection(
        target_url, user=to_user, password=to_password, timeout=settings.timeout
    )
    try:
        run_copy(
            settings.connect(),
            target,
            queues,
            batch_size=batch_size,
            lease=lease,
            progress=sys.stderr.isatty(),
        )
    finally:
        target.close()


def show_retries() -> None:
    """Print the client's retries as warnings on stderr: a command that waits says why."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("Warning: %(message)s"))
    log = logging.getLogger("restmq.client")
    log.addHandler(handler)
    log.setLevel(logging.WARNING)
    log.propagate = False


def main() -> None:
    """Console entry point (``restmq``): one line on stderr for any failure, never a traceback."""
    show_retries()
    try:
        status = cli.main(prog_name="restmq", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:  # Ctrl-C (or end of input at a prompt)
        sys.exit(130)
    sys.exit(status if isinstance(status, int) else Exit.DONE)


if __name__ == "__main__":
    main()
