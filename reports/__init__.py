"""Renderers of results: terminal (rich), HTML, JSON, JUnit XML and Markdown."""
