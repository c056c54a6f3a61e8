"""Amending the data after the fact, without rewriting history: ``forget`` keeps records (and every version derived
from them) out of every future snapshot and says where they already are; ``redact`` stores a redacted version of
each record the ``pii`` check flagged. Both add rows; neither changes a record, a snapshot or an adapter.
"""
