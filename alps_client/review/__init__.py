"""The cluster review page: what each cluster looks like, before naming, merging and dropping clusters."""

from alps_client.review.report import build_report, write_review
from alps_client.review.select import ReviewCollector

__all__ = ["ReviewCollector", "build_report", "write_review"]
