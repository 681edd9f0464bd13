"""The `restmq` command line client: talks to a broker over HTTP, never imports it."""
