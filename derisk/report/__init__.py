"""Exports a lead can share: DOT and Mermaid graphs, and a Markdown report with figures."""

from derisk.report._graphs import (
    dot_available,
    policy_dot,
    policy_mermaid,
    render_dot,
    roadmap_dot,
    roadmap_mermaid,
)
from derisk.report._markdown import ReportResult, tornado_figure, write_report

__all__ = [
    "ReportResult",
    "dot_available",
    "policy_dot",
    "policy_mermaid",
    "render_dot",
    "roadmap_dot",
    "roadmap_mermaid",
    "tornado_figure",
    "write_report",
]
