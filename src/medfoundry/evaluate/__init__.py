"""Benchmarks and reports: Markdown/PNG reports, the JSRT few-shot protocol."""
