"""Data -> HTML renderers and ipywidgets panels. No model code in here."""

from saetools.widgets.html import OfflineHTML, attention_heads_html, table_html

__all__ = ["OfflineHTML", "attention_heads_html", "table_html"]
