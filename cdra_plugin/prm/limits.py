"""What one client can make the gateway spend: every limit and deadline of ``cdra prm serve``, with its default.

The gateway is attacked by the policy it rewards and reached by clients it does not control, so nothing a request
asks for is unbounded. Each limit is an option; a request over one gets a 4xx naming it, before any PRM call.

======================  =========  ==============================================================================
option                  default    bounds
======================  =========  ==============================================================================
--max-body-mb           16         bytes of one request body (413)
--max-samples           64         samples per scoring request; each costs up to --max-steps PRM calls (413)
--max-response-chars    100,000    characters per response (about 25k tokens); step j's prompt repeats steps
                                   1..j, so the text sent to the PRM grows with length x steps (413)
--cache-mb              256        memory held by cached results (LRU by estimated bytes, not entries)
--header-timeout        10 s       time to send a request's headers (the connection is closed)
--body-timeout          30 s       time to send the body once the headers arrived (408, connection closed)
(fixed)                 64 KiB     size of a request's headers; 5 s idle keep-alive
======================  =========  ==============================================================================
"""

DEFAULT_MAX_BODY_MB = 16.0
DEFAULT_MAX_SAMPLES = 64
DEFAULT_MAX_RESPONSE_CHARS = 100_000
DEFAULT_CACHE_MB = 256.0
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 30.0
MAX_HEADER_BYTES = 64 << 10
KEEP_ALIVE_S = 5
