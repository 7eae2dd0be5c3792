"""Benchmarks and reports: metrics, Markdown/PNG reports, the JSRT few-shot protocol."""
