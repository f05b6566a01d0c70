"""The status vocabulary of an annotation row, and which stage sets each failure.

A failure is a value in the `status` column with an `error` text, never an exception.
"""

OK = "ok"

# a text pass (annotate with text_only): the row's image is not fetched yet (`tailor fetch` does it)
NOT_FETCHED = "not_fetched"

# download stage
INVALID_URL = "invalid_url"            # not an http(s) URL we can request
BLOCKED_ADDRESS = "blocked_address"    # host resolves to a private/loopback/link-local/... address
CONNECTION_ERROR = "connection_error"  # refused, reset, DNS failure, TLS failure
TIMEOUT = "timeout"                    # no response or body within the timeout
HTTP_ERROR = "http_error"              # 4xx/5xx after retries
REDIRECT_ERROR = "redirect_error"      # redirect loop or too many redirects
OPTED_OUT = "opted_out"                # robots.txt, a TDM reservation or X-Robots-Tag refuses (error names which)
RATE_LIMITED = "rate_limited"          # the host kept answering 429/503 past download.max_wait
TOO_LARGE = "too_large"                # body over the byte cap, or header claims too many pixels

# decode stage
NOT_IMAGE = "not_image"                # bytes are not a recognised image format
DECODE_ERROR = "decode_error"          # recognised but broken (truncated, corrupt)
TOO_SMALL = "too_small"                # shorter side below min_image_size
BAD_ASPECT_RATIO = "bad_aspect_ratio"  # long/short side above max_aspect_ratio

STAGE_OF_STATUS = {
    INVALID_URL: "download",
    BLOCKED_ADDRESS: "download",
    CONNECTION_ERROR: "download",
    TIMEOUT: "download",
    HTTP_ERROR: "download",
    REDIRECT_ERROR: "download",
    OPTED_OUT: "download",
    RATE_LIMITED: "download",
    NOT_IMAGE: "decode",
    DECODE_ERROR: "decode",
    TOO_SMALL: "decode",
    BAD_ASPECT_RATIO: "decode",
}

# a failure that may not happen again: a rerun of the same command fetches these rows again (the row's
# `transient` column says it of each row; this is the rule for runs written before that column)
TRANSIENT = {CONNECTION_ERROR, TIMEOUT, RATE_LIMITED}
RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}


def is_transient(status: str | None, http_status: int | None) -> bool:
    return status in TRANSIENT or (status == HTTP_ERROR and http_status in RETRYABLE_HTTP)


# captioning (recaption: one caption-set row per sample, its own status vocabulary beside the one above)
NO_IMAGE = "no_image"                  # the sample has no stored image (its annotation row is not ok)
NO_ALT_TEXT = "no_alt_text"            # the prompt needs the original alt-text and the row has none
EMPTY_CAPTION = "empty_caption"        # the model generated no text
GENERATION_ERROR = "generation_error"  # the model failed on the batch
