"""Where queues live: a txredisapi pool (``client``) and the embedded Valkey (``embedded``)."""
