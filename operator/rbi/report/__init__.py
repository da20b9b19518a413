"""The optimizer's HTML report: `write_report(ReportData(...), path)` writes one self-contained page."""

from rbi.report.html import render_report, verdict, write_report
from rbi.report.models import LineageEdge, ReportData, TrialPoint, VersionFigures

__all__ = ["LineageEdge", "ReportData", "TrialPoint", "VersionFigures", "render_report", "verdict", "write_report"]
