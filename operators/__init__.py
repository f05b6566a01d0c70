"""Operators: plain batch-in, batch-out Python that pipelines/ wires into Ray Data and DuckDB passes.

The contract every row operator (`Downloader`, `Decoder`, `Fetcher`, `CaptionText`, `ClipPreprocessor`,
`ClipEmbedder`, `MetaclipMatcher`, `WorldwideMatcher`, `ConceptMatcher`, `ImageConceptTagger`) keeps:

- **Built once** from its Options model (or the data those options name, loaded by the pipeline:
  `MetaclipMatcher` takes the metadata entries `MatchOptions.metadata` points at, `WorldwideMatcher` each
  language's list, loaded when a batch first holds that language), then called per batch.
- **`pa.Table` in, the same table out with columns added** (or replaced: `replace_columns` in table.py);
  one output row per input row, in the same order. Nothing is dropped: a row that fails gets a `status`
  from status.py and an `error` text, never an exception.
- **A missing input column is an error naming it** and the columns present.
- **No Ray, no DuckDB, no run folder**: an operator does not know where its batch came from or goes.

One exception, on purpose: `Captioner` (caption.py) returns a caption-set table (CAPTION_SCHEMA, one row
per input row, same order): its `caption` is the new caption, beside the input's as `original_caption`.
"""
