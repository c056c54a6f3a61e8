"""The quality report: one self-contained HTML page about a scan (``refinery report --html PATH``).

Generic over checks: whatever a scan stored in ``findings``, ``finding_pairs``, ``duplicate_members`` and
``contamination_hits`` is summarised, plotted and exemplified, so a new check appears in the report without
any change here. The page has no external resources: CSS and a small sorting/filtering script are inline,
plots are base64 PNGs drawn by matplotlib (Agg canvas, no pyplot state). All record text is user data and is
HTML-escaped; long texts are cut with the full text in a ``<details>`` element.

Sections: summary (dataset size, ingest batches, quarantined rows by reason, the scan, failed checks),
per-check counts, score histograms (with the flag threshold where known), duplicate-cluster sizes, a 2-D map
of prompt embeddings coloured by flag (PCA by SVD), and the top examples of every check side by side.

Modules, in the order a report is made: ``collect`` (everything the report shows, read from the catalog),
``embedding_map`` (the 2-D map of prompt embeddings), ``plots`` (the PNGs), ``page`` (the HTML page, written
atomically).
"""
