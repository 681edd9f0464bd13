"""The defaults of ``twistd restmq``'s options, in a leaf module: the option parser
(``restmq.runtime.options``) shows them, and the parts that apply them (the HTTP
connection stack, the metrics) use them without importing option parsing."""

DEFAULT_PORT = 8888
DEFAULT_REDIS_PORT = 6379
DEFAULT_MAX_BODY = 8 * 1024 * 1024
DEFAULT_MAX_CONSUMERS = 10000
DEFAULT_MAX_BUFFERED = 256 * 1024 * 1024
DEFAULT_HEADER_TIMEOUT = 30.0
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_HEADERS = 100
DEFAULT_METRICS_MAX_QUEUES = 1000
