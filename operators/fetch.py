"""Download and decode in one step: each row is decoded on the thread that fetched it, as its bytes arrive.

Columns in: `url`. Columns added: those of `Downloader` (`status`, `error`, `http_status`, `n_bytes`)
and of `Decoder` (`original_width`, `original_height`, `width`, `height`, `sha256`, `phash`, and
`image`, the re-encoded resized image). The same rows, statuses and bytes as `Downloader` followed by
`Decoder`; only the schedule differs.

Why one step: a download thread spends most of its time waiting on the network, and decoding
(libjpeg, OpenCV resize and encode) releases the GIL, so one process with N threads keeps a core
busy decoding while other threads wait. The raw bodies never leave the process (no object-store
copy between a download task and a decode task), and the CPU is not split ahead of time between
an I/O stage and a CPU stage. img2dataset's downloader works the same way.
"""

from __future__ import annotations

import pyarrow as pa

from operators import status as st
from operators.decode import Decoded, DecodeOptions, decode_columns, decode_image, prepare_decoder
from operators.download import Downloader, DownloadOptions, Fetched, download_columns
from operators.table import replace_columns, require_columns


class Fetcher:
    """Batch operator: download every row's URL and decode what arrived, on one thread pool.

    `budget`: the run's per-host budget (operators/hosts.py), shared by every fetch process of the run; by
    default one of this operator's own."""

    def __init__(self, download: DownloadOptions, decode: DecodeOptions, budget=None):
        self.downloader = Downloader(download)
        self.decode_options = decode
        prepare_decoder()
        # one scheduler (and thread pool, connections, policies) per operator (per Ray worker process), reused
        # batch after batch; threads start on demand
        self.scheduler = self.downloader.scheduler(budget, after=self._decode)

    def _decode(self, fetched: Fetched) -> tuple[Fetched, Decoded]:
        try:
            decoded = decode_image(fetched.body, self.decode_options)
        except Exception as err:  # a bug in a decoder must not cost the row
            decoded = Decoded(st.DECODE_ERROR, f"unexpected {type(err).__name__}: {err}")
        fetched.body = None  # the raw bytes are done with: only the re-encoded image travels on
        return fetched, decoded

    def __call__(self, batch: pa.Table) -> pa.Table:
        require_columns(batch, ("url",), "fetch")
        results = self.scheduler.run(batch.column("url").to_pylist())
        fetched = [f for f, _ in results]
        decoded = [d if d is not None else Decoded(f.status, f.error) for f, d in results]
        columns = download_columns(fetched, with_body=False)
        columns |= decode_columns(decoded)
        return replace_columns(batch, columns)


def not_fetched(batch: pa.Table) -> pa.Table:
    """A text pass's stand-in for `Fetcher`: the same columns, every row `not_fetched` with no image, so a text
    pass's annotations have a full run's schema and its rows can be fetched later under the same keys."""
    require_columns(batch, ("url",), "not_fetched")
    rows = batch.num_rows
    columns = download_columns([Fetched(st.NOT_FETCHED)] * rows, with_body=False)
    columns |= decode_columns([Decoded(st.NOT_FETCHED)] * rows)
    return replace_columns(batch, columns)
