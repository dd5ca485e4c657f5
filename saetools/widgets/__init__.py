"""Data -> HTML renderers, figures and ipywidgets panels. No model code in here."""

from saetools.widgets.dashboard import dashboard_html, latent_browser, latent_html
from saetools.widgets.html import OfflineHTML, attention_heads_html, table_html
from saetools.widgets.ioi_panel import IOIPanel, PanelBackend
from saetools.widgets.plots import heatmap, scatter_roles

__all__ = ["OfflineHTML", "attention_heads_html", "table_html", "IOIPanel", "PanelBackend",
           "heatmap", "scatter_roles", "dashboard_html", "latent_browser", "latent_html"]
